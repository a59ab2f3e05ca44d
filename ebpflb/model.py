"""The pure model: Kubernetes Services and EndpointSlices in, frontends and their backends out.

Pipeline: sources -> store -> **model** -> plan -> apply. Sources (the API watch, manifests on
disk) build the frozen objects below; `service_model()` turns one Service and its EndpointSlices
into the frontends and backends the maps should hold for it, with the rules kube-proxy uses, so
a change costs that Service only. Clashes between Services (one frontend or health check port
asked for twice) are settled in ebpflb.desired; `desired_state()` is the whole cluster at once.
Nothing here touches the kernel. Each IP family a Service has (its clusterIPs) gets its own
frontends, with the backends of that family's EndpointSlices; everything not programmed is
reported in `skipped`. It also says which healthCheckNodePort this node answers and with how many local
endpoints (ebpflb.service_health).
"""
from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from . import abi
from .fields import ip_version
from .policy import LbPolicy, parse_policy
from .addresses import format_address

log = logging.getLogger(__name__)

# Service types that get a ClusterIP; ExternalName is a DNS alias the data plane never sees.
CLUSTER_IP_TYPES = frozenset({"ClusterIP", "NodePort", "LoadBalancer"})
# What the data plane can rewrite; SCTP is valid Kubernetes but not parsed by bpf/.
LB_PROTOCOLS = frozenset({"TCP", "UDP"})


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One entry of a Service's spec.ports."""

    name: str  # "" when unnamed; the key that links it to EndpointSlice ports
    protocol: str  # "TCP" | "UDP" | "SCTP"
    port: int
    target_port: Union[int, str]  # number or IANA_SVC_NAME; already resolved in slices
    node_port: Optional[int] = None  # NodePort and LoadBalancer Services, once allocated


@dataclass(frozen=True, slots=True)
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
    lb_proxy_ips: Tuple[str, ...] = ()  # ... whose ipMode is Proxy: left to the load balancer
    external_traffic_policy: str = "Cluster"  # spec.externalTrafficPolicy: Cluster | Local
    lb_source_ranges: Tuple[str, ...] = ()  # spec.loadBalancerSourceRanges, normalized CIDRs
    health_check_node_port: Optional[int] = None  # spec.healthCheckNodePort (LB, ETP Local)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class EndpointPort:
    """One entry of an EndpointSlice's ports: targetPort already resolved to a number."""

    name: str  # "" when unnamed; matches ServicePort.name
    port: int
    protocol: str


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of a slice with its conditions already defaulted (discovery/v1 rules)."""

    addresses: Tuple[str, ...]
    ready: bool  # nil means True
    serving: bool  # nil defers to ready
    terminating: bool  # nil means False
    node_name: Optional[str] = None
    target: Optional[str] = None  # targetRef as "Kind/name", for display
    zone: Optional[str] = None
    # hints.forZones and hints.forNodes, written by the EndpointSlice controller for Services
    # with trafficDistribution (or topology-aware routing): () when absent.
    hint_zones: Tuple[str, ...] = ()
    hint_nodes: Tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str  # label kubernetes.io/service-name: the only link to its Service
    address_type: str  # IPv4 | IPv6 | FQDN
    ports: Tuple[EndpointPort, ...]
    endpoints: Tuple[Endpoint, ...]


@dataclass(frozen=True, order=True, slots=True)
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
    # The Service port has usable endpoints beyond this frontend's (on other nodes, left out by a
    # Local traffic policy): with none of its own, new flows are dropped, not rejected, as
    # kube-proxy does (it rejects only when the Service has no usable endpoint anywhere).
    endpoints_elsewhere: bool = field(default=False, compare=False)
    # Which endpoint hints chose the backends (TOPOLOGY_*): "" when none did.
    topology: str = field(default="", compare=False)

    @property
    def key(self) -> Tuple[str, int, str, int]:
        return (self.vip, self.port, self.protocol, self.scope)

    @property
    def namespace(self) -> str:
        return self.service.partition("/")[0]

    def __str__(self) -> str:
        return (f"{format_address(self.vip, self.port)}/{self.protocol}"
                + ("@external" if self.scope else ""))


SCOPE_ALL = abi.LB4_SCOPE_ALL  # a frontend record for every client
SCOPE_EXTERNAL = abi.LB4_SCOPE_EXTERNAL  # its record for traffic from outside (Local policy)


@dataclass(frozen=True, order=True, slots=True)
class Backend:
    """An (IP, port) a frontend rewrites to; target is display only."""

    ip: str
    port: int
    target: Optional[str] = field(default=None, compare=False)  # e.g. "Pod/web-1"

    @property
    def key(self) -> Tuple[str, int]:
        return (self.ip, self.port)

    def __str__(self) -> str:
        return format_address(self.ip, self.port)


@dataclass(frozen=True, slots=True)
class SkippedService:
    """Why (part of) a service is not programmed; one service may be skipped for several reasons."""

    ref: str
    reason: str


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """A healthCheckNodePort this node answers: 200 while the Service has a ready endpoint here,
    so a cloud load balancer only sends externalTrafficPolicy Local traffic to nodes that can
    serve it without a hop."""

    port: int
    service: str  # "namespace/name"
    local_endpoints: int  # distinct ready endpoint addresses on this node


@dataclass(frozen=True, slots=True)
class DesiredState:
    """What the maps should hold: every frontend, even one with no ready backend."""

    # A plain dict (not a MappingProxyType) so deepcopy, pickle and asdict work; treat it as
    # read-only. Keys in Frontend order; backends sorted by (IP as integer, port).
    frontends: Mapping[Frontend, Tuple[Backend, ...]]
    skipped: Tuple[SkippedService, ...]
    health_checks: Tuple[HealthCheck, ...] = ()  # in (namespace, name) order of their Services


@dataclass(frozen=True, slots=True)
class ModelContext:
    """What the model needs to know of this node and the agent's flags."""

    node_name: Optional[str] = None  # for internalTrafficPolicy and externalTrafficPolicy Local
    proxy_name: Optional[str] = None  # serve Services labelled service-proxy-name=<this> too
    node_addresses: Tuple[str, ...] = ()  # where NodePorts are served
    external_ip_allow: Tuple[str, ...] = ()  # CIDRs externalIPs may be programmed in
    node_zone: Optional[str] = None  # this Node's topology.kubernetes.io/zone, for zone hints


