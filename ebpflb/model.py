"""The pure model: Kubernetes Services and EndpointSlices in, frontends and their backends out.

Pipeline: sources -> **model** -> plan -> apply. Sources (the API watch, manifests on disk) build the
frozen objects below; `desired_state()` turns them into what the BPF maps should hold, with the
same rules kube-proxy uses, so plan can diff it against the maps. Nothing here touches the kernel.
IPv4 frontends only; everything not programmed is reported in `skipped`. It also says which
healthCheckNodePorts this node answers and with how many local endpoints (ebpflb.healthcheck).
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .policy import LbPolicy, parse_policy

log = logging.getLogger(__name__)

# Service types that get a ClusterIP; ExternalName is a DNS alias the data plane never sees.
CLUSTER_IP_TYPES = frozenset({"ClusterIP", "NodePort", "LoadBalancer"})
# What the data plane can rewrite; SCTP is valid Kubernetes but not parsed by bpf/.
LB_PROTOCOLS = frozenset({"TCP", "UDP"})


@dataclass(frozen=True)
class ServicePort:
    """One entry of a Service's spec.ports."""

    name: str  # "" when unnamed; the key that links it to EndpointSlice ports
    protocol: str  # "TCP" | "UDP" | "SCTP"
    port: int
    target_port: Union[int, str]  # number or IANA_SVC_NAME; already resolved in slices
    node_port: Optional[int] = None  # NodePort and LoadBalancer Services, once allocated


