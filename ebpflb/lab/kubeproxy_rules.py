"""kube-proxy-shaped rule sets: what kube-proxy's iptables mode feeds to `iptables-restore` and
what its nftables mode feeds to `nft -f`, for a set of ClusterIP Services. The side-by-side suite
(benchmarks/suite/) measures its baselines in this real shape, and the takeover tests
(tests/lab/test_takeover.py) give a lab node kube-proxy's rules to take over from.

Pure: text generation only, no kernel, so benchmarks/tests/test_kubeproxy_rules.py checks the shape.

iptables mode (pkg/proxy/iptables/proxier.go), nat table:
  PREROUTING/OUTPUT -> KUBE-SERVICES: one rule per Service port (-d VIP -p tcp --dport)
    -> KUBE-SVC-<hash>: KUBE-MARK-MASQ for sources outside the cluster CIDR, then one rule per
       endpoint, `-m statistic --mode random --probability 1/(n-i)` ("%0.10f"), the last without
    -> KUBE-SEP-<hash>: KUBE-MARK-MASQ for hairpin traffic, DNAT --to-destination ip:port
  POSTROUTING -> KUBE-POSTROUTING: masquerade what carries the 0x4000 mark.
  Chain hashes: base32(sha256(servicePortName + protocol [+ endpoint]))[:16], protocol lower-case.

nftables mode (pkg/proxy/nftables/proxier.go), table ip kube-proxy:
  base chains nat-prerouting/nat-output -> services: `ip daddr . meta l4proto . th dport vmap
  @service-ips`; the map sends each VIP . proto . port to `goto service-<hash>-ns/name/proto/port`,
  which holds the masquerade check and `numgen random mod N vmap { i : goto endpoint-... }`;
  endpoint chains mark hairpin traffic and `dnat to ip:port`. Chain hashes:
  base32(sha256(name))[:8] + "-" + name.

Dual-stack (the suite's IPv6 measure): a Svc may also carry an IPv6 cluster IP and IPv6
endpoints; manifests() then writes a RequireDualStack Service with an EndpointSlice per family.
The kube-proxy shapes stay IPv4 only (kube-proxy runs a second, ip6tables/ip6 proxier for IPv6;
the suite does not measure it), so they ignore the IPv6 fields.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

CLUSTER_CIDR = "10.244.0.0/16"
# The dual-stack lab's IPv6 Service range (ebpflb/lab/topology.py SERVICE_CIDR6, blackholed in
# the node): the IPv6 cluster IPs must sit inside it, as the IPv4 ones sit inside 10.96.0.0/16.
SERVICE_CIDR6 = "fd00:10:96::/112"
MASQ_MARK = "0x4000"


@dataclass(frozen=True)
class Svc:
    """One Service port with its endpoints (what a kube-proxy ServicePortName covers)."""

    namespace: str
    name: str
    port_name: str
    vip: str
    port: int
    endpoints: Tuple[Tuple[str, int], ...]  # (pod ip, target port)
    protocol: str = "TCP"
    vip6: Optional[str] = None  # dual-stack: the IPv6 cluster IP (None: an IPv4-only Service)
    endpoints6: Tuple[Tuple[str, int], ...] = ()  # dual-stack: (pod IPv6, target port)

    @property
    def port_name_string(self) -> str:
        """ServicePortName.String(): "ns/name:port" (or "ns/name" for an unnamed port)."""
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port_name}" if self.port_name else base

    @property
    def proto(self) -> str:
        return self.protocol.lower()


def vip_for(i: int) -> str:
    """The i-th benchmark VIP in 10.96.0.0/16, skipping 10.96.0.x (the demo and test VIPs)."""
    return f"10.96.{1 + i // 250}.{1 + i % 250}"


def vip6_for(i: int) -> str:
    """The IPv6 twin of vip_for(i), numbered as the dual-stack lab numbers its cluster IPs
    (ebpflb/lab/family.py: 10.96.a.b -> fd00:10:96::ab, a and b the bytes of the last word), so
    it lies inside SERVICE_CIDR6 and fd00:10:96::0-ff (the twins of 10.96.0.x) stays free."""
    c, d = 1 + i // 250, 1 + i % 250
    return str(ipaddress.IPv6Address(f"fd00:10:96::{(c << 8) | d:x}"))


def make_services(n: int, pod_ips: Sequence[str], target_port: int, per_service: int = 4,
                  namespace: str = "bench", pod_ips6: Optional[Sequence[str]] = None) -> List[Svc]:
    """n Services of `per_service` endpoints each, drawn in turn from the few real pods (rule and
    map sizes are what scale; the pods only have to answer). The last one is the probed one.
    `pod_ips6`: the same pods' IPv6 addresses, in the order of `pod_ips`; given, every Service is
    dual-stack, its IPv6 endpoints the same pods as its IPv4 ones."""
    if n > 250 * 255:
        raise ValueError(f"n: at most {250 * 255} services fit the VIP plan, got {n}")
    if pod_ips6 is not None and len(pod_ips6) != len(pod_ips):
        raise ValueError(f"pod_ips6: {len(pod_ips6)} addresses for {len(pod_ips)} pods in pod_ips")
    twin = dict(zip(pod_ips, pod_ips6)) if pod_ips6 is not None else {}
    k = min(per_service, len(pod_ips))
    out = []
    for i in range(n):
        eps = tuple(sorted((pod_ips[(i + j) % len(pod_ips)], target_port) for j in range(k)))
        if pod_ips6 is None:
            out.append(Svc(namespace, f"svc-{i:05d}", "http", vip_for(i), 80, eps))
        else:
            out.append(Svc(namespace, f"svc-{i:05d}", "http", vip_for(i), 80, eps,
                           vip6=vip6_for(i), endpoints6=tuple((twin[ip], p) for ip, p in eps)))
    return out


# ------------------------------------------------------------------ iptables mode

def _b32_sha256(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()


def svc_chain(svc: Svc) -> str:
    return "KUBE-SVC-" + _b32_sha256(svc.port_name_string + svc.proto)[:16]


def sep_chain(svc: Svc, ep: Tuple[str, int]) -> str:
    return "KUBE-SEP-" + _b32_sha256(svc.port_name_string + svc.proto + f"{ep[0]}:{ep[1]}")[:16]


def probability(n: int) -> str:
    """kube-proxy's probability(n): fmt.Sprintf("%0.10f", 1.0/float64(n))."""
    return f"{1.0 / n:0.10f}"


