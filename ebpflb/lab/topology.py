"""Lab topology, pure: the names and addresses of a Calico-style lab of one or more nodes.

Where it sits: the lab (ebpflb/lab/lab.py) builds network namespaces from what this module
computes; tests and the CLI use the same functions to find things by name. Nothing here touches
the kernel, the file system or a process, so it imports and tests without root.

Shape of one lab named L (the "Pod topology" of the environment notes):
  L-node            the node: forwards between pods, strict rp_filter, VIP range blackholed
  L-<pod>           one namespace per pod: eth0 with a /32, gateway 169.254.1.1 on-link
  lxc<pod>          host side of each pod's veth, in L-node, no address, /32 route to the pod

With N >= 2 nodes (`lab_up(..., nodes=N)`), node 0 is still L-node and keeps the addresses above;
node k is L-node<k> with pod CIDR 10.244.k.0/24 (node 0: 10.244.0.0/24), and the nodes share:
  L-underlay        a bridge br0; port node<k> is the peer of node k's eth0 (192.168.200.(10+k)/24)
  L-ext             an external client, eth0 192.168.200.2/24 on the same bridge (port "ext"),
                    with no route to pods or VIPs: it can only reach node addresses (NodePort)
  routes            in node j, 10.244.k.0/24 via 192.168.200.(10+k) for every other node k
Default pods of node k > 0: n<k>-client at 10.244.k.2 (no server) and n<k>-web-1.. at
10.244.k.11..; pod names are unique lab-wide. A one-node lab is exactly the single-node lab.

IP families (`lab_up(..., ip_family=...)`): "ipv4" is the plan above. "dual" adds an IPv6 twin of
every address (a pod's 10.244.k.h is also fd00:10:244:k::h, node k's underlay address also
fd00:200::(10+k), the external client's also fd00:200::2, all hex). "ipv6" keeps only those
twins: a pod's one address (PodSpec.ip) is fd00:10:244:k::h, and no device but `lo` has IPv4.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Iterable, List

DEFAULT_LAB = "ebpflb"
# IP families a lab can run: IPv4 only, IPv6 only (the IPv6 twins of the IPv4 plan, and no IPv4
# on any device but lo), or dual-stack (every pod, node and the external client get an IPv6
# address too; IPv4 stays for the lab's own plumbing).
IP_FAMILIES = ("ipv4", "ipv6", "dual")
POD_CIDR6 = "fd00:10:244::/56"  # node k's pods: fd00:10:244:k::/64, a pod's host part its IPv4's
SERVICE_CIDR6 = "fd00:10:96::/112"
POD_GATEWAY6 = "fe80::1"  # the pods' IPv6 default route, answered by the host side of the veth
UNDERLAY_PREFIXLEN6 = 64
EXT_ADDRESS6 = "fd00:200::2"
EXTERNAL_VIP_CIDR6 = "fd00:200::c0/122"  # the IPv6 twin of EXTERNAL_VIP_CIDR
HTTP_PORT = 8080
UDP_ECHO_PORT = 9053
POD_GATEWAY = "169.254.1.1"
POD_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
CLIENT_POD = "client"
CLIENT_IP = "10.244.0.2"
# First web pod is .11 so the low addresses stay free for clients and infrastructure pods.
WEB_BASE_HOST = 10

# Multi-node labs: node k's pod CIDR is 10.244.k.0/24, its underlay address 192.168.200.(10+k).
MAX_NODES = 32
UNDERLAY_CIDR = "192.168.200.0/24"
UNDERLAY_PREFIXLEN = 24
NODE_ADDRESS_BASE = 10
EXT_ADDRESS = "192.168.200.2"
# Short names of the shared namespaces: "<lab>-<short>", like a pod's, so run_in_pod reaches them.
EXT_NETNS = "ext"
UNDERLAY_NETNS = "underlay"
UNDERLAY_BRIDGE = "br0"
NODE_UNDERLAY_IFNAME = "eth0"  # node k's device on the underlay (its peer is port node<k>)
# LoadBalancer and external IPs of lab Services: the external client routes them to node 0, as
# a cloud load balancer or a router in front of the cluster would.
EXTERNAL_VIP_CIDR = "192.168.200.192/26"
WEB_PODS_PER_NODE = 2  # default web pods of each node k > 0

# Run-time files of the lab live under /run (tmpfs): they describe kernel state that a reboot
# erases anyway, so they must not outlive it.
STATE_ROOT = "/run/ebpflb/lab"
NETNS_DIR = "/run/netns"

IFNAMSIZ_MAX = 15  # IFNAMSIZ is 16 including the NUL
# Lab names become namespace and file name prefixes: keep them short and shell-safe. No leading
# or trailing '-' so "<lab>-" is an unambiguous separator.
_LAB_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?$")
# Node k's agent pins under lab_pin_dir(lab) + "-node<k>": a lab named "<x>-node<k>" would share
# its pin directory with node k of lab "<x>".
_LAB_NODE_SUFFIX_RE = re.compile(r"-node[0-9]+$")
# Pod names follow a DNS label (what Kubernetes allows), capped so that namespace names stay short.
_POD_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
# "node" would collide with the node namespace "<lab>-node" (and "node<k>", "underlay", "ext" with
# the namespaces of a multi-node lab: reserved in every lab so a namespace name means one thing).
RESERVED_POD_NAMES = frozenset({"node", UNDERLAY_NETNS, EXT_NETNS})
_NODE_NAME_RE = re.compile(r"^node[0-9]+$")
# Written as the ifalias of `lo` in every namespace of a lab: tells, after a crash and without
# the state file, which lab a namespace belongs to when one lab's name prefixes another's.
_TAG_PREFIX = "ebpflb-lab:"


@dataclass(frozen=True)
class PodSpec:
    """One pod of the lab: its name (a DNS label), its address, and the index of the node it runs
    behind (0 in a single-node lab). The address is IPv4, in POD_CIDR, in an "ipv4" or "dual" lab
    (a dual lab derives the IPv6 one with pod_ip6), and IPv6, in POD_CIDR6, in an "ipv6" lab."""

    name: str
    ip: str
    node: int = 0


def validate_lab_name(lab: str) -> str:
    """Return `lab` if it is a safe lab name, else raise ValueError saying why."""
    if not isinstance(lab, str) or not _LAB_RE.match(lab):
        raise ValueError(
            f"invalid lab name {lab!r}: use 1-10 characters of [a-z0-9-], "
            "starting and ending with a letter or digit"
        )
    if _LAB_NODE_SUFFIX_RE.search(lab):
        raise ValueError(f"invalid lab name {lab!r}: must not end in -node<digits> "
                         "(it would share pin directories with another lab's node)")
    return lab


def validate_nodes(nodes: int) -> int:
    """Return `nodes` if it is a usable node count (1..MAX_NODES), else raise ValueError."""
    if isinstance(nodes, bool) or not isinstance(nodes, int) or not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"invalid node count {nodes!r}: use 1 to {MAX_NODES}")
    return nodes


def validate_pod_name(pod: str) -> str:
    """Return `pod` if it is a safe pod name (a short DNS label), else raise ValueError."""
    if not isinstance(pod, str) or not _POD_RE.match(pod):
        raise ValueError(f"invalid pod name {pod!r}: use a DNS label of at most 32 characters of [a-z0-9-]")
    return pod


def validate_pod(pod: PodSpec, ip_family: str = "ipv4") -> PodSpec:
    """Return `pod` if its name and address are usable in a lab of `ip_family`, else raise
    ValueError. The address comes back canonical (IPv6 has many spellings of one address)."""
    validate_pod_name(pod.name)
    validate_ip_family(ip_family)
    if pod.name in RESERVED_POD_NAMES or _NODE_NAME_RE.match(pod.name):
        raise ValueError(f"pod name {pod.name!r} is reserved (it would collide with a node, "
                         "underlay or external client namespace)")
    if ip_family == "ipv6":
        try:
            addr6 = ipaddress.IPv6Address(pod.ip)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"pod {pod.name}: ip {pod.ip!r} is not an IPv6 address; the pods of "
                             f"an IPv6-only lab have one in {POD_CIDR6}") from exc
        if addr6.scope_id is not None:  # ipaddress takes "fe80::1%eth0"; a pod's is global
            raise ValueError(f"pod {pod.name}: ip {pod.ip!r} is not an IPv6 address a pod can "
                             f"have (a zone index; the pods of an IPv6-only lab have one in "
                             f"{POD_CIDR6})")
        if addr6 not in ipaddress.IPv6Network(POD_CIDR6):
            raise ValueError(f"pod {pod.name}: ip {pod.ip} is not in {POD_CIDR6}")
        # Interface id 0 is the subnet-router anycast address of the pod's /64 (RFC 4291).
        if int(addr6) & 0xFFFF_FFFF_FFFF_FFFF == 0:
            raise ValueError(f"pod {pod.name}: ip {pod.ip} is not a host address (interface id 0 "
                             "is the subnet-router anycast address)")
        return PodSpec(pod.name, str(addr6), pod.node)
    try:
        addr = ipaddress.IPv4Address(pod.ip)
    except (ValueError, TypeError) as exc:
        where = " (an IPv6 address: use ip_family 'ipv6' for an IPv6-only lab)" \
            if isinstance(pod.ip, str) and ":" in pod.ip else ""
        raise ValueError(f"pod {pod.name}: invalid IPv4 address {pod.ip!r}{where}") from exc
    net = ipaddress.IPv4Network(POD_CIDR)
    if addr not in net or addr in (net.network_address, net.broadcast_address):
        raise ValueError(f"pod {pod.name}: address {pod.ip} is not a host address in {POD_CIDR}")
    return PodSpec(pod.name, str(addr), pod.node)


def validate_pods(pods: Iterable[PodSpec], nodes: int = 1, ip_family: str = "ipv4") -> List[PodSpec]:
    """Validate each pod and that names, addresses and host interface names are unique lab-wide.

    In a lab of `nodes` nodes every pod's node must exist; with two or more, its address must be
    in its node's pod CIDR (the other nodes route that /24, or /64, to it). Returns the pods with
    canonical addresses.
    """
    validate_nodes(nodes)
    validate_ip_family(ip_family)
    out: List[PodSpec] = []
    names, ips, ifnames = set(), set(), set()
    for given in pods:
        pod = validate_pod(given, ip_family)
        if isinstance(pod.node, bool) or not isinstance(pod.node, int) or not 0 <= pod.node < nodes:
            raise ValueError(f"pod {pod.name}: node {pod.node!r} is not a node of this lab "
                             f"(0..{nodes - 1})")
        cidr = node_pod_cidr_of(pod.node, ip_family)
        if nodes > 1 and ipaddress.ip_address(pod.ip) not in ipaddress.ip_network(cidr):
            raise ValueError(f"pod {pod.name}: address {pod.ip} is not in node {pod.node}'s "
                             f"pod CIDR {cidr}")
        if pod.name in names:
            raise ValueError(f"duplicate pod name {pod.name!r}")
        if pod.ip in ips:
            raise ValueError(f"pod {pod.name}: address {pod.ip} is used by another pod")
        ifname = host_ifname(pod.name)
        if ifname in ifnames:
            raise ValueError(f"pod {pod.name}: host interface name {ifname} collides with another pod")
        names.add(pod.name)
        ips.add(pod.ip)
        ifnames.add(ifname)
        out.append(pod)
    return out


def default_pods(n_web: int = 4, nodes: int = 1, n_web_per_node: int = WEB_PODS_PER_NODE,
                 ip_family: str = "ipv4") -> List[PodSpec]:
    """Node 0: the client pod at 10.244.0.2, then web-1..web-N at 10.244.0.11 onwards.

    Each node k > 0 (when `nodes` > 1): client n<k>-client at 10.244.k.2, then
    n<k>-web-1..n<k>-web-M (M = `n_web_per_node`) at 10.244.k.11 onwards. With `ip_family`
    "ipv6" every address is its IPv6 twin instead (pod_ip6: fd00:10:244:k::h).
    """
    validate_nodes(nodes)
    validate_ip_family(ip_family)
    if ip_family == "ipv6":
        return [PodSpec(p.name, pod_ip6(p.ip), p.node)
                for p in default_pods(n_web, nodes, n_web_per_node)]
    for what, n in (("n_web", n_web), ("n_web_per_node", n_web_per_node)):
        if not 0 <= n <= 200:
            raise ValueError(f"{what} must be between 0 and 200, got {n}")
    pods = [PodSpec(CLIENT_POD, CLIENT_IP)]
    pods += [PodSpec(f"web-{i}", f"10.244.0.{WEB_BASE_HOST + i}") for i in range(1, n_web + 1)]
    for k in range(1, nodes):
        pods.append(PodSpec(node_client_pod(k), f"10.244.{k}.2", k))
        pods += [PodSpec(f"n{k}-web-{i}", f"10.244.{k}.{WEB_BASE_HOST + i}", k)
                 for i in range(1, n_web_per_node + 1)]
    return pods


def node_client_pod(k: int) -> str:
    """The client pod of node k: "client" on node 0, "n<k>-client" on node k > 0."""
    return CLIENT_POD if k == 0 else f"n{k}-client"


def runs_server(pod: PodSpec) -> bool:
    """Every pod but its node's client runs the pod server (HTTP + UDP echo)."""
    return pod.name != node_client_pod(pod.node)


