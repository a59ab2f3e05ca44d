"""One Kubernetes object (a parsed dict) -> one validated model object (pure core).

sources -> **convert** -> model -> plan -> apply. Both sources call this: the manifest source for
every object of a changed document, the Kubernetes API source for every object a list or watch
delivers (no text round trip). It checks everything the API server would have checked for the
fields ebpflb uses, because a manifest on disk has no API server in front of it, and it judges
each object alone: a problem refuses that object only (the caller keeps its last good version).
Problems carry field paths relative to the object; the manifest reader turns them into file:line.
"""
from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .backend_rules import (DEFAULT_SERVICE_CIDRS, backend_message, forbidden_backend,
                            in_service_range, parse_service_cidrs)
from .errors import FieldPath
from .fields import (DNS1035_LABEL, DNS1123_LABEL, DNS1123_SUBDOMAIN, FieldChecker, a_type,
                     key_text, show)
from .model import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
from .policy import parse_policy

SERVICE = "Service"
ENDPOINT_SLICE = "EndpointSlice"
# The kinds ebpflb reads, with the one API version of each it understands.
USED_KINDS = {SERVICE: "v1", ENDPOINT_SLICE: "discovery.k8s.io/v1"}
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
IP_MODES = ("VIP", "Proxy")  # status.loadBalancer.ingress[].ipMode
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# The API server's limit on all annotations of an object together (keys and values, bytes).
MAX_ANNOTATIONS_SIZE = 256 * 1024
# Kinds without a namespace, so an ignored one is not displayed as "default/<name>".
CLUSTER_SCOPED_KINDS = frozenset({
    "Namespace", "Node", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding",
    "CustomResourceDefinition", "PriorityClass", "IngressClass", "APIService", "GatewayClass",
})

ObjectKey = Tuple[str, str]  # (namespace, name)
ModelObject = Union[Service, EndpointSlice]


@dataclass(frozen=True, slots=True)
class Converted:
    """The verdict on one object: a model object, a refusal (problems), or a reason it is not
    used at all (another kind, a slice that names no Service)."""

    kind: Optional[str]
    key: Optional[ObjectKey]  # (namespace, name) once both are valid
    label: str  # "Service demo/web", or "document 3" while the name is unknown
    obj: Optional[ModelObject] = None
    problems: Tuple[Tuple[FieldPath, str], ...] = ()
    ignored: Optional[str] = None  # not an error: e.g. "kind not used by ebpflb"
    # The object is one of ebpflb's (its kind, its API group and its name are known), accepted
    # or not: a refused one keeps its last good version, an ignored one removes it.
    claims: bool = False

    @property
    def refused(self) -> bool:
        return bool(self.problems)


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def convert_api_object(kind: str, obj: Any,
                       service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS) -> Converted:
    """An object as the API server lists or watches it: items carry neither kind nor apiVersion."""
    return convert_document(obj, kind, kind, USED_KINDS[kind], service_cidrs)


def read_header(ck: FieldChecker, doc: Any, where: str, default_kind: Optional[str],
                default_api: Optional[str]) -> Union[Tuple[str, Any, Dict[str, Any], ObjectKey],
                                                     Converted]:
    """What every kind shares: a mapping with a kind, metadata, a name and a namespace (none for
    a cluster-scoped kind). (kind, apiVersion, metadata, key), with the checker's label naming
    the object; or the refusal when those are not there."""
    if not isinstance(doc, dict):
        ck.error((), f"not a mapping ({a_type(doc)})")
        return Converted(None, None, where, problems=tuple(ck.problems))
    kind = doc.get("kind", default_kind)
    api = doc.get("apiVersion", default_api)
    raw_meta = doc.get("metadata")
    meta = ck.mapping(raw_meta, ("metadata",)) or {}
    name = meta.get("name")
    # A hostile kind may be a list or a mapping: no membership test before it is a string.
    scoped = not (isinstance(kind, str) and kind in CLUSTER_SCOPED_KINDS)
    namespace = (meta.get("namespace") or "default") if scoped else ""
    if isinstance(kind, str) and kind and isinstance(name, str) and name and \
            isinstance(namespace, str):
        ck.label = f"{kind} {namespace}/{name}" if scoped else f"{kind} {name}"
    elif isinstance(kind, str) and kind:
        ck.label = f"{kind} ({where})"
    if not isinstance(kind, str) or not kind:
        ck.error(("kind",), "missing" if kind is None else f"{show(kind)} is not a valid kind")
    if isinstance(raw_meta, (dict, type(None))) and (not isinstance(name, str) or not name):
        ck.error(("metadata", "name"), "missing" if name is None else f"{show(name)} is not a valid name")
    if not isinstance(namespace, str):
        ck.error(("metadata", "namespace"), f"{show(namespace)} must be a string")
    if ck.problems:
        return Converted(kind if isinstance(kind, str) else None, None, ck.label,
                         problems=tuple(ck.problems))
    return kind, api, meta, (sys.intern(namespace), name)


