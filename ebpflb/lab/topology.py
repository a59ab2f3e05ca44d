"""Lab topology, pure: the names and addresses of a Calico-style single-node lab.

Where it sits: the lab (ebpflb/lab/lab.py) builds network namespaces from what this module
computes; tests and the CLI use the same functions to find things by name. Nothing here touches
the kernel, the file system or a process, so it imports and tests without root.

Shape of one lab named L (the "Pod topology" of the environment notes):
  L-node            the node: forwards between pods, strict rp_filter, VIP range blackholed
  L-<pod>           one namespace per pod: eth0 with a /32, gateway 169.254.1.1 on-link
  lxc<pod>          host side of each pod's veth, in L-node, no address, /32 route to the pod
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, List

DEFAULT_LAB = "ebpflb"
HTTP_PORT = 8080
UDP_ECHO_PORT = 9053
POD_GATEWAY = "169.254.1.1"
POD_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
CLIENT_POD = "client"
CLIENT_IP = "10.244.0.2"
# First web pod is .11 so the low addresses stay free for clients and infrastructure pods.
WEB_BASE_HOST = 10

# Run-time files of the lab live under /run (tmpfs): they describe kernel state that a reboot
# erases anyway, so they must not outlive it.
STATE_ROOT = "/run/ebpflb/lab"
NETNS_DIR = "/run/netns"

IFNAMSIZ_MAX = 15  # IFNAMSIZ is 16 including the NUL
# Lab names become namespace and file name prefixes: keep them short and shell-safe. No leading
# or trailing '-' so "<lab>-" is an unambiguous separator.
_LAB_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?$")
# Pod names follow a DNS label (what Kubernetes allows), capped so that namespace names stay short.
_POD_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
# "node" would collide with the node namespace "<lab>-node".
RESERVED_POD_NAMES = frozenset({"node"})
# Written as the ifalias of `lo` in every namespace of a lab: tells, after a crash and without
# the state file, which lab a namespace belongs to when one lab's name prefixes another's.
_TAG_PREFIX = "ebpflb-lab:"


@dataclass(frozen=True)
class PodSpec:
    """One pod of the lab: its name (a DNS label) and its IPv4 address in POD_CIDR."""

    name: str
    ip: str


def validate_lab_name(lab: str) -> str:
    """Return `lab` if it is a safe lab name, else raise ValueError saying why."""
    if not isinstance(lab, str) or not _LAB_RE.match(lab):
        raise ValueError(
            f"invalid lab name {lab!r}: use 1-10 characters of [a-z0-9-], "
            "starting and ending with a letter or digit"
        )
    return lab


def validate_pod_name(pod: str) -> str:
    """Return `pod` if it is a safe pod name (a short DNS label), else raise ValueError."""
    if not isinstance(pod, str) or not _POD_RE.match(pod):
        raise ValueError(f"invalid pod name {pod!r}: use a DNS label of at most 32 characters of [a-z0-9-]")
    return pod


def validate_pod(pod: PodSpec) -> PodSpec:
    """Return `pod` if its name and address are usable in a lab, else raise ValueError."""
    validate_pod_name(pod.name)
    if pod.name in RESERVED_POD_NAMES:
        raise ValueError(f"pod name {pod.name!r} is reserved (it would collide with the node namespace)")
    try:
        addr = ipaddress.IPv4Address(pod.ip)
    except ValueError as exc:
        raise ValueError(f"pod {pod.name}: invalid IPv4 address {pod.ip!r}") from exc
    net = ipaddress.IPv4Network(POD_CIDR)
    if addr not in net or addr in (net.network_address, net.broadcast_address):
        raise ValueError(f"pod {pod.name}: address {pod.ip} is not a host address in {POD_CIDR}")
    return pod


def validate_pods(pods: Iterable[PodSpec]) -> List[PodSpec]:
    """Validate each pod and that names, addresses and host interface names are unique."""
    out: List[PodSpec] = []
    names, ips, ifnames = set(), set(), set()
    for pod in pods:
        validate_pod(pod)
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


def default_pods(n_web: int = 4) -> List[PodSpec]:
    """The client pod at 10.244.0.2, then web-1..web-N at 10.244.0.11 onwards."""
    if not 0 <= n_web <= 200:
        raise ValueError(f"n_web must be between 0 and 200, got {n_web}")
    pods = [PodSpec(CLIENT_POD, CLIENT_IP)]
    pods += [PodSpec(f"web-{i}", f"10.244.0.{WEB_BASE_HOST + i}") for i in range(1, n_web + 1)]
    return pods


def runs_server(pod: PodSpec) -> bool:
    """Every pod but the client runs the pod server (HTTP + UDP echo)."""
    return pod.name != CLIENT_POD


def node_netns(lab: str) -> str:
    return f"{lab}-node"


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
    return ipaddress.IPv4Address(ip).packed


def pod_mac(ip: str) -> str:
    """MAC of a pod's eth0: 0a:58 + the IPv4 address (the Kubernetes bridge-CNI convention).

    Deterministic MACs make captures and neighbour entries readable and let both ends be
    programmed without reading anything back.
    """
    return "0a:58:" + ":".join(f"{b:02x}" for b in _ip_octets(ip))


def host_mac(ip: str) -> str:
    """MAC of the host side of a pod's veth: ee:ee + the pod's IPv4 address (Calico uses ee:ee:..)."""
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