@dataclass(frozen=True)
class Service:
    """A Service as far as load balancing cares."""

    namespace: str
    name: str
    type: str  # ClusterIP | NodePort | LoadBalancer | ExternalName
    cluster_ips: Tuple[str, ...]  # as given: may hold "None" (headless) and IPv6 addresses
    ports: Tuple[ServicePort, ...]
    labels: Tuple[Tuple[str, str], ...] = ()  # sorted items, so the Service stays hashable
    annotations: Tuple[Tuple[str, str], ...] = ()
    publish_not_ready: bool = False  # spec.publishNotReadyAddresses
    internal_traffic_policy: str = "Cluster"  # spec.internalTrafficPolicy: Cluster | Local
    session_affinity: str = "None"  # spec.sessionAffinity: None | ClientIP
    affinity_timeout: int = 10800  # spec.sessionAffinityConfig.clientIP.timeoutSeconds
    external_ips: Tuple[str, ...] = ()  # spec.externalIPs
    lb_ingress_ips: Tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip
    external_traffic_policy: str = "Cluster"  # spec.externalTrafficPolicy: Cluster | Local
    lb_source_ranges: Tuple[str, ...] = ()  # spec.loadBalancerSourceRanges, normalized CIDRs
    health_check_node_port: Optional[int] = None  # spec.healthCheckNodePort (LB, ETP Local)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class EndpointPort:
    """One entry of an EndpointSlice's ports: targetPort already resolved to a number."""

    name: str  # "" when unnamed; matches ServicePort.name
    port: int
    protocol: str


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of a slice with its conditions already defaulted (discovery/v1 rules)."""

    addresses: Tuple[str, ...]
    ready: bool  # nil means True
    serving: bool  # nil defers to ready
    terminating: bool  # nil means False
    node_name: Optional[str] = None
    target: Optional[str] = None  # targetRef as "Kind/name", for display


@dataclass(frozen=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str  # label kubernetes.io/service-name: the only link to its Service
    address_type: str  # IPv4 | IPv6 | FQDN
    ports: Tuple[EndpointPort, ...]
    endpoints: Tuple[Endpoint, ...]


@dataclass(frozen=True, order=True)
class Frontend:
    """A (VIP, port, protocol) the data plane matches; service and port name are display only."""

    vip: str
    port: int
    protocol: str  # "TCP" | "UDP"
    service: str = field(default="", compare=False)  # "namespace/name"
    port_name: str = field(default="", compare=False)
    policy: LbPolicy = field(default=LbPolicy(), compare=False)  # from the Service's annotations
    affinity_timeout: int = field(default=0, compare=False)  # ClientIP affinity seconds, 0 = none
    kind: str = field(default="ClusterIP", compare=False)  # ClusterIP | NodePort | LoadBalancer | ExternalIP
    # loadBalancerSourceRanges (both families, normalized): only on LoadBalancer frontends, as in
    # kube-proxy; the Service's cluster IP and node ports stay open to everyone.
    source_ranges: Tuple[str, ...] = field(default=(), compare=False)
    # externalTrafficPolicy Local on a frontend reached from outside: no SNAT, local backends only.
    external_local: bool = field(default=False, compare=False)
    # Who the record serves: SCOPE_ALL (pods, and outside unless there is an external record) or
    # SCOPE_EXTERNAL (traffic from outside to a Local-policy frontend: this node's backends).
    scope: int = 0

    @property
    def key(self) -> Tuple[str, int, str, int]:
        return (self.vip, self.port, self.protocol, self.scope)

    @property
    def namespace(self) -> str:
        return self.service.partition("/")[0]

    def __str__(self) -> str:
        return f"{self.vip}:{self.port}/{self.protocol}" + ("@external" if self.scope else "")


SCOPE_ALL = 0  # LB4_SCOPE_ALL in bpf/lb_structs.h
SCOPE_EXTERNAL = 1  # LB4_SCOPE_EXTERNAL


@dataclass(frozen=True, order=True)
class Backend:
    """An (IP, port) a frontend rewrites to; target is display only."""

    ip: str
    port: int
    target: Optional[str] = field(default=None, compare=False)  # e.g. "Pod/web-1"

    @property
    def key(self) -> Tuple[str, int]:
        return (self.ip, self.port)

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class SkippedService:
    """Why (part of) a service is not programmed; one service may be skipped for several reasons."""

    ref: str
    reason: str


@dataclass(frozen=True)
class HealthCheck:
    """A healthCheckNodePort this node answers: 200 while the Service has a ready endpoint here,
    so a cloud load balancer only sends externalTrafficPolicy Local traffic to nodes that can
    serve it without a hop."""

    port: int
    service: str  # "namespace/name"
    local_endpoints: int  # distinct ready endpoint addresses on this node


@dataclass(frozen=True)
class DesiredState:
    """What the maps should hold: every frontend, even one with no ready backend."""

    # A plain dict (not a MappingProxyType) so deepcopy, pickle and asdict work; treat it as
    # read-only. Keys in Frontend order; backends sorted by (IP as integer, port).
    frontends: Mapping[Frontend, Tuple[Backend, ...]]
    skipped: Tuple[SkippedService, ...]
    health_checks: Tuple[HealthCheck, ...] = ()  # in (namespace, name) order of their Services


def desired_state(services: Iterable[Service], slices: Iterable[EndpointSlice],
                  node_name: Optional[str] = None, proxy_name: Optional[str] = None,
                  node_addresses: Sequence[str] = (),
                  external_ip_allow: Sequence[str] = ()) -> DesiredState:
    """Frontends and their ready backends for every programmable Service port (kube-proxy rules)."""
    by_service: Dict[Tuple[str, str], List[EndpointSlice]] = {}
    for s in sorted(slices, key=lambda s: (s.namespace, s.name)):
        if s.address_type == "IPv4":
            by_service.setdefault((s.namespace, s.service_name), []).append(s)

    frontends: Dict[Frontend, Tuple[Backend, ...]] = {}
    owner: Dict[Frontend, str] = {}
    skipped: List[SkippedService] = []
    health_checks: Dict[int, HealthCheck] = {}

    def skip(svc: Service, reason: str) -> None:
        log.info("service %s: not programmed: %s", svc.ref, reason)
        skipped.append(SkippedService(svc.ref, reason))

    # Sorted so that which service wins a (theoretical) frontend clash does not depend on order.
    for svc in sorted(services, key=lambda s: (s.namespace, s.name)):
        vips = _service_vips(svc, skip, proxy_name)
        if not vips:
            continue
        policy, problems = parse_policy(dict(svc.annotations))
        if problems:
            # The manifest source refuses these; another source must not program a guess either.
            skip(svc, "; ".join(f"annotation {key}: {msg}" for key, msg in problems))
            continue
        svc_slices = by_service.get((svc.namespace, svc.name), [])
        check = _health_check(svc, svc_slices, node_name)
        if check is not None and check.port in health_checks:
            skip(svc, f"healthCheckNodePort {check.port} already used by "
                      f"{health_checks[check.port].service}")
        elif check is not None:
            health_checks[check.port] = check
        local = svc.external_traffic_policy == "Local"
        for sp in svc.ports:
            if sp.protocol not in LB_PROTOCOLS:
                where = f"'{sp.name}'" if sp.name else str(sp.port)
                skip(svc, f"protocol {sp.protocol} on port {where} not supported")
                continue
            # kube-proxy's chains: a cluster IP follows internalTrafficPolicy; the external
            # addresses (node ports, load balancer and external IPs) reach every endpoint, except
            # traffic from outside under externalTrafficPolicy Local, which stays on this node
            # so the client's address can be kept. Pods reaching an external address are inside
            # the cluster: they get every endpoint ("pod traffic for external destinations").
            backends = _port_backends(sp, svc_slices, svc, node_name)
            everyone = _port_backends(sp, svc_slices, svc, node_name, internal_policy=False)
            here = (_port_backends(sp, svc_slices, svc, node_name, local_only=True)
                    if local else ())
            affinity = svc.affinity_timeout if svc.session_affinity == "ClientIP" else 0
            for kind, vip, port in _frontend_addresses(svc, sp, vips, node_addresses,
                                                       external_ip_allow, skip):
                external = kind != "ClusterIP"
                views = [(SCOPE_ALL, everyone if external else backends)]
                if local and external:
                    views.append((SCOPE_EXTERNAL, here))
                for scope, chosen in views:
                    fe = Frontend(vip, port, sp.protocol, svc.ref, sp.name, policy, affinity, kind,
                                  svc.lb_source_ranges if kind == "LoadBalancer" else (),
                                  local and external, scope)
                    if fe in owner:
                        skip(svc, f"frontend {fe} already used by {owner[fe]}")
                        continue
                    owner[fe] = svc.ref
                    frontends[fe] = chosen
    ordered = {fe: frontends[fe] for fe in sorted(frontends)}
    return DesiredState(frontends=ordered, skipped=tuple(dict.fromkeys(skipped)),
                        health_checks=tuple(health_checks.values()))


def _health_check(svc: Service, slices: List[EndpointSlice],
                  node_name: Optional[str]) -> Optional[HealthCheck]:
    """The health check a Service asks this node for, with its local endpoint count. Counted as
    kube-proxy does: ready endpoints only (every endpoint with publishNotReadyAddresses, which
    the EndpointSlice controller reports ready), never the terminating fallback, so a node whose
    last pods are terminating fails its check and the load balancer drains it (KEP-1669)."""
    if (svc.health_check_node_port is None or svc.external_traffic_policy != "Local"
            or svc.type not in ("NodePort", "LoadBalancer")):
        return None
    addresses = set()
    if node_name is not None:
        for s in slices:
            for ep in s.endpoints:
                if ep.node_name == node_name and (ep.ready or svc.publish_not_ready):
                    addresses.update(ep.addresses)
    return HealthCheck(svc.health_check_node_port, svc.ref, len(addresses))


PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"


def _frontend_addresses(svc: Service, sp: ServicePort, vips: List[str],
                        node_addresses: Sequence[str], external_ip_allow: Sequence[str],
                        skip: Callable[[Service, str], None]):
    """(kind, address, port) of every frontend a Service port has: its cluster IPs;
    a node port on every node address (NodePort, LoadBalancer); the load balancer's ingress IPs;
    and the external IPs inside the allow-list. An external IP anywhere else is refused: anyone
    who may edit a Service could otherwise take over traffic to any address (CVE-2020-8554)."""
    for vip in vips:
        yield "ClusterIP", vip, sp.port
    if svc.type in ("NodePort", "LoadBalancer") and sp.node_port:
        for addr in node_addresses:
            yield "NodePort", addr, sp.node_port
    if svc.type == "LoadBalancer":
        for ip in svc.lb_ingress_ips:
            if _is_ipv4(ip):
                yield "LoadBalancer", ip, sp.port
    allowed = [ipaddress.ip_network(c) for c in external_ip_allow]
    for ip in svc.external_ips:
        if not _is_ipv4(ip):
            continue
        if any(ipaddress.IPv4Address(ip) in net for net in allowed if net.version == 4):
            yield "ExternalIP", ip, sp.port
        else:
            skip(svc, f"externalIP {ip} outside the --external-ip-allow list (CVE-2020-8554)")


def _service_vips(svc: Service, skip: Callable[[Service, str], None],
                  proxy_name: Optional[str] = None) -> List[str]:
    """The IPv4 cluster IPs of a service; reports every other case through skip()."""
    wanted_proxy = dict(svc.labels).get(PROXY_NAME_LABEL)
    if wanted_proxy is not None and wanted_proxy != proxy_name:
        # kube-proxy's rule: a Service naming a proxy belongs to that proxy alone.
        skip(svc, f"label {PROXY_NAME_LABEL}={wanted_proxy}: served by another proxy")
        return []
    if svc.type == "ExternalName":
        skip(svc, "type ExternalName")
        return []
    if svc.type not in CLUSTER_IP_TYPES:
        skip(svc, f"type {svc.type} not supported")
        return []
    if "None" in svc.cluster_ips:
        skip(svc, "headless (clusterIP: None)")
        return []
    if not any(svc.cluster_ips):
        skip(svc, "no cluster IP allocated")
        return []
    vips: List[str] = []
    for ip in svc.cluster_ips:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            skip(svc, f"invalid cluster IP {ip!r}")
            continue
        if addr.version == 6:
            skip(svc, f"IPv6 cluster IP {ip} (IPv4 only)")
        elif ip not in vips:
            vips.append(ip)
    return vips


def usable_endpoints(endpoints: Sequence[Endpoint], publish_not_ready: bool = False,
                     local_only: bool = False, node_name: Optional[str] = None) -> List[Endpoint]:
    """Which endpoints of a Service port receive new flows (kube-proxy's rules):

    - internalTrafficPolicy Local (local_only): only endpoints on this node (none when the node is
      unknown: sending elsewhere would break the policy's promise);
    - publishNotReadyAddresses: every endpoint, whatever its conditions;
    - otherwise the ready ones; when none is ready, those both serving and terminating, so a
      rolling update's last pods keep answering (KEP-1669).
    """
    candidates = [e for e in endpoints
                  if not local_only or (node_name is not None and e.node_name == node_name)]
    if publish_not_ready:
        return candidates
    ready = [e for e in candidates if e.ready]
    if ready:
        return ready
    return [e for e in candidates if e.serving and e.terminating]


def _port_backends(sp: ServicePort, slices: List[EndpointSlice], svc: Service,
                   node_name: Optional[str], local_only: bool = False,
                   internal_policy: bool = True) -> Tuple[Backend, ...]:
    """Usable backends of one service port, deduplicated across slices and sorted; only this
    node's with `local_only`, or with internalTrafficPolicy Local unless `internal_policy` is
    off (the external addresses do not follow it)."""
    ported: List[Tuple[int, Endpoint, EndpointSlice]] = []
    for s in slices:
        # The EndpointSlice controller already resolved targetPort (named or numeric) into the
        # slice port that carries the service port's name, so matching on name is the whole rule.
        port = next((p.port for p in s.ports if p.name == sp.name and p.protocol == sp.protocol), None)
        if port is not None:
            ported.extend((port, ep, s) for ep in s.endpoints)
    # The fallback to terminating endpoints weighs all slices of the port together.
    usable = {id(ep) for ep in usable_endpoints(
        [ep for _, ep, _ in ported], svc.publish_not_ready,
        local_only or (internal_policy and svc.internal_traffic_policy == "Local"), node_name)}
    found: Dict[Tuple[str, int], Backend] = {}
    for port, ep, s in ported:
        if id(ep) not in usable:
            continue
        for ip in ep.addresses:
            if not _is_ipv4(ip):
                log.warning("endpointslice %s/%s: ignoring address %r (not IPv4)", s.namespace, s.name, ip)
                continue
            found.setdefault((ip, port), Backend(ip, port, ep.target))
    return tuple(sorted(found.values(), key=lambda b: (int(ipaddress.IPv4Address(b.ip)), b.port)))


def _is_ipv4(ip: str) -> bool:
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        return False
    return True