@dataclass(frozen=True, slots=True)
class ServiceModel:
    """What one Service asks for, judged alone: its candidate frontends with their backends, in
    frontend order; why (part of) it is not programmed; the health check it wants. Whether another
    Service holds one of these frontends or the health check port first is settled across
    Services (ebpflb.desired)."""

    ref: str  # "namespace/name"
    frontends: Tuple[Tuple[Frontend, Tuple[Backend, ...]], ...]
    skipped: Tuple[str, ...] = ()  # reasons
    health_check: Optional[HealthCheck] = None
    node_ports: bool = False  # has frontends on node addresses (recomputed when they change)


def desired_state(services: Iterable[Service], slices: Iterable[EndpointSlice],
                  node_name: Optional[str] = None, proxy_name: Optional[str] = None,
                  node_addresses: Sequence[str] = (),
                  external_ip_allow: Sequence[str] = (),
                  node_zone: Optional[str] = None,
                  gateway: Sequence[Tuple[str, Tuple[str, str], Any]] = ()) -> DesiredState:
    """Frontends and their ready backends for every programmable Service port (kube-proxy rules),
    and for every Gateway listener (`gateway`: the Gateway API objects as (kind, key, object),
    as ebpflb.manifests.Manifests holds them), computed at once; the agent keeps the same result
    per Service and Gateway as objects change."""
    from .desired import cluster_model

    return cluster_model(services, slices, ModelContext(node_name, proxy_name, tuple(node_addresses),
                                                        tuple(external_ip_allow), node_zone),
                         gateway).desired_state()