def node_netns(lab: str, k: int = 0) -> str:
    """Namespace of node k: "<lab>-node" for node 0 (the single-node name), "<lab>-node<k>" after."""
    return f"{lab}-node" if k == 0 else f"{lab}-node{k}"


def node_index(lab: str, ns: str) -> int:
    """k if `ns` is node k's namespace of `lab`, else -1."""
    if ns == node_netns(lab):
        return 0
    rest = ns[len(lab_netns_prefix(lab)):] if ns.startswith(lab_netns_prefix(lab)) else ""
    return int(rest[4:]) if _NODE_NAME_RE.match(rest) and not rest[4:].startswith("0") else -1


def node_address(k: int) -> str:
    """Node k's address on the underlay: 192.168.200.(10+k)."""
    validate_nodes(k + 1)
    return str(ipaddress.IPv4Network(UNDERLAY_CIDR).network_address + NODE_ADDRESS_BASE + k)


def validate_ip_family(family: str) -> str:
    if family not in IP_FAMILIES:
        raise ValueError(f"invalid IP family {family!r}: use {', '.join(IP_FAMILIES[:-1])} or "
                         f"{IP_FAMILIES[-1]}")
    return family


def has_ipv4(family: str) -> bool:
    """Whether a lab of `family` puts IPv4 addresses on its pods and underlay."""
    return validate_ip_family(family) != "ipv6"


