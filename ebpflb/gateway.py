"""Gateway API at layer 4 (pure core): GatewayClass, Gateway, TCPRoute, UDPRoute and ReferenceGrant
in; status conditions and weighted Gateway frontends out.

sources -> **convert** -> store -> model -> plan -> apply, beside the Service path:
`convert_gateway_document` reads one object as ebpflb.convert reads a Service (the API server's
field rules, every problem as a field path, a bad object refused alone); `gateway_model` judges
all of them together with the Services and EndpointSlices of the store and gives the conditions
the spec asks for (Gateway, listener, route parent) and, for every listener of every accepted
Gateway on every one of its addresses, a `GatewayFrontend`: its backends are the ready endpoints
of the backendRef Services, with integer weights for weighted Maglev (`split_weights`).
`GatewayFrontend.to_frontend()` gives them in the model's own shape (Frontend, Backends).

Everything is a function of the objects, so status is the same for files (`ebpflb gateway list`)
and for the API (written back by the controller). Nothing here touches the kernel or a cluster.

Spec: gateway-api apis/v1 (gateway_types.go, gatewayclass_types.go, tcproute_types.go,
udproute_types.go, referencegrant_types.go, shared_types.go); versions as its CRDs serve them.
"""
from __future__ import annotations

import datetime
import math
import re
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from typing import (Any, Callable, Dict, FrozenSet, Hashable, Iterable, Iterator, List, Mapping,
                    Optional, Protocol, Sequence, Tuple, TypeVar, Union)

from .convert import CLUSTER_SCOPED_KINDS, Converted, ObjectKey, convert_document, read_header
from .errors import FieldPath, ManifestError, format_path
from .fields import DNS1123_LABEL, DNS1123_SUBDOMAIN, FieldChecker, a_type, ip_version, key_text, show
from .model import (ADDRESS_TYPES, Backend, EndpointSlice, Frontend, Service, ServicePort,
                    _backend_order, _ported_endpoints, _usable_backends)
from .policy import LbPolicy

GATEWAY_GROUP = "gateway.networking.k8s.io"
# GatewayClasses naming this controller are ebpflb's; Gateways of any other class are not looked at.
CONTROLLER_NAME = "ebpflb.io/gateway-controller"

# How a Gateway frontend names its owner in the maps and the CLI ("Gateway demo/gw:tcp").
GATEWAY_DISPLAY = "Gateway"
GATEWAY_CLASS = "GatewayClass"
GATEWAY = "Gateway"
TCP_ROUTE = "TCPRoute"
UDP_ROUTE = "UDPRoute"
REFERENCE_GRANT = "ReferenceGrant"
NAMESPACE = "Namespace"  # read for its labels only: allowedRoutes selects namespaces by label
# The API versions each kind is served in (the CRDs of gateway-api v1.6; Namespace is core v1).
API_VERSIONS: Dict[str, Tuple[str, ...]] = {
    GATEWAY_CLASS: (f"{GATEWAY_GROUP}/v1", f"{GATEWAY_GROUP}/v1beta1"),
    GATEWAY: (f"{GATEWAY_GROUP}/v1", f"{GATEWAY_GROUP}/v1beta1"),
    TCP_ROUTE: (f"{GATEWAY_GROUP}/v1", f"{GATEWAY_GROUP}/v1alpha2"),
    UDP_ROUTE: (f"{GATEWAY_GROUP}/v1", f"{GATEWAY_GROUP}/v1alpha2"),
    REFERENCE_GRANT: (f"{GATEWAY_GROUP}/v1", f"{GATEWAY_GROUP}/v1beta1"),
    NAMESPACE: ("v1",),
}
ROUTE_KINDS = (TCP_ROUTE, UDP_ROUTE)
ROUTE_PROTOCOL = {TCP_ROUTE: "TCP", UDP_ROUTE: "UDP"}
LISTENER_ROUTE_KIND = {"TCP": TCP_ROUTE, "UDP": UDP_ROUTE}  # the one route kind each protocol takes
# v1 routes have one rule (rules without matches cannot be told apart); v1alpha2 allowed 16.
MAX_RULES = {f"{GATEWAY_GROUP}/v1": 1, f"{GATEWAY_GROUP}/v1alpha2": 16}
MAX_BACKEND_WEIGHT = 1_000_000  # BackendRef.weight maximum
# Cap of a per-endpoint integer weight (see split_weights): finer than any Maglev table.
MAX_ENDPOINT_WEIGHT = 65535
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # every namespace has it (API server)

# Condition types and reasons, as the spec spells them (shared_types.go, gateway_types.go,
# gatewayclass_types.go).
ACCEPTED = "Accepted"
PROGRAMMED = "Programmed"
RESOLVED_REFS = "ResolvedRefs"
PARTIALLY_INVALID = "PartiallyInvalid"
# GatewayClass and Gateway
REASON_ACCEPTED = "Accepted"
REASON_INVALID_PARAMETERS = "InvalidParameters"
REASON_UNSUPPORTED_ADDRESS = "UnsupportedAddress"
REASON_LISTENERS_NOT_VALID = "ListenersNotValid"
REASON_PROGRAMMED = "Programmed"
REASON_INVALID = "Invalid"
REASON_ADDRESS_NOT_ASSIGNED = "AddressNotAssigned"
REASON_ADDRESS_NOT_USABLE = "AddressNotUsable"
REASON_PENDING = "Pending"
# Listener
REASON_UNSUPPORTED_PROTOCOL = "UnsupportedProtocol"
REASON_PORT_UNAVAILABLE = "PortUnavailable"
REASON_RESOLVED_REFS = "ResolvedRefs"
REASON_INVALID_ROUTE_KINDS = "InvalidRouteKinds"
# Route, per parent
REASON_NOT_ALLOWED_BY_LISTENERS = "NotAllowedByListeners"
REASON_NO_MATCHING_PARENT = "NoMatchingParent"
REASON_UNSUPPORTED_VALUE = "UnsupportedValue"
REASON_REF_NOT_PERMITTED = "RefNotPermitted"
REASON_BACKEND_NOT_FOUND = "BackendNotFound"
REASON_INVALID_KIND = "InvalidKind"