def service_model(svc: Service, slices: Sequence[EndpointSlice], ctx: ModelContext) -> ServiceModel:
    """One Service's frontends and their usable backends (kube-proxy's rules); `slices` are
    its EndpointSlices (any address type, in name order)."""
    skipped: List[str] = []

    def skip(_svc: Service, reason: str) -> None:
        # Logged by ebpflb.desired when a Service's reasons change, not on every recompute.
        skipped.append(reason)

    node_ports = svc.type in ("NodePort", "LoadBalancer") and any(sp.node_port for sp in svc.ports)
    vips = _service_vips(svc, skip, ctx.proxy_name)
    if not vips:
        return ServiceModel(svc.ref, (), tuple(skipped), None, node_ports)
    policy, problems = parse_policy(dict(svc.annotations))
    if problems:
        # The manifest source refuses these; another source must not program a guess either.
        skip(svc, "; ".join(f"annotation {key}: {msg}" for key, msg in problems))
        return ServiceModel(svc.ref, (), tuple(skipped), None, node_ports)
    families = list(dict.fromkeys(ip_version(ip) for ip in vips))
    _unserved_addresses(svc, families, skip)
    # The health check counts the primary family's endpoints (a dual-stack pod is one endpoint).
    check = _health_check(svc, [s for s in slices if s.address_type == ADDRESS_TYPES[families[0]]],
                          ctx.node_name)
    frontends: List[Tuple[Frontend, Tuple[Backend, ...]]] = []
    seen: set = set()
    for sp in svc.ports:
        if sp.protocol not in LB_PROTOCOLS:
            where = f"'{sp.name}'" if sp.name else str(sp.port)
            skip(svc, f"protocol {sp.protocol} on port {where} not supported")
            continue
        for family in families:
            family_slices = [s for s in slices if s.address_type == ADDRESS_TYPES[family]]
            _port_frontends(svc, sp, [v for v in vips if ip_version(v) == family], family_slices,
                            family, policy, ctx, skip, seen, frontends)
    frontends.sort(key=lambda item: item[0])
    return ServiceModel(svc.ref, tuple(frontends), tuple(dict.fromkeys(skipped)), check, node_ports)


def _port_frontends(svc: Service, sp: ServicePort, vips: List[str], svc_slices: List[EndpointSlice],
                    family: int, policy: LbPolicy, ctx: ModelContext,
                    skip: Callable[[Service, str], None], seen: set,
                    frontends: List[Tuple[Frontend, Tuple[Backend, ...]]]) -> None:
    """The frontends of one Service port in one IP family, added to `frontends`."""
    local = svc.external_traffic_policy == "Local"
    # kube-proxy's chains: a cluster IP follows internalTrafficPolicy; the external
    # addresses (node ports, load balancer and external IPs) reach every endpoint, except
    # traffic from outside under externalTrafficPolicy Local, which stays on this node
    # so the client's address can be kept. Pods reaching an external address are inside
    # the cluster: they get every endpoint ("pod traffic for external destinations").
    ported = _ported_endpoints(sp, svc_slices)
    # Endpoint hints narrow the endpoints every client may reach (kube-proxy's cluster
    # endpoints), never a Local policy's: those are this node's already.
    mode = topology_mode([ep for _, ep, _ in ported], ctx.node_name, ctx.node_zone,
                         svc.publish_not_ready)
    hinted = _topology_filter(mode, ctx.node_name, ctx.node_zone)
    everyone = _usable_backends(ported, svc, ctx.node_name, internal_policy=False,
                                topology=hinted)
    itp_local = svc.internal_traffic_policy == "Local"
    backends = _usable_backends(ported, svc, ctx.node_name) if itp_local else everyone
    here = _usable_backends(ported, svc, ctx.node_name, local_only=True) if local else ()
    affinity = svc.affinity_timeout if svc.session_affinity == "ClientIP" else 0
    for kind, vip, port in _frontend_addresses(svc, sp, vips, ctx.node_addresses,
                                               ctx.external_ip_allow, skip, family):
        external = kind != "ClusterIP"
        views = [(SCOPE_ALL, everyone if external else backends,
                  mode if external or not itp_local else TOPOLOGY_NONE)]
        if local and external:
            views.append((SCOPE_EXTERNAL, here, TOPOLOGY_NONE))
        for scope, chosen, topology in views:
            fe = Frontend(vip, port, sp.protocol, svc.ref, sp.name, policy, affinity, kind,
                          svc.lb_source_ranges if kind == "LoadBalancer" else (),
                          local and external, scope, len(everyone) > len(chosen), topology)
            if fe.key in seen:  # two ports of one Service asking for one node port
                skip(svc, f"frontend {fe} already used by {svc.ref}")
                continue
            seen.add(fe.key)
            frontends.append((fe, chosen))


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