def _svc_rules(svc: Svc) -> List[str]:
    name = svc.port_name_string
    chain = svc_chain(svc)
    rules = [f'-A KUBE-SERVICES -m comment --comment "{name} cluster IP" -m {svc.proto} -p '
             f'{svc.proto} -d {svc.vip}/32 --dport {svc.port} -j {chain}',
             f'-A {chain} -m comment --comment "{name} cluster IP" -m {svc.proto} -p {svc.proto} '
             f'-d {svc.vip}/32 --dport {svc.port} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ']
    n = len(svc.endpoints)
    for i, ep in enumerate(svc.endpoints):
        stat = f" -m statistic --mode random --probability {probability(n - i)}" if i < n - 1 else ""
        rules.append(f'-A {chain} -m comment --comment "{name} -> {ep[0]}:{ep[1]}"{stat} '
                     f'-j {sep_chain(svc, ep)}')
    return rules


def _sep_rules(svc: Svc, ep: Tuple[str, int]) -> List[str]:
    chain = sep_chain(svc, ep)
    name = svc.port_name_string
    return [f"-A {chain} -m comment --comment {name} -s {ep[0]}/32 -j KUBE-MARK-MASQ",
            f"-A {chain} -m comment --comment {name} -m {svc.proto} -p {svc.proto} "
            f"-j DNAT --to-destination {ep[0]}:{ep[1]}"]


# KUBE-SERVICES's last rule, as kube-proxy writes it in a full and in a partial restore.
_NODEPORTS_JUMP = ('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: '
                   'this must be the last rule in this chain" -m addrtype --dst-type LOCAL '
                   '-j KUBE-NODEPORTS')