def has_ipv6(family: str) -> bool:
    """Whether a lab of `family` puts IPv6 addresses on its pods and underlay."""
    return validate_ip_family(family) != "ipv4"


def node_address_of(k: int, family: str) -> str:
    """Node k's primary underlay address in a lab of `family`: IPv6 only in an IPv6-only lab."""
    return node_address6(k) if family == "ipv6" else node_address(k)


def ext_address_of(family: str) -> str:
    """The external client's primary address in a lab of `family`."""
    return EXT_ADDRESS6 if family == "ipv6" else EXT_ADDRESS


def node_pod_cidr_of(k: int, family: str) -> str:
    """Node k's pod CIDR of a lab's primary family (what its pods' PodSpec.ip lies in)."""
    return node_pod_cidr6(k) if family == "ipv6" else node_pod_cidr(k)


def pod_ip6(ip: str) -> str:
    """A pod's IPv6 address in a dual-stack lab, derived from its IPv4 one: 10.244.k.h is
    fd00:10:244:k::h (hex), so every pod's two addresses are known from one."""
    octets = ipaddress.IPv4Address(ip).packed
    return str(ipaddress.IPv6Address(f"fd00:10:244:{octets[2]:x}::{octets[3]:x}"))


def node_address6(k: int) -> str:
    """Node k's IPv6 address on the underlay (dual-stack or IPv6-only lab): fd00:200::(10 + k), hex."""
    validate_nodes(k + 1)
    return str(ipaddress.IPv6Address(f"fd00:200::{NODE_ADDRESS_BASE + k:x}"))