# Field patterns of the CRDs (Kind, GatewayController, ProtocolType, AddressType, label keys).
_KIND = re.compile(r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?")
_DOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_CONTROLLER = re.compile(_DOMAIN + r"/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+")
_PROTOCOL = re.compile(r"[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?|" + _DOMAIN + r"/[A-Za-z0-9]+")
_ADDRESS_TYPE = re.compile(r"Hostname|IPAddress|NamedAddress|" + _DOMAIN
                           + r"/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
FROM_NAMESPACES = ("All", "Selector", "Same")
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

RouteKey = Tuple[str, str, str]  # (kind, namespace, name)
FrontendKey = Tuple[str, int, str]  # (address, port, protocol)


# --- objects -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GatewayClass:
    name: str
    controller_name: str
    parameters_ref: Optional[str] = None  # "group/Kind/name" when set: ebpflb takes no parameters
    generation: Optional[int] = None  # metadata.generation: status conditions observe it


@dataclass(frozen=True, slots=True)
class SelectorRequirement:
    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist
    values: Tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """metav1.LabelSelector: every matchLabels pair and every expression must hold; an empty
    selector selects everything."""

    match_labels: Tuple[Tuple[str, str], ...] = ()
    match_expressions: Tuple[SelectorRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and not (present and labels[req.key] in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True, slots=True)
class RouteGroupKind:
    group: str
    kind: str

    def __str__(self) -> str:
        return f"{self.group}/{self.kind}" if self.group else self.kind


@dataclass(frozen=True, slots=True)
class AllowedRoutes:
    namespaces_from: str = "Same"  # All | Selector | Same
    selector: Optional[LabelSelector] = None  # with Selector
    kinds: Tuple[RouteGroupKind, ...] = ()  # () = the kinds the protocol takes


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    port: int
    protocol: str  # TCP and UDP are served; anything else is refused with UnsupportedProtocol
    allowed_routes: AllowedRoutes = AllowedRoutes()


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    type: str  # IPAddress is served; anything else is refused with UnsupportedAddress
    value: str  # "" asks the implementation to assign one (ebpflb does not: AddressNotAssigned)


@dataclass(frozen=True, slots=True)
class Gateway:
    namespace: str
    name: str
    gateway_class_name: str
    listeners: Tuple[Listener, ...]
    addresses: Tuple[GatewayAddress, ...] = ()
    parameters_ref: Optional[str] = None  # spec.infrastructure.parametersRef, "group/Kind/name"
    created: Optional[str] = None  # metadata.creationTimestamp, RFC 3339 in UTC: the oldest wins
    generation: Optional[int] = None  # metadata.generation: status conditions observe it

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ParentRef:
    name: str
    group: str = GATEWAY_GROUP
    kind: str = GATEWAY
    namespace: Optional[str] = None  # None: the route's
    section_name: Optional[str] = None  # a listener name
    port: Optional[int] = None  # a listener port


@dataclass(frozen=True, slots=True)
class BackendRef:
    name: str
    group: str = ""
    kind: str = "Service"
    namespace: Optional[str] = None  # None: the route's
    port: Optional[int] = None  # the Service port (not the target port)
    weight: int = 1  # 0..1,000,000; 0 drains


@dataclass(frozen=True, slots=True)
class RouteRule:
    backend_refs: Tuple[BackendRef, ...]
    name: Optional[str] = None


@dataclass(frozen=True, slots=True)
class Route:
    """A TCPRoute or a UDPRoute: the two differ only by the protocol of the listeners they take."""

    kind: str  # TCPRoute | UDPRoute
    namespace: str
    name: str
    parent_refs: Tuple[ParentRef, ...]
    rules: Tuple[RouteRule, ...]
    created: Optional[str] = None
    generation: Optional[int] = None  # metadata.generation: status conditions observe it

    @property
    def key(self) -> RouteKey:
        return (self.kind, self.namespace, self.name)

    @property
    def protocol(self) -> str:
        return ROUTE_PROTOCOL[self.kind]

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class GrantFrom:
    group: str
    kind: str
    namespace: str


@dataclass(frozen=True, slots=True)
class GrantTo:
    group: str
    kind: str
    name: Optional[str] = None  # None: every object of that group and kind in the namespace


@dataclass(frozen=True, slots=True)
class ReferenceGrant:
    namespace: str
    name: str
    from_: Tuple[GrantFrom, ...]
    to: Tuple[GrantTo, ...]


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: Tuple[Tuple[str, str], ...] = ()


GatewayObject = Union[GatewayClass, Gateway, Route, ReferenceGrant, Namespace]


# --- conversion ----------------------------------------------------------------------------
def convert_gateway_api_object(kind: str, obj: Any, api_version: Optional[str] = None) -> Converted:
    """An object as the API server lists or watches it (items carry neither kind nor
    apiVersion): `api_version` is the one the client asked for, by default the first served."""
    return convert_gateway_document(obj, kind, kind, api_version or API_VERSIONS[kind][0])


def convert_gateway_document(doc: Any, where: str, default_kind: Optional[str] = None,
                             default_api: Optional[str] = None) -> Converted:
    """One parsed object -> its verdict, as ebpflb.convert.convert_document gives it for a
    Service: `Converted.obj` is one of the objects above, problems are (field path, message)
    relative to the object, and `label` names it ("Gateway demo/gw") for ManifestError."""
    ck = FieldChecker(where)
    header = read_header(ck, doc, where, default_kind, default_api)
    if isinstance(header, Converted):
        return header
    kind, api, meta, key = header
    served = API_VERSIONS.get(kind)
    if served is None:
        return Converted(kind, key, ck.label, ignored="kind not used by ebpflb")
    if api not in served:
        group = api.rpartition("/")[0] if isinstance(api, str) else None
        if api is None or group == served[0].rpartition("/")[0]:
            # Another version of the group is a mistake; another group is someone else's kind.
            ck.error(("apiVersion",), "missing" if api is None else
                     f"{show(api)} is not supported (use {' or '.join(served)})")
            return Converted(kind, key, ck.label, problems=tuple(ck.problems), claims=True)
        return Converted(kind, key, ck.label, ignored=f"apiVersion {api} not used by ebpflb")
    obj = _GatewayParser(ck).parse(kind, api, doc, meta, key)
    if ck.problems:
        return Converted(kind, key, ck.label, problems=tuple(ck.problems), claims=True)
    return Converted(kind, key, ck.label, obj, claims=True)  # type: ignore[arg-type]


def convert_any_document(doc: Any, where: str, default_kind: Optional[str] = None,
                         default_api: Optional[str] = None,
                         service_cidrs: Optional[Sequence[str]] = None) -> Converted:
    """Any object of a manifest: a Gateway API kind (or a Namespace) here, anything else by
    ebpflb.convert (Services, EndpointSlices, and the verdict on kinds ebpflb does not use)."""
    kind = doc.get("kind", default_kind) if isinstance(doc, dict) else None
    if isinstance(kind, str) and kind in API_VERSIONS:
        return convert_gateway_document(doc, where, default_kind, default_api)
    if service_cidrs is None:
        return convert_document(doc, where, default_kind, default_api)
    return convert_document(doc, where, default_kind, default_api, service_cidrs)


def problems_of(converted: Converted, source: str) -> List[ManifestError]:
    """A refused object's problems as errors naming the object and the field (no line: the
    manifest reader adds lines, as it does for Services)."""
    return [ManifestError(source, converted.label, format_path(path) or None, message)
            for path, message in converted.problems]


class _GatewayParser:
    """The field rules of the Gateway API kinds ebpflb reads, as the CRDs check them (OpenAPI
    schema and CEL rules); problems go to the checker."""

    def __init__(self, ck: FieldChecker) -> None:
        self.ck = ck

    def parse(self, kind: str, api: str, doc: Dict[str, Any], meta: Dict[str, Any],
              key: ObjectKey) -> Optional[GatewayObject]:
        ck = self.ck
        namespace, name = key
        if kind == NAMESPACE:
            ck.name(name, ("metadata", "name"), DNS1123_LABEL, 63, "namespace name (DNS-1123 label)")
            return Namespace(name, tuple(sorted(self._labels(meta.get("labels"),
                                                             ("metadata", "labels")).items())))
        ck.name(name, ("metadata", "name"), DNS1123_SUBDOMAIN, 253, "name (DNS-1123 subdomain)")
        if kind not in CLUSTER_SCOPED_KINDS:
            ck.name(namespace, ("metadata", "namespace"), DNS1123_LABEL, 63,
                    "namespace (DNS-1123 label)")
        created = self._timestamp(meta.get("creationTimestamp"), ("metadata", "creationTimestamp"))
        generation = self._generation(meta.get("generation"), ("metadata", "generation"))
        spec = ck.mapping(doc.get("spec"), ("spec",), required=True)
        if spec is None:
            return None
        if kind == GATEWAY_CLASS:
            return self.gateway_class(spec, name, generation)
        if kind == GATEWAY:
            return self.gateway(spec, key, created, generation)
        if kind in ROUTE_KINDS:
            return self.route(kind, api, spec, key, created, generation)
        return self.reference_grant(spec, key)

    # --- field types -------------------------------------------------------------------
    def _string(self, value: Any, path: FieldPath, required: bool = False,
                rule: Optional["re.Pattern[str]"] = None, max_len: int = 253, what: str = "",
                empty_ok: bool = False) -> Optional[str]:
        """A string field; None when absent (or wrong: the problem is recorded)."""
        ck = self.ck
        if value is None:
            if required:
                ck.error(path, "missing")
            return None
        if not isinstance(value, str):
            ck.error(path, f"{show(value)} must be a string, not {a_type(value)}")
            return None
        if value == "" and empty_ok:
            return value
        if value == "":
            ck.error(path, "must not be empty")
            return None
        if len(value) > max_len or (rule is not None and not rule.fullmatch(value)):
            ck.error(path, f"{show(value)} is not a valid {what}" if what
                     else f"{show(value)} is longer than {max_len} characters")
            return None
        return value

    def _group(self, value: Any, path: FieldPath, default: str) -> Optional[str]:
        if value is None:
            return default
        return self._string(value, path, rule=DNS1123_SUBDOMAIN,
                            what='group ("" or a DNS-1123 subdomain)', empty_ok=True)

    def _kind(self, value: Any, path: FieldPath, default: Optional[str] = None) -> Optional[str]:
        if value is None and default is not None:
            return default
        return self._string(value, path, required=True, rule=_KIND, max_len=63, what="kind")

    def _namespace(self, value: Any, path: FieldPath, required: bool = False) -> Optional[str]:
        return self._string(value, path, required=required, rule=DNS1123_LABEL, max_len=63,
                            what="namespace (DNS-1123 label)")

    def _section_name(self, value: Any, path: FieldPath, required: bool = False) -> Optional[str]:
        return self._string(value, path, required=required, rule=DNS1123_SUBDOMAIN,
                            what="section name (DNS-1123 subdomain)")

    def _items(self, value: Any, path: FieldPath, least: int, most: int,
               required: bool = False) -> List[Any]:
        ck = self.ck
        if value is None and required:
            ck.error(path, "missing")
            return []
        items = ck.list(value, path)
        if isinstance(value, list) and not least <= len(items) <= most:
            what = f"at least {least}" if len(items) < least else f"at most {most}"
            ck.error(path, f"{len(items)} entries: {what} allowed")
        return items[:most]

    def _generation(self, value: Any, path: FieldPath) -> Optional[int]:
        """metadata.generation, as the API server sets it (files may copy it); absent: None."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.ck.error(path, f"{show(value)} is not a generation (an integer, 0 or more)")
            return None
        return value

    def _timestamp(self, value: Any, path: FieldPath) -> Optional[str]:
        """RFC 3339 as the API server writes it, in UTC ("2024-05-01T10:00:00Z"), so that text
        order is time order; YAML reads an unquoted one as a datetime."""
        if value is None:
            return None
        if isinstance(value, str) and _RFC3339.fullmatch(value):
            try:
                value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                pass
        if isinstance(value, datetime.datetime):
            if value.tzinfo is not None:
                value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
            return value.strftime("%Y-%m-%dT%H:%M:%SZ")
        self.ck.error(path, f"{show(value)} is not an RFC 3339 time (e.g. 2024-05-01T10:00:00Z)")
        return None

    def _labels(self, value: Any, path: FieldPath) -> Dict[str, str]:
        ck = self.ck
        labels = ck.mapping(value, path) or {}
        out: Dict[str, str] = {}
        for k, v in labels.items():
            k = key_text(k)
            if not _label_key_ok(k):
                ck.error(path + (k,), f"{show(k)} is not a valid label key")
            elif not isinstance(v, str) or (v and (len(v) > 63 or not _LABEL_NAME.fullmatch(v))):
                ck.error(path + (k,), f"{show(v)} is not a valid label value")
            else:
                out[k] = v
        return out

    def _selector(self, value: Any, path: FieldPath) -> Optional[LabelSelector]:
        ck = self.ck
        sel = ck.mapping(value, path)
        if sel is None:
            return None
        labels = self._labels(sel.get("matchLabels"), path + ("matchLabels",))
        exprs: List[SelectorRequirement] = []
        for j, raw in enumerate(ck.list(sel.get("matchExpressions"), path + ("matchExpressions",))):
            epath = path + ("matchExpressions", j)
            item = ck.mapping(raw, epath, required=True)
            if item is None:
                continue
            key = self._string(item.get("key"), epath + ("key",), required=True)
            if key is not None and not _label_key_ok(key):
                ck.error(epath + ("key",), f"{show(key)} is not a valid label key")
                key = None
            op = item.get("operator")
            if op not in SELECTOR_OPERATORS:
                ck.error(epath + ("operator",), "missing" if op is None else
                         f"{show(op)} is not one of {', '.join(SELECTOR_OPERATORS)}")
                op = None
            values = ck.list(item.get("values"), epath + ("values",))
            for k, v in enumerate(values):
                if not isinstance(v, str):
                    ck.error(epath + ("values", k), f"{show(v)} must be a string, not {a_type(v)}")
            if op in ("In", "NotIn") and not values:
                ck.error(epath + ("values",), f"must not be empty with operator {op}")
            elif op in ("Exists", "DoesNotExist") and values:
                ck.error(epath + ("values",), f"must be empty with operator {op}")
            if key is not None and op is not None:
                exprs.append(SelectorRequirement(key, op, tuple(v for v in values if isinstance(v, str))))
        return LabelSelector(tuple(sorted(labels.items())), tuple(exprs))

    def _parameters_ref(self, value: Any, path: FieldPath) -> Optional[str]:
        ref = self.ck.mapping(value, path)
        if ref is None:
            return None
        group = self._group(ref.get("group"), path + ("group",), "")
        if ref.get("group") is None:
            self.ck.error(path + ("group",), "missing")
        kind = self._kind(ref.get("kind"), path + ("kind",))
        name = self._string(ref.get("name"), path + ("name",), required=True)
        if ref.get("namespace") is not None:
            self._namespace(ref.get("namespace"), path + ("namespace",))
        return f"{group}/{kind}/{name}"

    # --- GatewayClass ------------------------------------------------------------------
    def gateway_class(self, spec: Dict[str, Any], name: str,
                      generation: Optional[int] = None) -> GatewayClass:
        controller = self._string(spec.get("controllerName"), ("spec", "controllerName"),
                                  required=True, rule=_CONTROLLER,
                                  what="controller name (DOMAIN/PATH, e.g. example.net/gateway-controller)")
        params = self._parameters_ref(spec.get("parametersRef"), ("spec", "parametersRef"))
        self._string(spec.get("description"), ("spec", "description"), max_len=64, empty_ok=True)
        return GatewayClass(name, controller or "", params, generation)

    # --- Gateway -----------------------------------------------------------------------
    def gateway(self, spec: Dict[str, Any], key: ObjectKey, created: Optional[str],
                generation: Optional[int] = None) -> Gateway:
        ck = self.ck
        class_name = self._string(spec.get("gatewayClassName"), ("spec", "gatewayClassName"),
                                  required=True)
        listeners: List[Listener] = []
        names: Dict[str, int] = {}
        seen: Dict[Tuple[int, str, str], int] = {}
        raw = self._items(spec.get("listeners"), ("spec", "listeners"), 1, 64, required=True)
        for i, item in enumerate(raw):
            path: FieldPath = ("spec", "listeners", i)
            entry = ck.mapping(item, path, required=True)
            if entry is None:
                continue
            before = ck.errors
            name = self._section_name(entry.get("name"), path + ("name",), required=True)
            if name is not None and name in names:
                ck.error(path + ("name",), f"duplicate listener name {show(name)} "
                                           f"(also spec.listeners[{names[name]}])")
            elif name is not None:
                names[name] = i
            port = ck.port(entry.get("port"), path + ("port",))
            protocol = self._string(entry.get("protocol"), path + ("protocol",), required=True,
                                    rule=_PROTOCOL, max_len=255, what="protocol")
            hostname = entry.get("hostname")
            if protocol in ("TCP", "UDP") and hostname not in (None, ""):
                ck.error(path + ("hostname",), f"must not be set for protocol {protocol}")
            if protocol in ("HTTP", "TCP", "UDP") and entry.get("tls") is not None:
                ck.error(path + ("tls",), f"must not be set for protocol {protocol}")
            if port is not None and protocol is not None:
                distinct = (port, protocol, hostname if isinstance(hostname, str) else "")
                if distinct in seen:
                    ck.error(path, f"duplicate port {port}/{protocol}"
                                   + (f" and hostname {show(hostname)}" if distinct[2] else "")
                                   + f" (also spec.listeners[{seen[distinct]}])")
                seen.setdefault(distinct, i)
            allowed = self._allowed_routes(entry.get("allowedRoutes"), path + ("allowedRoutes",))
            if ck.errors == before and name and port and protocol and allowed is not None:
                listeners.append(Listener(sys.intern(name), port, sys.intern(protocol), allowed))
        addresses = self._addresses(spec.get("addresses"))
        infra = ck.mapping(spec.get("infrastructure"), ("spec", "infrastructure")) or {}
        params = self._parameters_ref(infra.get("parametersRef"),
                                      ("spec", "infrastructure", "parametersRef"))
        return Gateway(key[0], key[1], class_name or "", tuple(listeners), addresses, params, created,
                       generation)

    def _allowed_routes(self, value: Any, path: FieldPath) -> Optional[AllowedRoutes]:
        ck = self.ck
        before = ck.errors
        allowed = ck.mapping(value, path) or {}
        ns = ck.mapping(allowed.get("namespaces"), path + ("namespaces",)) or {}
        frm = ns.get("from")
        if frm is None:
            frm = "Same"
        elif frm not in FROM_NAMESPACES:
            ck.error(path + ("namespaces", "from"), f"{show(frm)} is not one of {', '.join(FROM_NAMESPACES)}")
        selector = self._selector(ns.get("selector"), path + ("namespaces", "selector"))
        if frm == "Selector" and selector is None and ns.get("selector") is None:
            ck.error(path + ("namespaces", "selector"), "required when from is Selector")
        kinds: List[RouteGroupKind] = []
        for j, item in enumerate(self._items(allowed.get("kinds"), path + ("kinds",), 0, 8)):
            kpath = path + ("kinds", j)
            entry = ck.mapping(item, kpath, required=True)
            if entry is None:
                continue
            group = self._group(entry.get("group"), kpath + ("group",), GATEWAY_GROUP)
            kind = self._kind(entry.get("kind"), kpath + ("kind",))
            if group is not None and kind is not None:
                kinds.append(RouteGroupKind(group, kind))
        if ck.errors != before:
            return None
        return AllowedRoutes(frm, selector if frm == "Selector" else None, tuple(kinds))

    def _addresses(self, value: Any) -> Tuple[GatewayAddress, ...]:
        ck = self.ck
        out: List[GatewayAddress] = []
        seen: Dict[Tuple[str, str], int] = {}
        for i, item in enumerate(self._items(value, ("spec", "addresses"), 0, 16)):
            path: FieldPath = ("spec", "addresses", i)
            entry = ck.mapping(item, path, required=True)
            if entry is None:
                continue
            kind = entry.get("type")
            kind = "IPAddress" if kind is None else self._string(
                kind, path + ("type",), rule=_ADDRESS_TYPE,
                what="address type (IPAddress, Hostname or DOMAIN/PATH)")
            raw = entry.get("value")
            text = self._string(raw, path + ("value",), empty_ok=True) if raw is not None else ""
            if kind is None or text is None:
                continue
            if kind == "IPAddress" and text:
                # The CRD's schema checks the format (ipv4 or ipv6) of an IPAddress value.
                text = ck.ip(text, path + ("value",))
                if text is None:
                    continue
            if text and (kind, text) in seen:
                ck.error(path + ("value",), f"duplicate {kind} {show(text)} "
                                            f"(also spec.addresses[{seen[kind, text]}])")
                continue
            seen.setdefault((kind, text), i)
            out.append(GatewayAddress(sys.intern(kind), text))
        return tuple(out)

    # --- TCPRoute, UDPRoute ------------------------------------------------------------
    def route(self, kind: str, api: str, spec: Dict[str, Any], key: ObjectKey,
              created: Optional[str], generation: Optional[int] = None) -> Route:
        ck = self.ck
        parents = self._parent_refs(spec.get("parentRefs"))
        rules: List[RouteRule] = []
        names: Dict[str, int] = {}
        for i, item in enumerate(self._items(spec.get("rules"), ("spec", "rules"), 1,
                                             MAX_RULES[api], required=True)):
            path: FieldPath = ("spec", "rules", i)
            entry = ck.mapping(item, path, required=True)
            if entry is None:
                continue
            name = self._section_name(entry.get("name"), path + ("name",))
            if name is not None and name in names:
                ck.error(path + ("name",), f"duplicate rule name {show(name)} "
                                           f"(also spec.rules[{names[name]}])")
            elif name is not None:
                names[name] = i
            refs = [self._backend_ref(r, path + ("backendRefs", j)) for j, r in enumerate(
                self._items(entry.get("backendRefs"), path + ("backendRefs",), 1, 16, required=True))]
            rules.append(RouteRule(tuple(r for r in refs if r is not None), name))
        return Route(kind, key[0], key[1], parents, tuple(rules), created, generation)

    def _parent_refs(self, value: Any) -> Tuple[ParentRef, ...]:
        ck = self.ck
        out: List[Tuple[int, ParentRef]] = []
        for i, item in enumerate(self._items(value, ("spec", "parentRefs"), 0, 32)):
            path: FieldPath = ("spec", "parentRefs", i)
            entry = ck.mapping(item, path, required=True)
            if entry is None:
                continue
            before = ck.errors
            group = self._group(entry.get("group"), path + ("group",), GATEWAY_GROUP)
            kind = self._kind(entry.get("kind"), path + ("kind",), GATEWAY)
            namespace = self._namespace(entry.get("namespace"), path + ("namespace",))
            name = self._string(entry.get("name"), path + ("name",), required=True)
            section = self._section_name(entry.get("sectionName"), path + ("sectionName",))
            port = ck.port(entry["port"], path + ("port",)) if entry.get("port") is not None else None
            if ck.errors == before:
                out.append((i, ParentRef(name or "", group or "", kind or GATEWAY, namespace,
                                         section, port)))
        # The CRD's rules (experimental channel, the looser of the two): references to one parent
        # set sectionName and port alike, and no two select the same part of it.
        by_parent: Dict[Tuple[str, str, str, str], List[Tuple[int, ParentRef]]] = {}
        for i, ref in out:
            by_parent.setdefault((ref.group, ref.kind, ref.namespace or "", ref.name), []).append((i, ref))
        for refs in by_parent.values():
            if len(refs) < 2:
                continue
            shapes = {(r.section_name is not None, r.port is not None) for _, r in refs}
            if len(shapes) > 1:
                ck.error(("spec", "parentRefs", refs[1][0]), "sectionName or port must be specified "
                         "alike when parentRefs includes 2 or more references to the same parent")
                continue
            seen: Dict[Tuple[Optional[str], Optional[int]], int] = {}
            for i, r in refs:
                part = (r.section_name, r.port)
                if part in seen:
                    ck.error(("spec", "parentRefs", i), "sectionName or port must be unique when "
                             "parentRefs includes 2 or more references to the same parent "
                             f"(also spec.parentRefs[{seen[part]}])")
                seen.setdefault(part, i)
        return tuple(ref for _, ref in out)

    def _backend_ref(self, value: Any, path: FieldPath) -> Optional[BackendRef]:
        ck = self.ck
        entry = ck.mapping(value, path, required=True)
        if entry is None:
            return None
        before = ck.errors
        group = self._group(entry.get("group"), path + ("group",), "")
        kind = self._kind(entry.get("kind"), path + ("kind",), "Service")
        name = self._string(entry.get("name"), path + ("name",), required=True)
        namespace = self._namespace(entry.get("namespace"), path + ("namespace",))
        port = ck.port(entry["port"], path + ("port",)) if entry.get("port") is not None else None
        if port is None and entry.get("port") is None and group == "" and kind == "Service":
            ck.error(path + ("port",), "missing (a Service reference needs its port)")
        weight = entry.get("weight")
        if weight is None:
            weight = 1
        elif isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_BACKEND_WEIGHT:
            ck.error(path + ("weight",), f"{show(weight)} is not a weight (an integer from 0 to "
                                         f"{MAX_BACKEND_WEIGHT:,})")
        if ck.errors != before:
            return None
        return BackendRef(name or "", group or "", kind or "Service", namespace, port, weight)

    # --- ReferenceGrant ----------------------------------------------------------------
    def reference_grant(self, spec: Dict[str, Any], key: ObjectKey) -> ReferenceGrant:
        froms: List[GrantFrom] = []
        for path, entry, group, kind in self._grant_entries(spec, "from"):
            namespace = self._namespace(entry.get("namespace"), path + ("namespace",), required=True)
            if group is not None and kind and namespace:
                froms.append(GrantFrom(group, kind, namespace))
        tos: List[GrantTo] = []
        for path, entry, group, kind in self._grant_entries(spec, "to"):
            name = self._string(entry.get("name"), path + ("name",))
            if group is not None and kind:
                tos.append(GrantTo(group, kind, name))
        return ReferenceGrant(key[0], key[1], tuple(froms), tuple(tos))

    def _grant_entries(self, spec: Dict[str, Any], side: str
                       ) -> Iterator[Tuple[FieldPath, Dict[str, Any], Optional[str], Optional[str]]]:
        """The entries of spec.from or spec.to (1 to 16, each a mapping), with the group (which
        must be given, "" for the core group) and the kind both sides have."""
        ck = self.ck
        for i, item in enumerate(self._items(spec.get(side), ("spec", side), 1, 16, required=True)):
            path: FieldPath = ("spec", side, i)
            entry = ck.mapping(item, path, required=True)
            if entry is None:
                continue
            if entry.get("group") is None:
                ck.error(path + ("group",), 'missing ("" for the core group)')
            yield (path, entry, self._group(entry.get("group"), path + ("group",), ""),
                   self._kind(entry.get("kind"), path + ("kind",)))


def _label_key_ok(key: str) -> bool:
    """A qualified name: an optional DNS-1123 subdomain prefix and "/", then a name of at most 63."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not DNS1123_SUBDOMAIN.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_LABEL_NAME.fullmatch(name))


# --- the input -----------------------------------------------------------------------------
@dataclass(frozen=True)
class GatewayObjects:
    """Every Gateway API object known (and the Namespaces, for their labels). Plain dicts, as
    DesiredState holds them: treat them as read-only."""

    classes: Mapping[str, GatewayClass] = field(default_factory=dict)
    gateways: Mapping[ObjectKey, Gateway] = field(default_factory=dict)
    routes: Mapping[RouteKey, Route] = field(default_factory=dict)
    grants: Mapping[ObjectKey, ReferenceGrant] = field(default_factory=dict)
    namespaces: Mapping[str, Namespace] = field(default_factory=dict)

    @classmethod
    def of(cls, objects: Iterable[GatewayObject]) -> "GatewayObjects":
        classes: Dict[str, GatewayClass] = {}
        gateways: Dict[ObjectKey, Gateway] = {}
        routes: Dict[RouteKey, Route] = {}
        grants: Dict[ObjectKey, ReferenceGrant] = {}
        namespaces: Dict[str, Namespace] = {}
        for obj in objects:
            if isinstance(obj, GatewayClass):
                classes[obj.name] = obj
            elif isinstance(obj, Gateway):
                gateways[obj.namespace, obj.name] = obj
            elif isinstance(obj, Route):
                routes[obj.key] = obj
            elif isinstance(obj, ReferenceGrant):
                grants[obj.namespace, obj.name] = obj
            elif isinstance(obj, Namespace):
                namespaces[obj.name] = obj
            else:
                raise TypeError(f"not a Gateway API object: {obj!r}")
        return cls(classes, gateways, routes, grants, namespaces)

    def namespace_labels(self, namespace: str) -> Dict[str, str]:
        """A namespace's labels, with the name label the API server gives every namespace (so
        a selector on it works for files that hold no Namespace object)."""
        ns = self.namespaces.get(namespace)
        labels = dict(ns.labels) if ns is not None else {}
        labels[NAMESPACE_NAME_LABEL] = namespace
        return labels


class ServiceLookup(Protocol):
    """Where Services and their EndpointSlices come from: ebpflb.store.ObjectStore is one."""

    @property
    def services(self) -> Mapping[ObjectKey, Service]: ...

    def slices_of(self, service: ObjectKey) -> List[EndpointSlice]: ...


@dataclass(frozen=True, slots=True)
class ReadObjects:
    """What `read_objects` found: the Gateway objects, the Services and EndpointSlices, and the
    problems of the objects it refused."""

    gateway: GatewayObjects
    services: Tuple[Service, ...]
    slices: Tuple[EndpointSlice, ...]
    errors: Tuple[ManifestError, ...]


def read_objects(docs: Iterable[Any], source: str) -> ReadObjects:
    """Parsed documents (as yaml.safe_load_all gives them) -> every usable object. A refused
    object is left out alone, with its errors; the others are kept (a List's items count one by
    one: the manifest reader handles Lists, this is for tests and one-off reads)."""
    gw: List[GatewayObject] = []
    services: List[Service] = []
    slices: List[EndpointSlice] = []
    errors: List[ManifestError] = []
    seen: Dict[Tuple[str, ObjectKey], str] = {}
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        where = f"document {i + 1}"
        converted = convert_any_document(doc, where)
        if converted.refused:
            errors.extend(problems_of(converted, source))
            continue
        if converted.obj is None or converted.kind is None or converted.key is None:
            continue
        ident = (converted.kind, converted.key)
        if ident in seen:
            errors.append(ManifestError(source, converted.label, None,
                                        f"defined twice (also {seen[ident]})"))
            continue
        seen[ident] = where
        obj = converted.obj
        if isinstance(obj, Service):
            services.append(obj)
        elif isinstance(obj, EndpointSlice):
            slices.append(obj)
        else:
            gw.append(obj)
    return ReadObjects(GatewayObjects.of(gw), tuple(services), tuple(slices), tuple(errors))


# --- results -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class GatewayClassStatus:
    name: str
    conditions: Tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class ListenerStatus:
    name: str
    supported_kinds: Tuple[RouteGroupKind, ...]
    attached_routes: int  # routes Accepted on this listener, served or not
    conditions: Tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    namespace: str
    name: str
    addresses: Tuple[str, ...]  # status.addresses (IPAddress), once programmed
    conditions: Tuple[Condition, ...]
    listeners: Tuple[ListenerStatus, ...]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class RouteParentStatus:
    parent_ref: ParentRef  # as written in the route
    gateway: str  # "namespace/name" it resolved to
    listeners: Tuple[str, ...]  # the listeners the route is attached to
    conditions: Tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class RouteStatus:
    kind: str
    namespace: str
    name: str
    parents: Tuple[RouteParentStatus, ...]  # only parents that are Gateways of ebpflb's classes
    # parentRefs ebpflb writes no status for (no such Gateway, another class, not a Gateway),
    # with why: for `ebpflb gateway list`, never for the API.
    ignored: Tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WeightedBackend:
    backend: Backend
    weight: int  # per-endpoint integer weight for weighted Maglev; 0 drains
    services: Tuple[str, ...]  # the backendRef Services ("namespace/name") it is an endpoint of


@dataclass(frozen=True, slots=True)
class GatewayFrontend:
    """One listener on one Gateway address: what the data plane matches, and where new flows go."""

    address: str
    port: int
    protocol: str  # TCP | UDP
    gateway: str  # "namespace/name"
    listener: str
    route: Optional[str] = None  # "TCPRoute namespace/name" it serves; None: no route attached
    backends: Tuple[WeightedBackend, ...] = ()  # in backend order (IP as integer, port)
    # The share of new flows the spec wants rejected (backendRefs that do not resolve or whose
    # Service has no ready endpoint), on the same scale as the backend weights.
    reject_weight: int = 0

    @property
    def key(self) -> FrontendKey:
        return (self.address, self.port, self.protocol)

    def to_frontend(self) -> Tuple[Frontend, Tuple[Backend, ...]]:
        """The model's shape (what ClusterModel holds per owner): weighted Maglev, each backend's
        weight by (IP, port), and the reject share. The data plane knows four frontend kinds;
        a listener is reached from outside and from pods alike, as an external IP is, so it is
        programmed as one, named "Gateway namespace/name" and its listener."""
        policy = LbPolicy("maglev", None, (),
                          tuple((wb.backend.ip, wb.backend.port, wb.weight) for wb in self.backends),
                          self.reject_weight)
        fe = Frontend(self.address, self.port, self.protocol, f"{GATEWAY_DISPLAY} {self.gateway}",
                      self.listener, policy, 0, "ExternalIP")
        return fe, tuple(wb.backend for wb in self.backends)

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}/{self.protocol} (Gateway {self.gateway} listener {self.listener})"


@dataclass(frozen=True, slots=True)
class GatewayModel:
    classes: Tuple[GatewayClassStatus, ...]  # ebpflb's classes, by name
    gateways: Tuple[GatewayStatus, ...]  # Gateways of those classes, by (namespace, name)
    routes: Tuple[RouteStatus, ...]  # every route, by (kind, namespace, name)
    frontends: Tuple[GatewayFrontend, ...]  # by (address, port, protocol)

    def gateway(self, namespace: str, name: str) -> Optional[GatewayStatus]:
        return next((g for g in self.gateways if (g.namespace, g.name) == (namespace, name)), None)

    def route(self, kind: str, namespace: str, name: str) -> Optional[RouteStatus]:
        return next((r for r in self.routes if (r.kind, r.namespace, r.name) == (kind, namespace, name)),
                    None)


def condition(conditions: Iterable[Condition], type_: str) -> Optional[Condition]:
    return next((c for c in conditions if c.type == type_), None)


# --- rules ---------------------------------------------------------------------------------
def is_ours(gateway_class: GatewayClass) -> bool:
    return gateway_class.controller_name == CONTROLLER_NAME


def class_status(gateway_class: GatewayClass) -> GatewayClassStatus:
    """Accepted, unless it asks for parameters: ebpflb has none to read."""
    if gateway_class.parameters_ref is not None:
        cond = Condition(ACCEPTED, "False", REASON_INVALID_PARAMETERS,
                         f"spec.parametersRef {gateway_class.parameters_ref}: ebpflb takes no parameters")
    else:
        cond = Condition(ACCEPTED, "True", REASON_ACCEPTED)
    return GatewayClassStatus(gateway_class.name, (cond,))


def supported_kinds(listener: Listener) -> Tuple[Tuple[RouteGroupKind, ...], Tuple[RouteGroupKind, ...]]:
    """(the route kinds the listener takes, the kinds it names that ebpflb cannot serve on it):
    a TCP listener takes TCPRoutes, a UDP one UDPRoutes, any other protocol none."""
    kind = LISTENER_ROUTE_KIND.get(listener.protocol)
    own = (RouteGroupKind(GATEWAY_GROUP, kind),) if kind else ()
    if not listener.allowed_routes.kinds:
        return own, ()
    good = tuple(dict.fromkeys(k for k in listener.allowed_routes.kinds if k in own))
    bad = tuple(dict.fromkeys(k for k in listener.allowed_routes.kinds if k not in own))
    return good, bad


def namespace_allowed(allowed: AllowedRoutes, gateway_namespace: str, route_namespace: str,
                      labels: Mapping[str, str]) -> bool:
    """allowedRoutes.namespaces: Same (the Gateway's namespace), All, or Selector (on the route
    namespace's `labels`)."""
    if allowed.namespaces_from == "All":
        return True
    if allowed.namespaces_from == "Selector":
        return allowed.selector is not None and allowed.selector.matches(labels)
    return gateway_namespace == route_namespace


def matching_listeners(listeners: Sequence[Listener], ref: ParentRef) -> List[Listener]:
    """The listeners a parentRef selects: by sectionName, by port, by both, or all of them."""
    return [li for li in listeners
            if (ref.section_name is None or li.name == ref.section_name)
            and (ref.port is None or li.port == ref.port)]


def reference_permitted(grants: Iterable[ReferenceGrant], from_group: str, from_kind: str,
                        from_namespace: str, to_group: str, to_kind: str, to_namespace: str,
                        to_name: str) -> bool:
    """A reference across namespaces holds only when a ReferenceGrant in the target's namespace
    names the source (group, kind, namespace) and the target (group, kind, and the name when it
    gives one). Within one namespace no grant is needed."""
    if from_namespace == to_namespace:
        return True
    for grant in grants:
        if grant.namespace != to_namespace:
            continue
        if not any((f.group, f.kind, f.namespace) == (from_group, from_kind, from_namespace)
                   for f in grant.from_):
            continue
        if any((t.group, t.kind) == (to_group, to_kind) and t.name in (None, to_name)
               for t in grant.to):
            return True
    return False


@dataclass(frozen=True, slots=True)
class ResolvedRef:
    """One backendRef of a route's served rule, judged: a Service port, or why not."""

    path: str  # "rules[0].backendRefs[1]"
    ref: BackendRef
    service: Optional[Service] = None
    port: Optional[ServicePort] = None
    reason: Optional[str] = None  # InvalidKind | RefNotPermitted | BackendNotFound
    message: str = ""


def resolve_backend_refs(route: Route, grants: Iterable[ReferenceGrant],
                         services: ServiceLookup) -> Tuple[ResolvedRef, ...]:
    """Every backendRef of the rule ebpflb serves (the first), resolved in order."""
    grants = tuple(grants)
    out: List[ResolvedRef] = []
    for j, ref in enumerate(route.rules[0].backend_refs if route.rules else ()):
        path = f"rules[0].backendRefs[{j}]"
        namespace = ref.namespace or route.namespace
        target = f"{namespace}/{ref.name}"
        if (ref.group, ref.kind) != ("", "Service"):
            out.append(ResolvedRef(path, ref, reason=REASON_INVALID_KIND,
                                   message=f"{path}: {RouteGroupKind(ref.group, ref.kind)} is not a "
                                           "kind ebpflb sends traffic to (Service is)"))
            continue
        if not reference_permitted(grants, GATEWAY_GROUP, route.kind, route.namespace, "",
                                   "Service", namespace, ref.name):
            out.append(ResolvedRef(path, ref, reason=REASON_REF_NOT_PERMITTED,
                                   message=f"{path}: Service {target} is in another namespace and "
                                           f"no ReferenceGrant there allows {route.kind}s from "
                                           f"{route.namespace}"))
            continue
        svc = services.services.get((namespace, ref.name))
        if svc is None:
            out.append(ResolvedRef(path, ref, reason=REASON_BACKEND_NOT_FOUND,
                                   message=f"{path}: Service {target} not found"))
            continue
        if svc.type == "ExternalName":
            # A DNS alias has no endpoints to send to, and following it is unsafe (CVE-2021-25740).
            out.append(ResolvedRef(path, ref, svc, reason=REASON_BACKEND_NOT_FOUND,
                                   message=f"{path}: Service {target} is of type ExternalName"))
            continue
        port = next((p for p in svc.ports if p.port == ref.port and p.protocol == route.protocol), None)
        if port is None:
            out.append(ResolvedRef(path, ref, svc, reason=REASON_BACKEND_NOT_FOUND,
                                   message=f"{path}: Service {target} has no {route.protocol} "
                                           f"port {ref.port}"))
            continue
        out.append(ResolvedRef(path, ref, svc, port))
    return tuple(out)


K = TypeVar("K", bound=Hashable)


def split_weights(groups: Sequence[Tuple[int, Sequence[K]]], rejected: int = 0
                  ) -> Tuple[Dict[K, int], int]:
    """Integer per-endpoint weights for weighted Maglev, and the reject weight on the same scale.

    `groups` are (backendRef weight W, that Service's usable endpoints); `rejected` is the sum
    of the weights of the backendRefs whose traffic the spec wants rejected. The rule:

    1. Exact shares: endpoint e gets the sum, over the groups holding it, of W / n (n the
       group's endpoint count): each Service's share is proportional to its weight and split
       evenly over its endpoints. The reject share is `rejected`. A group with no endpoint has
       no share (the caller counts its weight in `rejected`).
    2. The smallest integers exactly proportional to those shares: multiplied by the least common
       multiple of their denominators, divided by the greatest common divisor of the results.
       90/10 over 3 and 2 endpoints: 30, 30, 30, 5, 5 -> 6, 6, 6, 1, 1.
    3. Only when the largest of them exceeds MAX_ENDPOINT_WEIGHT: shares are scaled so that the
       largest is MAX_ENDPOINT_WEIGHT, each rounded half up but never below 1 when positive (a
       weight above 0 always receives some flows). The error is then at most half of
       1/MAX_ENDPOINT_WEIGHT of the largest share, below the resolution of the Maglev table that
       quantizes the split in the end (16,381 slots by default).
    4. A share of 0 (every group holding it has weight 0) is weight 0: the endpoint is present,
       its established flows go on, it takes no new flow (draining).
    """
    shares: Dict[K, Fraction] = {}
    for weight, endpoints in groups:
        count = len(endpoints)
        for e in endpoints:
            shares[e] = shares.get(e, Fraction(0)) + (Fraction(weight, count) if count else 0)
    values = list(shares.values()) + [Fraction(rejected)]
    if not any(values):
        return {e: 0 for e in shares}, 0
    scale = math.lcm(*(v.denominator for v in values))
    ints = [int(v * scale) for v in values]
    divisor = math.gcd(*ints)
    ints = [i // divisor for i in ints]
    if max(ints) > MAX_ENDPOINT_WEIGHT:
        top = max(values)
        ints = [0 if v == 0 else max(1, math.floor(v * MAX_ENDPOINT_WEIGHT / top + Fraction(1, 2)))
                for v in values]
    return dict(zip(shares, ints[:-1])), ints[-1]


def referenced_services(objects: GatewayObjects) -> FrozenSet[ObjectKey]:
    """Every Service a route's served rule names: a change to one of them (or to its
    EndpointSlices) is a change to the Gateway frontends; a change to any other is not."""
    return frozenset((ref.namespace or r.namespace, ref.name)
                     for r in objects.routes.values() if r.rules
                     for ref in r.rules[0].backend_refs if (ref.group, ref.kind) == ("", "Service"))


def _age(created: Optional[str], namespace: str, name: str) -> Tuple[int, str, str, str]:
    """The spec's order of precedence: the oldest by creationTimestamp, then namespace/name.
    Objects without a timestamp (files) come after those with one, in name order."""
    return (created is None, created or "", namespace, name)


class _ListenerView:
    """One listener as the rules judge it, while gateway_model works."""

    __slots__ = ("listener", "supported", "invalid_kinds", "unavailable", "attached")

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.supported, self.invalid_kinds = supported_kinds(listener)
        self.unavailable: Optional[str] = None  # who holds its address and port
        self.attached: List[Route] = []  # oldest first

    @property
    def protocol_ok(self) -> bool:
        return self.listener.protocol in LISTENER_ROUTE_KIND

    @property
    def accepted(self) -> bool:
        return self.protocol_ok and self.unavailable is None


class _GatewayView:
    __slots__ = ("gateway", "refusal", "listeners", "ips", "unassigned", "unusable")

    def __init__(self, gateway: Gateway, gateway_class: GatewayClass,
                 address_allowed: Callable[[str], bool]) -> None:
        self.gateway = gateway
        self.listeners = [_ListenerView(li) for li in gateway.listeners]
        self.ips = tuple(a.value for a in gateway.addresses if a.type == "IPAddress" and a.value)
        # An IPAddress without a value asks ebpflb to pick one: it has no address pool.
        self.unassigned = not gateway.addresses or any(
            a.type == "IPAddress" and not a.value for a in gateway.addresses)
        # Anyone who may create a Gateway names its addresses: outside the agent's allow-list
        # they could take over traffic to any address (as externalIPs could, CVE-2020-8554).
        self.unusable = tuple(ip for ip in self.ips if not address_allowed(ip))
        self.refusal: Optional[Condition] = None  # Accepted False for the Gateway as a whole
        unsupported = [(i, a) for i, a in enumerate(gateway.addresses) if a.type != "IPAddress"]
        if gateway_class.parameters_ref is not None:
            self.refusal = Condition(ACCEPTED, "False", REASON_INVALID_PARAMETERS,
                                     f"GatewayClass {gateway_class.name}: spec.parametersRef: "
                                     "ebpflb takes no parameters")
        elif gateway.parameters_ref is not None:
            self.refusal = Condition(ACCEPTED, "False", REASON_INVALID_PARAMETERS,
                                     f"spec.infrastructure.parametersRef {gateway.parameters_ref}: "
                                     "ebpflb takes no parameters")
        elif unsupported:
            self.refusal = Condition(ACCEPTED, "False", REASON_UNSUPPORTED_ADDRESS, "; ".join(
                f"spec.addresses[{i}]: type {a.type} is not supported (IPAddress is)"
                for i, a in unsupported))

    @property
    def accepted(self) -> bool:
        return self.refusal is None and any(v.accepted for v in self.listeners)

    @property
    def programmed(self) -> bool:
        return self.accepted and not self.unassigned and not self.unusable


def gateway_model(objects: GatewayObjects, services: ServiceLookup,
                  taken: Optional[Mapping[FrontendKey, str]] = None,
                  address_allowed: Callable[[str], bool] = lambda ip: True) -> GatewayModel:
    """Status and frontends of every Gateway of ebpflb's classes and every route.

    `address_allowed`: whether the agent may serve an address (its --external-ip-allow): a
    Gateway asking for one it may not is not programmed (AddressNotUsable).

    `taken`: frontends (address, port, protocol) already held, with who holds them (the
    Services' frontends): a listener asking for one is refused with PortUnavailable. Among
    Gateways, the oldest (creationTimestamp, then namespace/name) holds an address and port
    first, as the spec settles conflicts; so does the oldest route attached to a listener, the
    one it serves (the others are Accepted and counted, and serve nothing)."""
    ours = {name: c for name, c in objects.classes.items() if is_ours(c)}
    class_statuses = tuple(class_status(ours[name]) for name in sorted(ours))
    views = {key: _GatewayView(gw, ours[gw.gateway_class_name], address_allowed)
             for key, gw in objects.gateways.items() if gw.gateway_class_name in ours}
    # Addresses and ports: the oldest Gateway first, after the frontends already taken.
    claims: Dict[FrontendKey, str] = dict(taken or {})
    for view in sorted(views.values(), key=lambda v: _age(v.gateway.created, v.gateway.namespace,
                                                         v.gateway.name)):
        if not view.accepted or not view.ips:
            continue
        for lv in view.listeners:
            if not lv.protocol_ok:
                continue
            wanted = [(ip, lv.listener.port, lv.listener.protocol) for ip in view.ips]
            holder = next(((k, claims[k]) for k in wanted if k in claims), None)
            if holder is not None:
                (ip, port, proto), who = holder
                host = f"[{ip}]" if ":" in ip else ip
                lv.unavailable = f"{host}:{port}/{proto} is already used by {who}"
                continue
            for k in wanted:
                claims[k] = f"Gateway {view.gateway.ref} listener {lv.listener.name}"
    # Routes, oldest first, so each listener's attached list is in precedence order.
    grants = tuple(objects.grants.values())
    routes = sorted(objects.routes.values(), key=lambda r: _age(r.created, r.namespace, r.name))
    attachments: Dict[RouteKey, List[Tuple[ParentRef, _GatewayView, Condition, List[_ListenerView]]]] = {}
    ignored: Dict[RouteKey, List[str]] = {}
    for route in routes:
        for i, ref in enumerate(route.parent_refs):
            where = f"parentRefs[{i}]"
            if (ref.group, ref.kind) != (GATEWAY_GROUP, GATEWAY):
                ignored.setdefault(route.key, []).append(
                    f"{where}: {RouteGroupKind(ref.group, ref.kind)} is not a parent ebpflb serves")
                continue
            key = (ref.namespace or route.namespace, ref.name)
            view = views.get(key)
            if view is None:
                gw = objects.gateways.get(key)
                why = (f"Gateway {key[0]}/{key[1]} not found" if gw is None else
                       f"Gateway {key[0]}/{key[1]} is of GatewayClass {gw.gateway_class_name}, "
                       "not one of ebpflb's")
                ignored.setdefault(route.key, []).append(f"{where}: {why}")
                continue
            accepted, chosen = _attach(route, ref, view, objects)
            for lv in chosen:
                if route not in lv.attached:
                    lv.attached.append(route)
            attachments.setdefault(route.key, []).append((ref, view, accepted, chosen))
    # Status of the routes, with what each attached listener serves.
    route_statuses: List[RouteStatus] = []
    resolved: Dict[RouteKey, Tuple[ResolvedRef, ...]] = {}
    for route in sorted(objects.routes.values(), key=lambda r: r.key):
        refs = resolved[route.key] = resolve_backend_refs(route, grants, services)
        parents = []
        for ref, view, accepted, chosen in attachments.get(route.key, ()):
            parents.append(RouteParentStatus(ref, view.gateway.ref,
                                             tuple(lv.listener.name for lv in chosen),
                                             _route_conditions(route, accepted, chosen, refs)))
        route_statuses.append(RouteStatus(route.kind, route.namespace, route.name, tuple(parents),
                                          tuple(ignored.get(route.key, ()))))
    # Status of the Gateways, and their frontends.
    gateway_statuses: List[GatewayStatus] = []
    frontends: List[GatewayFrontend] = []
    for key in sorted(views):
        view = views[key]
        gateway_statuses.append(_gateway_status(view))
        if not view.programmed:
            continue
        for lv in view.listeners:
            if not lv.accepted:
                continue
            serving = lv.attached[0] if lv.attached else None
            for ip in view.ips:
                frontends.append(_frontend(view.gateway, lv.listener, ip, serving,
                                           resolved[serving.key] if serving else (), services))
    frontends.sort(key=lambda f: (ip_version(f.address) or 0, f.address, f.port, f.protocol))
    return GatewayModel(class_statuses, tuple(gateway_statuses), tuple(route_statuses),
                        tuple(frontends))


def _attach(route: Route, ref: ParentRef, view: _GatewayView,
            objects: GatewayObjects) -> Tuple[Condition, List[_ListenerView]]:
    """Whether a route attaches to a Gateway through one parentRef, and to which listeners.
    Attachment depends on the parentRef and allowedRoutes only, not on the state of the Gateway
    or its listeners (ListenerStatus.attachedRoutes)."""
    gw = view.gateway
    selected = [lv for lv in view.listeners if lv.listener in matching_listeners(gw.listeners, ref)]
    if not selected:
        what = " and ".join(p for p in ((f"sectionName {ref.section_name}" if ref.section_name else ""),
                                        (f"port {ref.port}" if ref.port is not None else "")) if p)
        return Condition(ACCEPTED, "False", REASON_NO_MATCHING_PARENT,
                         f"Gateway {gw.ref} has no listener with {what}"), []
    labels = objects.namespace_labels(route.namespace)
    kind = RouteGroupKind(GATEWAY_GROUP, route.kind)
    chosen: List[_ListenerView] = []
    refusals: List[str] = []
    for lv in selected:
        li = lv.listener
        if kind not in lv.supported:
            refusals.append(f"listener {li.name} ({li.protocol}) does not take {route.kind}s")
        elif not namespace_allowed(li.allowed_routes, gw.namespace, route.namespace, labels):
            refusals.append(f"listener {li.name} does not allow routes from namespace "
                            f"{route.namespace} (from: {li.allowed_routes.namespaces_from})")
        else:
            chosen.append(lv)
    if not chosen:
        return Condition(ACCEPTED, "False", REASON_NOT_ALLOWED_BY_LISTENERS, "; ".join(refusals)), []
    return Condition(ACCEPTED, "True", REASON_ACCEPTED), chosen


def _route_conditions(route: Route, accepted: Condition, chosen: List[_ListenerView],
                      refs: Tuple[ResolvedRef, ...]) -> Tuple[Condition, ...]:
    if accepted.status == "True":
        # Accepted and counted on every listener; only the oldest route of a listener serves it.
        older = [f"listener {lv.listener.name} serves the older {lv.attached[0]}"
                 for lv in chosen if lv.attached and lv.attached[0] is not route]
        if older:
            accepted = Condition(ACCEPTED, "True", REASON_ACCEPTED, "; ".join(older))
    bad = [r for r in refs if r.reason is not None]
    if bad:
        # One reason per condition: the first problem's; the message names them all.
        resolved = Condition(RESOLVED_REFS, "False", bad[0].reason or "",
                             "; ".join(r.message for r in bad))
    else:
        resolved = Condition(RESOLVED_REFS, "True", REASON_RESOLVED_REFS)
    out = [accepted, resolved]
    if len(route.rules) > 1 and accepted.status == "True":
        # v1alpha2 allowed several rules; without matches only one can take the traffic. The
        # spec's "drop rules" way to report a partly served route.
        dropped = ", ".join(f"rules[{i}]" for i in range(1, len(route.rules)))
        out.append(Condition(PARTIALLY_INVALID, "True", REASON_UNSUPPORTED_VALUE,
                             f"Dropped Rule(s) {dropped}: an L4 route serves its first rule "
                             "(v1 allows one)"))
    return tuple(out)


def _gateway_status(view: _GatewayView) -> GatewayStatus:
    gw = view.gateway
    bad = [lv for lv in view.listeners if not lv.accepted]
    if view.refusal is not None:
        accepted = view.refusal
    elif bad:
        names = ", ".join(lv.listener.name for lv in bad)
        accepted = Condition(ACCEPTED, "True" if view.accepted else "False",
                             REASON_LISTENERS_NOT_VALID, f"listeners not accepted: {names}")
    else:
        accepted = Condition(ACCEPTED, "True", REASON_ACCEPTED)
    if not view.accepted:
        programmed = Condition(PROGRAMMED, "False", REASON_INVALID, "the Gateway is not accepted")
    elif view.unassigned:
        programmed = Condition(PROGRAMMED, "False", REASON_ADDRESS_NOT_ASSIGNED,
                               "ebpflb does not assign addresses: give spec.addresses an "
                               "IPAddress with a value")
    elif view.unusable:
        programmed = Condition(PROGRAMMED, "False", REASON_ADDRESS_NOT_USABLE,
                               f"{', '.join(view.unusable)}: outside the agent's "
                               "--external-ip-allow (a Gateway address may only be one the node "
                               "is allowed to serve)")
    else:
        programmed = Condition(PROGRAMMED, "True", REASON_PROGRAMMED)
    listeners = tuple(_listener_status(view, lv) for lv in view.listeners)
    return GatewayStatus(gw.namespace, gw.name, view.ips if view.programmed else (),
                         (accepted, programmed), listeners)


def _listener_status(view: _GatewayView, lv: _ListenerView) -> ListenerStatus:
    li = lv.listener
    if not lv.protocol_ok:
        accepted = Condition(ACCEPTED, "False", REASON_UNSUPPORTED_PROTOCOL,
                             f"protocol {li.protocol} is not served by ebpflb (TCP and UDP are)")
    elif lv.unavailable is not None:
        accepted = Condition(ACCEPTED, "False", REASON_PORT_UNAVAILABLE, lv.unavailable)
    else:
        accepted = Condition(ACCEPTED, "True", REASON_ACCEPTED)
    if lv.invalid_kinds:
        taken = ", ".join(str(k) for k in lv.supported) or "none"
        resolved = Condition(RESOLVED_REFS, "False", REASON_INVALID_ROUTE_KINDS,
                             f"{', '.join(str(k) for k in lv.invalid_kinds)} not supported on a "
                             f"{li.protocol} listener (supported: {taken})")
    else:
        resolved = Condition(RESOLVED_REFS, "True", REASON_RESOLVED_REFS)
    if not lv.accepted or not view.accepted:
        programmed = Condition(PROGRAMMED, "False", REASON_INVALID,
                               "the listener is not accepted" if not lv.accepted
                               else "the Gateway is not accepted")
    elif view.unassigned:
        programmed = Condition(PROGRAMMED, "False", REASON_PENDING, "the Gateway has no address")
    elif view.unusable:
        programmed = Condition(PROGRAMMED, "False", REASON_PENDING,
                               "the Gateway's addresses are not usable")
    else:
        programmed = Condition(PROGRAMMED, "True", REASON_PROGRAMMED)
    return ListenerStatus(li.name, lv.supported, len(lv.attached), (accepted, resolved, programmed))


def _frontend(gw: Gateway, listener: Listener, ip: str, route: Optional[Route],
              refs: Tuple[ResolvedRef, ...], services: ServiceLookup) -> GatewayFrontend:
    """One listener on one address: the usable endpoints of every resolved backendRef in the
    address's family (ebpflb.model's rules: ready ones, every one with publishNotReadyAddresses,
    serving-and-terminating ones when none is ready), weighted by split_weights."""
    family = ip_version(ip) or 4
    groups: List[Tuple[int, Tuple[Backend, ...], str]] = []
    rejected = 0
    for r in refs:
        if r.service is None or r.port is None:
            rejected += r.ref.weight
            continue
        svc = r.service
        slices = [s for s in services.slices_of((svc.namespace, svc.name))
                  if s.address_type == ADDRESS_TYPES[family]]
        # The Gateway is its own frontend: the Service's traffic policies (which apply to its
        # own addresses) and the endpoint hints (which are about the node a client runs on) do not
        # apply, so every usable endpoint counts.
        backends = _usable_backends(_ported_endpoints(r.port, slices), svc, None,
                                    internal_policy=False)
        if not backends:
            rejected += r.ref.weight
            continue
        groups.append((r.ref.weight, backends, svc.ref))
    weights, reject = split_weights([(w, [b.key for b in bs]) for w, bs, _ in groups], rejected)
    found: Dict[Tuple[str, int], Backend] = {}
    owners: Dict[Tuple[str, int], List[str]] = {}
    for _, backends, owner in groups:
        for b in backends:
            found.setdefault(b.key, b)
            if owner not in owners.setdefault(b.key, []):
                owners[b.key].append(owner)
    ordered = sorted(found.values(), key=_backend_order)
    return GatewayFrontend(ip, listener.port, listener.protocol, gw.ref, listener.name,
                           str(route) if route is not None else None,
                           tuple(WeightedBackend(b, weights[b.key], tuple(owners[b.key]))
                                 for b in ordered), reject)