def iptables_restore(services: Sequence[Svc], with_hooks: bool = True) -> str:
    """The nat table as kube-proxy writes it in one full sync (iptables-restore input, whole
    table replaced). `with_hooks`: also the PREROUTING/OUTPUT/POSTROUTING jumps that kube-proxy
    adds with `iptables -I` outside the restore (the suite toggles the PREROUTING one)."""
    lines = ["*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]",
             ":KUBE-POSTROUTING - [0:0]", ":KUBE-MARK-MASQ - [0:0]"]
    for svc in services:
        lines.append(f":{svc_chain(svc)} - [0:0]")
        lines += [f":{sep_chain(svc, ep)} - [0:0]" for ep in svc.endpoints]
    if with_hooks:
        lines += ['-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
                  '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
                  '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" '
                  '-j KUBE-POSTROUTING']
    lines += [f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
              f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
              '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
              '-j MASQUERADE --random-fully',
              f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"]
    svc_lines: List[str] = []
    for svc in services:
        rules = _svc_rules(svc)
        lines.append(rules[0])
        svc_lines += rules[1:]
        for ep in svc.endpoints:
            svc_lines += _sep_rules(svc, ep)
    lines.append(_NODEPORTS_JUMP)
    lines += svc_lines
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def iptables_partial(services: Sequence[Svc], old: Svc, new: Svc) -> str:
    """A partial sync after one Service's endpoints changed (kube-proxy >= 1.28,
    MinimizeIPTablesRestore), fed to `iptables-restore --noflush`: KUBE-SERVICES rewritten in
    full, the changed Service's chains rewritten, endpoint chains that went away deleted."""
    lines = ["*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]", f":{svc_chain(new)} - [0:0]"]
    lines += [f":{sep_chain(new, ep)} - [0:0]" for ep in new.endpoints]
    gone = [ep for ep in old.endpoints if ep not in new.endpoints]
    lines += [f":{sep_chain(old, ep)} - [0:0]" for ep in gone]
    changed: List[str] = []
    for svc in services:
        rules = _svc_rules(svc)
        lines.append(rules[0])
        if svc.port_name_string == new.port_name_string:
            changed += rules[1:]
            for ep in svc.endpoints:
                changed += _sep_rules(svc, ep)
    lines.append(_NODEPORTS_JUMP)
    lines += changed
    lines += [f"-X {sep_chain(old, ep)}" for ep in gone]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ nftables mode

NFT_TABLE = "kube-proxy"


def _hash_and_truncate(name: str) -> str:
    """kube-proxy nftables hashAndTruncate (names here are far below its 112-char limit)."""
    name = _b32_sha256(name)[:8] + "-" + name
    return name if len(name) <= 112 else name[:109] + "..."


def nft_service_chain(svc: Svc) -> str:
    return "service-" + _hash_and_truncate(
        f"{svc.namespace}/{svc.name}/{svc.proto}/{svc.port_name}")


def nft_endpoint_chain(svc: Svc, ep: Tuple[str, int]) -> str:
    return "endpoint-" + _hash_and_truncate(
        f"{svc.namespace}/{svc.name}/{svc.proto}/{svc.port_name}__{ep[0]}/{ep[1]}")


def _nft_chains(svc: Svc) -> List[str]:
    """A Service's chains, created (and emptied) before any rule jumps to them, as kube-proxy's
    transaction does (ensureChain first, rules after)."""
    names = [nft_service_chain(svc)] + [nft_endpoint_chain(svc, ep) for ep in svc.endpoints]
    return [line for c in names
            for line in (f"add chain ip {NFT_TABLE} {c}", f"flush chain ip {NFT_TABLE} {c}")]


def _nft_service(svc: Svc) -> List[str]:
    """The rules of a Service's service chain and endpoint chains (chains already declared)."""
    chain = nft_service_chain(svc)
    eps = svc.endpoints
    vmap = ", ".join(f"{i} : goto {nft_endpoint_chain(svc, ep)}" for i, ep in enumerate(eps))
    lines = [f"add rule ip {NFT_TABLE} {chain} ip daddr {svc.vip} {svc.proto} dport {svc.port} "
             f"ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
             f"add rule ip {NFT_TABLE} {chain} numgen random mod {len(eps)} vmap {{ {vmap} }}"]
    for ep in eps:
        lines += _nft_endpoint(svc, ep)
    return lines


def _nft_endpoint(svc: Svc, ep: Tuple[str, int]) -> List[str]:
    chain = nft_endpoint_chain(svc, ep)
    return [f"add rule ip {NFT_TABLE} {chain} ip saddr {ep[0]} jump mark-for-masquerade",
            f"add rule ip {NFT_TABLE} {chain} meta l4proto {svc.proto} dnat to {ep[0]}:{ep[1]}"]


def _nft_element(svc: Svc) -> str:
    return (f"add element ip {NFT_TABLE} service-ips {{ {svc.vip} . {svc.proto} . {svc.port} : "
            f"goto {nft_service_chain(svc)} }}")


NFT_PREROUTING = [f"add chain ip {NFT_TABLE} nat-prerouting {{ type nat hook prerouting "
                  "priority dstnat ; }",
                  f"add rule ip {NFT_TABLE} nat-prerouting jump services"]


def nft_ruleset(services: Sequence[Svc], with_prerouting: bool = True) -> str:
    """One full kube-proxy nftables sync as an `nft -f` transaction (the table created anew).
    `with_prerouting`: the nat-prerouting base chain (the suite adds and deletes it to switch
    the rule set on and off without reloading it)."""
    t = NFT_TABLE
    lines = [f"add table ip {t} {{ comment \"rules for kube-proxy\" ; }}",
             f"delete table ip {t}",
             f"add table ip {t} {{ comment \"rules for kube-proxy\" ; }}",
             f"add set ip {t} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}",
             f"add map ip {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; "
             f"comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}",
             f"add map ip {t} service-nodeports {{ type inet_proto . inet_service : verdict ; "
             f"comment \"NodePort traffic\" ; }}",
             f"add chain ip {t} mark-for-masquerade",
             f"add rule ip {t} mark-for-masquerade mark set mark or {MASQ_MARK}",
             f"add chain ip {t} masquerading",
             f"add rule ip {t} masquerading mark and {MASQ_MARK} == 0 return",
             f"add rule ip {t} masquerading mark set mark xor {MASQ_MARK}",
             f"add rule ip {t} masquerading masquerade fully-random",
             f"add chain ip {t} services",
             f"add chain ip {t} nodeports",
             f"add rule ip {t} services ip daddr . meta l4proto . th dport vmap @service-ips",
             f"add rule ip {t} services fib daddr type local ip daddr != 127.0.0.0/8 jump nodeports",
             f"add rule ip {t} nodeports meta l4proto . th dport vmap @service-nodeports",
             f"add chain ip {t} nat-output {{ type nat hook output priority -100 ; }}",
             f"add rule ip {t} nat-output jump services",
             f"add chain ip {t} nat-postrouting {{ type nat hook postrouting priority srcnat ; }}",
             f"add rule ip {t} nat-postrouting jump masquerading"]
    if with_prerouting:
        lines += NFT_PREROUTING
    for svc in services:
        lines += _nft_chains(svc)
    for svc in services:
        lines += _nft_service(svc)
    for svc in services:
        lines.append(f"add element ip {t} cluster-ips {{ {svc.vip} }}")
        lines.append(_nft_element(svc))
    return "\n".join(lines) + "\n"


def nft_endpoint_change(old: Svc, new: Svc) -> str:
    """The incremental transaction kube-proxy's nftables mode sends when one Service's
    endpoints change: its service chain rewritten, new endpoint chains added, gone ones
    flushed and deleted (kube-proxy deletes stale chains a second later; here at once)."""
    t = NFT_TABLE
    added = [ep for ep in new.endpoints if ep not in old.endpoints]
    gone = [ep for ep in old.endpoints if ep not in new.endpoints]
    lines = []
    for ep in added:
        c = nft_endpoint_chain(new, ep)
        lines += [f"add chain ip {t} {c}", f"flush chain ip {t} {c}"] + _nft_endpoint(new, ep)
    chain = nft_service_chain(new)
    vmap = ", ".join(f"{i} : goto {nft_endpoint_chain(new, ep)}" for i, ep in enumerate(new.endpoints))
    lines += [f"flush chain ip {t} {chain}",
              f"add rule ip {t} {chain} ip daddr {new.vip} {new.proto} dport {new.port} "
              f"ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
              f"add rule ip {t} {chain} numgen random mod {len(new.endpoints)} vmap {{ {vmap} }}"]
    for ep in gone:
        lines += [f"flush chain ip {t} {nft_endpoint_chain(old, ep)}",
                  f"delete chain ip {t} {nft_endpoint_chain(old, ep)}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ ebpflb's input

def _slice(svc: Svc, name: str, family: str, endpoints: Sequence[Tuple[str, int]]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": svc.namespace,
                         "labels": {"kubernetes.io/service-name": svc.name}},
            "addressType": family,
            "ports": [{"name": svc.port_name, "port": endpoints[0][1], "protocol": svc.protocol}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}
                          for ip, _ in endpoints]}