ADDRESS_TYPES = {4: "IPv4", 6: "IPv6"}  # EndpointSlice addressType of each IP family


def _frontend_addresses(svc: Service, sp: ServicePort, vips: List[str],
                        node_addresses: Sequence[str], external_ip_allow: Sequence[str],
                        skip: Callable[[Service, str], None], family: int):
    """(kind, address, port) of every frontend a Service port has in one IP family: its cluster
    IPs; a node port on every node address (NodePort, LoadBalancer); the load balancer's ingress
    IPs; and the external IPs inside the allow-list. An external IP anywhere else is refused:
    anyone who may edit a Service could otherwise take over traffic to any address
    (CVE-2020-8554). Addresses of another family are that family's (or unserved_addresses')."""
    for vip in vips:
        yield "ClusterIP", vip, sp.port
    if svc.type in ("NodePort", "LoadBalancer") and sp.node_port:
        for addr in node_addresses:
            if ip_version(addr) == family:
                yield "NodePort", addr, sp.node_port
    if svc.type == "LoadBalancer":
        for ip in svc.lb_ingress_ips:
            if ip_version(ip) == family:
                yield "LoadBalancer", ip, sp.port
    allowed = [ipaddress.ip_network(c) for c in external_ip_allow]
    for ip in svc.external_ips:
        if ip_version(ip) != family:
            continue
        if any(ipaddress.ip_address(ip) in net for net in allowed if net.version == family):
            yield "ExternalIP", ip, sp.port
        else:
            skip(svc, f"externalIP {ip} outside the --external-ip-allow list (CVE-2020-8554)")


def _unserved_addresses(svc: Service, families: Sequence[int],
                        skip: Callable[[Service, str], None]) -> None:
    """Reports the addresses no frontend is made for: of a family the Service does not have (as
    kube-proxy's per-family proxiers leave them), or load balancer IPs in Proxy mode."""
    if svc.type == "LoadBalancer":
        for ip in svc.lb_ingress_ips:
            if ip_version(ip) not in families:
                skip(svc, f"load balancer IP {ip} not programmed: the Service has no "
                          f"{ADDRESS_TYPES.get(ip_version(ip) or 0, 'valid')} cluster IP")
        for ip in svc.lb_proxy_ips:
            skip(svc, f"load balancer IP {ip} has ipMode Proxy: its traffic comes through the "
                      "load balancer, which is left to handle it, as kube-proxy does")
    for ip in svc.external_ips:
        if ip_version(ip) not in families:
            skip(svc, f"externalIP {ip} not programmed: the Service has no "
                      f"{ADDRESS_TYPES.get(ip_version(ip) or 0, 'valid')} cluster IP")


def _service_vips(svc: Service, skip: Callable[[Service, str], None],
                  proxy_name: Optional[str] = None) -> List[str]:
    """The cluster IPs of a service (both families, in clusterIPs order: the primary family
    first); reports every case it has none through skip()."""
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
        version = ip_version(ip) if isinstance(ip, str) else None
        if version is None:
            skip(svc, f"invalid cluster IP {ip!r}")
        elif ip not in vips:
            vips.append(ip)
    return vips


def usable_endpoints(endpoints: Sequence[Endpoint], publish_not_ready: bool = False,
                     local_only: bool = False, node_name: Optional[str] = None,
                     topology: Optional[Callable[[Endpoint], bool]] = None) -> List[Endpoint]:
    """Which endpoints of a Service port receive new flows (kube-proxy's rules):

    - internalTrafficPolicy Local (local_only): only endpoints on this node (none when the node is
      unknown: sending elsewhere would break the policy's promise);
    - publishNotReadyAddresses: every endpoint, whatever its conditions;
    - otherwise the ready ones; when none is ready, those both serving and terminating, so a
      rolling update's last pods keep answering (KEP-1669);
    - `topology` (from topology_mode) keeps the ready ones the hints give this node; the
      terminating fallback ignores hints, as kube-proxy's does.
    """
    candidates = [e for e in endpoints
                  if not local_only or (node_name is not None and e.node_name == node_name)]
    if publish_not_ready:
        return [e for e in candidates if topology is None or topology(e)]
    ready = [e for e in candidates if e.ready and (topology is None or topology(e))]
    if ready:
        return ready
    return [e for e in candidates if e.serving and e.terminating]