def convert_document(doc: Any, where: str, default_kind: Optional[str] = None,
                     default_api: Optional[str] = None,
                     service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS) -> Converted:
    """`where` labels the object until its name is known ("document 2", "items[3] (document 1)");
    the defaults come from an enclosing typed List (`kind: ServiceList`)."""
    ck = FieldChecker(where)
    header = read_header(ck, doc, where, default_kind, default_api)
    if isinstance(header, Converted):
        return header
    kind, api, meta, key = header
    want = USED_KINDS.get(kind)
    if want is not None and api == want:
        parser = _Parser(ck, tuple(service_cidrs))
        obj, ignored = (parser.service(doc, meta, key) if kind == SERVICE
                        else parser.endpoint_slice(doc, meta, key))
        if ck.problems:
            return Converted(kind, key, ck.label, problems=tuple(ck.problems), claims=True)
        return Converted(kind, key, ck.label, obj, ignored=ignored, claims=True)
    if want is not None and (not isinstance(api, str) or _group(api) == _group(want)):
        # Another version of the same API group is a mistake (e.g. discovery.k8s.io/v1beta1,
        # removed in Kubernetes 1.25); another group is someone else's kind (Knative Service).
        ck.error(("apiVersion",), "missing" if api is None else f"{show(api)} is not supported (use {want})")
        return Converted(kind, key, ck.label, problems=tuple(ck.problems), claims=True)
    reason = "kind" if want is None else f"apiVersion {api}"
    return Converted(kind, key, ck.label, ignored=f"{reason} not used by ebpflb")