def node_pod_cidr6(k: int) -> str:
    """Node k's IPv6 pod CIDR (dual-stack or IPv6-only lab): fd00:10:244:k::/64, hex."""
    validate_nodes(k + 1)
    return f"fd00:10:244:{k:x}::/64"


def node_pod_cidr(k: int) -> str:
    """Node k's pod CIDR in a multi-node lab: 10.244.k.0/24."""
    validate_nodes(k + 1)
    return f"10.244.{k}.0/24"


def node_of_ip(ip: str, nodes: int) -> int:
    """The node whose pod CIDR holds `ip` (IPv4, or IPv6 in POD_CIDR6) in a lab of `nodes` nodes
    (0 in a single-node lab)."""
    if nodes <= 1:
        return 0
    addr = ipaddress.ip_address(ip)
    if addr.version == 6:
        if addr not in ipaddress.IPv6Network(POD_CIDR6):
            return 0
        k = addr.packed[7]  # fd00:10:244:k::/64 in a /56: the subnet is the 8th byte
    else:
        k = addr.packed[2]
    return k if k < nodes else 0


def underlay_port(k: int) -> str:
    """Name of node k's port on the underlay bridge (in the underlay namespace)."""
    return f"node{k}"


EXT_PORT = "ext"  # the external client's port on the underlay bridge