TOPOLOGY_NONE = ""
TOPOLOGY_NODE = "PreferSameNode"  # every ready endpoint has hints.forNodes, one names this node
TOPOLOGY_ZONE = "PreferSameZone"  # every ready endpoint has hints.forZones, one names our zone


def topology_mode(endpoints: Sequence[Endpoint], node_name: Optional[str], zone: Optional[str],
                  publish_not_ready: bool = False) -> str:
    """Which hints apply to a Service port's endpoints on this node, as kube-proxy decides it
    (KEP-2433, KEP-3015): the node hints when every ready endpoint has one and one names this
    node; else the zone hints when every ready endpoint has one and one names this node's zone;
    else none. The proxy reads the hints the EndpointSlice controller wrote, not the Service's
    trafficDistribution."""
    ready = [e for e in endpoints if e.ready or publish_not_ready]
    if not ready:
        return TOPOLOGY_NONE
    if node_name and all(e.hint_nodes for e in ready) and any(
            node_name in e.hint_nodes for e in ready):
        return TOPOLOGY_NODE
    if zone and all(e.hint_zones for e in ready) and any(zone in e.hint_zones for e in ready):
        return TOPOLOGY_ZONE
    return TOPOLOGY_NONE


def _topology_filter(mode: str, node_name: Optional[str],
                     zone: Optional[str]) -> Optional[Callable[[Endpoint], bool]]:
    if mode == TOPOLOGY_NODE:
        return lambda e: node_name in e.hint_nodes
    if mode == TOPOLOGY_ZONE:
        return lambda e: zone in e.hint_zones
    return None


def _ported_endpoints(sp: ServicePort, slices: List[EndpointSlice]
                      ) -> List[Tuple[int, Endpoint, EndpointSlice]]:
    """(target port, endpoint, slice) of every endpoint serving one Service port."""
    ported: List[Tuple[int, Endpoint, EndpointSlice]] = []
    for s in slices:
        # The EndpointSlice controller already resolved targetPort (named or numeric) into the
        # slice port that carries the service port's name, so matching on name is the whole rule.
        port = next((p.port for p in s.ports if p.name == sp.name and p.protocol == sp.protocol), None)
        if port is not None:
            ported.extend((port, ep, s) for ep in s.endpoints)
    return ported


def _usable_backends(ported: List[Tuple[int, Endpoint, EndpointSlice]], svc: Service,
                     node_name: Optional[str], local_only: bool = False,
                     internal_policy: bool = True,
                     topology: Optional[Callable[[Endpoint], bool]] = None) -> Tuple[Backend, ...]:
    """Usable backends of one service port, deduplicated across slices and sorted; only this
    node's with `local_only`, or with internalTrafficPolicy Local unless `internal_policy` is
    off (the external addresses do not follow it)."""
    # The fallback to terminating endpoints weighs all slices of the port together.
    usable = {id(ep) for ep in usable_endpoints(
        [ep for _, ep, _ in ported], svc.publish_not_ready,
        local_only or (internal_policy and svc.internal_traffic_policy == "Local"), node_name,
        topology)}
    found: Dict[Tuple[str, int], Backend] = {}
    for port, ep, s in ported:
        if id(ep) not in usable:
            continue
        family = 6 if s.address_type == "IPv6" else 4
        for ip in ep.addresses:
            if ip_version(ip) != family:
                log.warning("endpointslice %s/%s: ignoring address %r (not %s)", s.namespace,
                            s.name, ip, s.address_type)
                continue
            if (ip, port) not in found:
                found[ip, port] = Backend(ip, port, ep.target)
    return tuple(sorted(found.values(), key=_backend_order))


def _backend_order(b: Backend) -> Tuple[bytes, int]:
    if ":" in b.ip:
        return socket.inet_pton(socket.AF_INET6, b.ip), b.port
    return socket.inet_aton(b.ip), b.port