class _Parser:
    """The field rules of the two kinds ebpflb reads; problems go to the checker."""

    def __init__(self, ck: FieldChecker, service_cidrs: Tuple[str, ...]) -> None:
        self.ck = ck
        self.service_cidrs = service_cidrs
        parse_service_cidrs(service_cidrs)  # a bad range is a ValueError before any object

    # --- metadata ------------------------------------------------------------------------
    def _metadata(self, meta: Dict[str, Any], key: ObjectKey, name_rule: "re.Pattern[str]",
                  max_len: int, name_what: str) -> Tuple[Optional[Dict[str, str]], Dict[str, str]]:
        ck = self.ck
        namespace, name = key
        ck.name(name, ("metadata", "name"), name_rule, max_len, name_what)
        ck.name(namespace, ("metadata", "namespace"), DNS1123_LABEL, 63, "namespace (DNS-1123 label)")
        annotations = self._string_map(meta, "annotations") or {}
        # Bytes as the API server counts them (UTF-8; a lone surrogate, which no API server would
        # have sent, counts as what it would be).
        size = sum(len(k.encode("utf-8", "surrogatepass")) + len(v.encode("utf-8", "surrogatepass"))
                   for k, v in annotations.items())
        if size > MAX_ANNOTATIONS_SIZE:
            ck.error(("metadata", "annotations"), f"{size} bytes in all: at most "
                                                  f"{MAX_ANNOTATIONS_SIZE} (256 KiB), as the API server allows")
        return self._string_map(meta, "labels"), annotations

    def _string_map(self, meta: Dict[str, Any], key: str) -> Optional[Dict[str, str]]:
        ck = self.ck
        if meta.get(key) is None:
            return {}
        values = ck.mapping(meta.get(key), ("metadata", key))
        if values is None:
            return None
        for k, v in values.items():
            if not isinstance(v, str):
                ck.error(("metadata", key, key_text(k)), f"{show(v)} must be a string, not {a_type(v)}")
        return {key_text(k): v for k, v in values.items() if isinstance(v, str)}

    # --- Service -------------------------------------------------------------------------
    def service(self, doc: Dict[str, Any], meta: Dict[str, Any],
                key: ObjectKey) -> Tuple[Optional[Service], Optional[str]]:
        ck = self.ck
        labels, annotations = self._metadata(meta, key, DNS1035_LABEL, 63,
                                             "service name (DNS-1035 label)")
        spec = ck.mapping(doc.get("spec"), ("spec",), required=True)
        if spec is None:
            return None, None
        svc_type = spec.get("type") or "ClusterIP"
        if svc_type not in SERVICE_TYPES:
            ck.error(("spec", "type"), f"{show(svc_type)} is not one of {', '.join(SERVICE_TYPES)}")
        cluster_ips = self._cluster_ips(spec)
        # The API server lets headless and ExternalName services have no ports.
        needs_ports = svc_type != "ExternalName" and cluster_ips[:1] != ("None",)
        ports = self._service_ports(spec.get("ports"), needs_ports)
        for name, message in parse_policy(annotations)[1]:
            ck.error(("metadata", "annotations", name), message)
        traffic = self._service_traffic(spec)
        # Only a LoadBalancer Service's ingress IPs are frontends; for other types the status is
        # noise that must not make a change (the API source relies on that).
        ingress, proxied = self._lb_ingress(doc)
        traffic["lb_ingress_ips"] = ingress if svc_type == "LoadBalancer" else ()
        traffic["lb_proxy_ips"] = proxied if svc_type == "LoadBalancer" else ()
        traffic.update(self._load_balancer_fields(spec, svc_type, traffic["external_traffic_policy"]))
        if ck.problems:
            return None, None
        return Service(key[0], key[1], sys.intern(svc_type), cluster_ips, ports,
                       tuple(sorted((labels or {}).items())), tuple(sorted(annotations.items())),
                       **traffic), None

    def _service_traffic(self, spec: Dict[str, Any]) -> Dict[str, Any]:
        """publishNotReadyAddresses, internalTrafficPolicy and session affinity, with the API's
        defaults (affinity timeout 10800 s, limits 1-86400)."""
        ck = self.ck
        out: Dict[str, Any] = {}
        publish = ck.boolean(spec.get("publishNotReadyAddresses"), ("spec", "publishNotReadyAddresses"))
        out["publish_not_ready"] = bool(publish)
        itp = spec.get("internalTrafficPolicy") or "Cluster"
        if itp not in ("Cluster", "Local"):
            ck.error(("spec", "internalTrafficPolicy"), f"{show(itp)} is not Cluster or Local")
        out["internal_traffic_policy"] = itp
        affinity = spec.get("sessionAffinity") or "None"
        if affinity not in ("None", "ClientIP"):
            ck.error(("spec", "sessionAffinity"), f"{show(affinity)} is not None or ClientIP")
        out["session_affinity"] = affinity
        path: FieldPath = ("spec", "sessionAffinityConfig", "clientIP", "timeoutSeconds")
        # Each level may be anything in a hostile manifest: `clientIP: x` must be an error, not a crash.
        config = ck.mapping(spec.get("sessionAffinityConfig"), path[:2]) or {}
        timeout = (ck.mapping(config.get("clientIP"), path[:3]) or {}).get("timeoutSeconds")
        if timeout is None:
            timeout = 10800
        elif isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 86400:
            ck.error(path, f"{show(timeout)} is not a number of seconds from 1 to 86400")
            timeout = 10800
        out["affinity_timeout"] = timeout
        etp = spec.get("externalTrafficPolicy") or "Cluster"
        if etp not in ("Cluster", "Local"):
            ck.error(("spec", "externalTrafficPolicy"), f"{show(etp)} is not Cluster or Local")
        out["external_traffic_policy"] = etp
        raw = ck.list(spec.get("externalIPs"), ("spec", "externalIPs"))
        checked = (ck.ip(ip, ("spec", "externalIPs", i)) for i, ip in enumerate(raw))
        out["external_ips"] = tuple(ip for ip in checked if ip is not None)
        return out

    def _load_balancer_fields(self, spec: Dict[str, Any], svc_type: str, etp: str) -> Dict[str, Any]:
        """loadBalancerSourceRanges and healthCheckNodePort, with the API server's rules: both
        only on a LoadBalancer (the health check port only with externalTrafficPolicy Local),
        ranges as CIDRs that may be space-padded or have host bits set (kube-proxy masks them)."""
        ck = self.ck
        out: Dict[str, Any] = {}
        path: FieldPath = ("spec", "loadBalancerSourceRanges")
        raw = ck.list(spec.get("loadBalancerSourceRanges"), path)
        if raw and svc_type != "LoadBalancer":
            ck.error(path, "may only be used when type is LoadBalancer")
        ranges = (ck.cidr(value, path + (i,)) for i, value in enumerate(raw))
        out["lb_source_ranges"] = tuple(dict.fromkeys(r for r in ranges if r is not None))
        hc_path: FieldPath = ("spec", "healthCheckNodePort")
        hc = spec.get("healthCheckNodePort")
        if hc is not None:
            hc = ck.port(hc, hc_path)
            if hc is not None and (svc_type != "LoadBalancer" or etp != "Local"):
                ck.error(hc_path, "may only be set when type is LoadBalancer and "
                                  "externalTrafficPolicy is Local")
        out["health_check_node_port"] = hc
        return out

    def _lb_ingress(self, doc: Dict[str, Any]) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
        """status.loadBalancer.ingress[].ip (hostname-only entries have no address for us), as
        (VIP addresses, ipMode Proxy addresses): traffic to the latter reaches the node through
        the load balancer itself (PROXY protocol, hairpin through the LB), so kube-proxy leaves
        them alone."""
        ck = self.ck
        status = ck.mapping(doc.get("status"), ("status",))
        lb = ck.mapping(status.get("loadBalancer"), ("status", "loadBalancer")) if status else None
        raw = ck.list(lb.get("ingress"), ("status", "loadBalancer", "ingress")) if lb else []
        out: List[str] = []
        proxied: List[str] = []
        for i, entry in enumerate(raw):
            path: FieldPath = ("status", "loadBalancer", "ingress", i)
            item = ck.mapping(entry, path)
            if item is None:
                continue
            mode = item.get("ipMode")
            if mode is not None and mode not in IP_MODES:
                ck.error(path + ("ipMode",), f"{show(mode)} is not one of {', '.join(IP_MODES)}")
                continue
            if item.get("ip") is None:
                if mode is not None:
                    ck.error(path + ("ipMode",), "set without an ip")
                continue
            ip = ck.ip(item["ip"], path + ("ip",))
            if ip is not None:
                (proxied if mode == "Proxy" else out).append(ip)
        return tuple(out), tuple(proxied)

    def _cluster_ips(self, spec: Dict[str, Any]) -> Tuple[str, ...]:
        ck = self.ck
        # "" is an unallocated clusterIP (a hand-written manifest); "None" asks for headless.
        single = spec.get("clusterIP")
        if single is None or single in ("None", ""):
            single = single or ""
        else:
            single = ck.ip(single, ("spec", "clusterIP"))
            if single is None:
                return ()
        raw = ck.list(spec.get("clusterIPs"), ("spec", "clusterIPs"))
        checked = [v if v == "None" else ck.ip(v, ("spec", "clusterIPs", i))
                   for i, v in enumerate(raw)]
        many = [v for v in checked if v]
        if len(many) != len(raw):
            return ()
        if len(many) > 2:
            ck.error(("spec", "clusterIPs"), f"{len(many)} addresses: at most one per IP family")
        elif len(many) == 2 and "None" in many:
            ck.error(("spec", "clusterIPs"), '"None" must be the only entry')
        elif len(many) == 2 and ipaddress.ip_address(many[0]).version == ipaddress.ip_address(many[1]).version:
            ck.error(("spec", "clusterIPs", 1), f"{show(many[1])} is the same IP family as clusterIPs[0]")
        if single and many and many[0] != single:
            ck.error(("spec", "clusterIPs", 0), f"{show(many[0])} disagrees with spec.clusterIP {show(single)}")
        ips = tuple(many) if many else ((single,) if single else ())
        # A cluster IP outside the Service range could be a pod's or a node's address: programming
        # it would hijack that address's traffic from this node's pods (CVE-2020-8554's pattern).
        for i, ip in enumerate(ips):
            if ip != "None" and not in_service_range(ip, self.service_cidrs):
                path = ("spec", "clusterIPs", i) if many else ("spec", "clusterIP")
                ck.error(path, f"{ip} is outside the Service range "
                               f"({', '.join(self.service_cidrs)}): see --service-cidr")
        return ips

    def _service_ports(self, value: Any, required: bool) -> Tuple[ServicePort, ...]:
        ck = self.ck
        raw = ck.list(value, ("spec", "ports"))
        if not raw:
            if required and isinstance(value, (list, type(None))):
                ck.error(("spec", "ports"), "missing or empty (a service with a cluster IP needs a port)")
            return ()
        out: List[ServicePort] = []
        names: Dict[str, int] = {}
        seen: Dict[Tuple[int, str], int] = {}
        for i, p in enumerate(raw):
            path: FieldPath = ("spec", "ports", i)
            item = ck.mapping(p, path, required=True)
            if item is None:
                continue
            before = ck.errors
            name = ck.string(item.get("name"), path + ("name",))
            if not name and len(raw) > 1:
                ck.error(path + ("name",), "required when a service has more than one port")
            elif name and name in names:
                ck.error(path + ("name",), f"duplicate port name {show(name)} (also spec.ports[{names[name]}])")
            elif name:
                ck.name(name, path + ("name",), DNS1123_LABEL, 63, "port name (DNS-1123 label)")
                names[name] = i
            port = ck.port(item.get("port"), path + ("port",))
            node_port = (ck.port(item["nodePort"], path + ("nodePort",))
                         if item.get("nodePort") is not None else None)
            protocol = ck.protocol(item.get("protocol"), path + ("protocol",))
            target = self._target_port(item.get("targetPort"), path + ("targetPort",), port)
            if port is not None and protocol is not None:
                if (port, protocol) in seen:
                    ck.error(path, f"duplicate port {port}/{protocol} (also spec.ports[{seen[port, protocol]}])")
                seen.setdefault((port, protocol), i)
            if ck.errors == before and port is not None and protocol is not None and target is not None:
                out.append(ServicePort(sys.intern(name), protocol, port, target, node_port))
        return tuple(out)

    def _target_port(self, value: Any, path: FieldPath, port: Optional[int]) -> Union[int, str, None]:
        ck = self.ck
        if value is None:
            return port  # the API server defaults targetPort to port
        if isinstance(value, str):
            # IANA_SVC_NAME: what a container port may be named, so what a targetPort may name.
            if (len(value) > 15 or not DNS1123_LABEL.fullmatch(value) or "--" in value
                    or not any("a" <= c <= "z" for c in value)):
                ck.error(path, f"{show(value)} is not a valid port name (IANA_SVC_NAME: 1-15 lowercase "
                               "letters, digits and '-', at least one letter, no '-' at either end or twice in a row)")
                return None
            return value
        return ck.port(value, path)

    # --- EndpointSlice -------------------------------------------------------------------
    def endpoint_slice(self, doc: Dict[str, Any], meta: Dict[str, Any],
                       key: ObjectKey) -> Tuple[Optional[EndpointSlice], Optional[str]]:
        ck = self.ck
        labels, _ = self._metadata(meta, key, DNS1123_SUBDOMAIN, 253,
                                   "endpointslice name (DNS-1123 subdomain)")
        service_name = ""
        label_path: FieldPath = ("metadata", "labels", SERVICE_NAME_LABEL)
        if labels is not None and SERVICE_NAME_LABEL in labels:
            service_name = labels[SERVICE_NAME_LABEL]
            ck.name(service_name, label_path, DNS1035_LABEL, 63, "service name (DNS-1035 label)")
        address_type = doc.get("addressType")
        if address_type is None:
            ck.error(("addressType",), "missing (IPv4, IPv6 or FQDN)")
        elif address_type not in ADDRESS_TYPES:
            ck.error(("addressType",), f"{show(address_type)} is not one of {', '.join(ADDRESS_TYPES)}")
            address_type = None
        ports = self._slice_ports(doc.get("ports"))
        endpoints = tuple(self._endpoint(e, ("endpoints", i), address_type)
                          for i, e in enumerate(ck.list(doc.get("endpoints"), ("endpoints",))))
        if ck.problems:
            return None, None
        if labels is not None and not service_name:
            # Multi-cluster tools (MCS, Submariner) write slices that belong to no Service of
            # this cluster: they are someone else's, not a mistake.
            return None, f"no {SERVICE_NAME_LABEL} label: belongs to no Service"
        return EndpointSlice(key[0], key[1], sys.intern(service_name), sys.intern(address_type),
                             ports, tuple(e for e in endpoints if e is not None)), None

    def _slice_ports(self, value: Any) -> Tuple[EndpointPort, ...]:
        ck = self.ck
        out: List[EndpointPort] = []
        names: Dict[str, int] = {}
        for j, p in enumerate(ck.list(value, ("ports",))):
            path: FieldPath = ("ports", j)
            item = ck.mapping(p, path, required=True)
            if item is None:
                continue
            name = ck.string(item.get("name"), path + ("name",))
            if name in names:
                ck.error(path + ("name",), f"duplicate port name {show(name)} (also ports[{names[name]}])")
            elif name:
                ck.name(name, path + ("name",), DNS1123_LABEL, 63, "port name (DNS-1123 label)")
            names.setdefault(name, j)
            port = ck.port(item.get("port"), path + ("port",))
            if item.get("nodePort") is not None:
                ck.port(item["nodePort"], path + ("nodePort",))
            protocol = ck.protocol(item.get("protocol"), path + ("protocol",))
            if port is not None and protocol is not None:
                out.append(EndpointPort(sys.intern(name), port, protocol))
        return tuple(out)

    def _endpoint(self, value: Any, path: FieldPath, address_type: Optional[str]) -> Optional[Endpoint]:
        ck = self.ck
        item = ck.mapping(value, path, required=True)
        if item is None:
            return None
        raw = ck.list(item.get("addresses"), path + ("addresses",))
        if not raw:
            if isinstance(item.get("addresses"), (list, type(None))):
                ck.error(path + ("addresses",), "missing or empty (an endpoint needs an address)")
            return None
        addresses: List[str] = []
        for k, a in enumerate(raw):
            apath = path + ("addresses", k)
            if address_type == "FQDN":
                if isinstance(a, str) and len(a) <= 253 and DNS1123_SUBDOMAIN.fullmatch(a):
                    addresses.append(a)
                else:
                    ck.error(apath, f"{show(a)} is not a valid FQDN")
            elif (ip := ck.ip(a, apath, {"IPv4": 4, "IPv6": 6}.get(address_type or ""))) is not None:
                # Both families are programmed: an IPv6 backend is judged as an IPv4 one is.
                reason = forbidden_backend(ip, self.service_cidrs)
                if reason:
                    ck.error(apath, backend_message(reason))
                else:
                    addresses.append(ip)
        cond = ck.mapping(item.get("conditions"), path + ("conditions",)) or {}
        ready = ck.boolean(cond.get("ready"), path + ("conditions", "ready"))
        serving = ck.boolean(cond.get("serving"), path + ("conditions", "serving"))
        terminating = ck.boolean(cond.get("terminating"), path + ("conditions", "terminating"))
        node_name = ck.string(item.get("nodeName"), path + ("nodeName",)) or None
        ref = ck.mapping(item.get("targetRef"), path + ("targetRef",)) or {}
        ref_kind = ck.string(ref.get("kind"), path + ("targetRef", "kind"))
        ref_name = ck.string(ref.get("name"), path + ("targetRef", "name"))
        zone = ck.string(item.get("zone"), path + ("zone",)) or None
        hints = ck.mapping(item.get("hints"), path + ("hints",)) or {}
        for_zones = self._hint_names(hints.get("forZones"), path + ("hints", "forZones"))
        for_nodes = self._hint_names(hints.get("forNodes"), path + ("hints", "forNodes"))
        ready = ready is not False  # discovery/v1: nil ready means ready
        return Endpoint(
            addresses=tuple(addresses),
            ready=ready,
            serving=ready if serving is None else serving,  # nil serving defers to ready
            terminating=terminating is True,  # nil terminating means not terminating
            node_name=sys.intern(node_name) if node_name else None,
            target=f"{ref_kind}/{ref_name}" if ref_kind and ref_name else None,
            zone=sys.intern(zone) if zone else None,
            hint_zones=for_zones,
            hint_nodes=for_nodes,
        )

    def _hint_names(self, value: Any, path: FieldPath) -> Tuple[str, ...]:
        """hints.forZones / hints.forNodes: a list of {name: ...}; the names, interned."""
        ck = self.ck
        names: List[str] = []
        for k, h in enumerate(ck.list(value, path)):
            item = ck.mapping(h, path + (k,), required=True)
            if item is None:
                continue
            name = ck.string(item.get("name"), path + (k, "name"))
            if not name:
                ck.error(path + (k, "name"), "missing or empty")
            else:
                names.append(sys.intern(name))
        return tuple(names)