def underlay_netns(lab: str) -> str:
    return f"{lab}-{UNDERLAY_NETNS}"


def ext_netns(lab: str) -> str:
    return f"{lab}-{EXT_NETNS}"


def underlay_mac(ip: str) -> str:
    """MAC of a device on the underlay: ca:fe + its address's octets (_ip_octets; locally
    administered)."""
    return "ca:fe:" + ":".join(f"{b:02x}" for b in _ip_octets(ip))


def infra_netns_kind(lab: str, ns: str) -> str:
    """"node", "underlay" or "ext" if `ns` is that kind of namespace of `lab`, else "" (a pod)."""
    if node_index(lab, ns) >= 0:
        return "node"
    if ns == underlay_netns(lab):
        return "underlay"
    if ns == ext_netns(lab):
        return "ext"
    return ""


def lab_cgroup(cgroup_root: str, lab: str) -> str:
    """The lab's cgroup v2 directory: one child per node holds that node's processes (its pods'
    and its host-network ones), so each node's socket hooks act on them and nothing else."""
    return os.path.join(cgroup_root, f"ebpflb-lab-{lab}")


def node_cgroup(cgroup_root: str, lab: str, k: int = 0) -> str:
    return os.path.join(lab_cgroup(cgroup_root, lab), f"node{k}")


def pod_netns(lab: str, pod: str) -> str:
    return f"{lab}-{pod}"


def lab_netns_prefix(lab: str) -> str:
    """Every namespace of `lab` starts with this (other labs' names may start with it too)."""
    return f"{lab}-"


def host_ifname(pod: str) -> str:
    """Host-side veth name of a pod, in the node namespace: "lxc" + pod name, at most 15 chars.

    Short names are used as they are (readable in `ip link`). Longer ones keep a readable head
    and a hash of the whole name after a '_', a character pod names cannot contain, so a hashed
    name never equals a plain one.
    """
    plain = f"lxc{pod}"
    if len(plain) <= IFNAMSIZ_MAX:
        return plain
    digest = hashlib.sha1(pod.encode()).hexdigest()[:6]
    return f"lxc{pod[:5]}_{digest}"


def _ip_octets(ip: str) -> bytes:
    """Four bytes that tell a lab address from the others: an IPv4 address itself; of an IPv6
    one, the byte of its /64 inside the /56 (a pod's node) and the last three of its interface
    id (the plan's host parts are small, so MACs stay readable and distinct)."""
    addr = ipaddress.ip_address(ip)
    return addr.packed if addr.version == 4 else addr.packed[7:8] + addr.packed[13:16]


def pod_mac(ip: str) -> str:
    """MAC of a pod's eth0: 0a:58 + the address's octets (for IPv4 the Kubernetes bridge-CNI
    convention; _ip_octets for IPv6).

    Deterministic MACs make captures and neighbour entries readable and let both ends be
    programmed without reading anything back.
    """
    return "0a:58:" + ":".join(f"{b:02x}" for b in _ip_octets(ip))


def host_mac(ip: str) -> str:
    """MAC of the host side of a pod's veth: ee:ee + the pod address's octets (Calico uses ee:ee:..)."""
    return "ee:ee:" + ":".join(f"{b:02x}" for b in _ip_octets(ip))


def netns_tag(lab: str) -> str:
    return f"{_TAG_PREFIX}{lab}"


def lab_of_tag(tag: str) -> str:
    """The lab name in a namespace tag, or "" if `tag` is not one of ours."""
    return tag[len(_TAG_PREFIX):] if tag and tag.startswith(_TAG_PREFIX) else ""


def state_file(lab: str) -> str:
    return f"{STATE_ROOT}/{lab}.json"


def log_dir(lab: str) -> str:
    return f"{STATE_ROOT}/{lab}"


def pod_log(lab: str, pod: str) -> str:
    return f"{log_dir(lab)}/{pod}.log"