def manifests(services: Sequence[Svc], dual_stack: bool = True) -> str:
    """The same Services as Kubernetes objects (a JSON `kind: List`, which YAML loaders read),
    for the ebpflb agent: one Service and one EndpointSlice each; a Service with an IPv6 cluster
    IP (and `dual_stack`) as kubectl shows a RequireDualStack one: both cluster IPs, IPv4 first,
    and a second, IPv6 EndpointSlice. `dual_stack=False` writes the IPv4 half only."""
    import json

    items = []
    for svc in services:
        dual = dual_stack and svc.vip6 is not None
        if dual and not svc.endpoints6:
            raise ValueError(f"{svc.port_name_string}: endpoints6 empty for IPv6 cluster IP {svc.vip6}")
        spec = {"type": "ClusterIP", "clusterIP": svc.vip, "clusterIPs": [svc.vip],
                "ports": [{"name": svc.port_name, "port": svc.port, "protocol": svc.protocol,
                           "targetPort": svc.endpoints[0][1]}]}
        if dual:
            spec.update(clusterIPs=[svc.vip, svc.vip6], ipFamilies=["IPv4", "IPv6"],
                        ipFamilyPolicy="RequireDualStack")
        items.append({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": svc.name, "namespace": svc.namespace}, "spec": spec})
        items.append(_slice(svc, f"{svc.name}-abcde", "IPv4", svc.endpoints))
        if dual:
            items.append(_slice(svc, f"{svc.name}-v6-abcde", "IPv6", svc.endpoints6))
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=0) + "\n"
