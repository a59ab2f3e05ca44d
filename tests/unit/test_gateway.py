"""Gateway API at layer 4 (ebpflb.gateway, pure): the objects' field rules, and the rules that turn
GatewayClasses, Gateways, TCPRoutes, UDPRoutes and ReferenceGrants (with the Services and
EndpointSlices of the store) into status conditions and weighted frontends. Cases carry the
name of the Gateway API conformance test they follow where one exists (conformance/tests)."""
import ast
import copy
import datetime
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest
import yaml

from ebpflb import gateway as gwmod
from ebpflb.gateway import (
    CONTROLLER_NAME, MAX_ENDPOINT_WEIGHT, AllowedRoutes, GatewayModel, GrantFrom, GrantTo,
    LabelSelector, Listener, ParentRef, ReferenceGrant, SelectorRequirement, condition,
    convert_gateway_api_object, convert_gateway_document, gateway_model, matching_listeners,
    namespace_allowed, problems_of, read_objects, reference_permitted, split_weights,
)
from ebpflb.maglev import maglev_table
from ebpflb.records import PlanDefaults, frontend_slots
from ebpflb.store import ObjectStore

pytestmark = pytest.mark.unit

V1 = "gateway.networking.k8s.io/v1"
V1ALPHA2 = "gateway.networking.k8s.io/v1alpha2"
V1BETA1 = "gateway.networking.k8s.io/v1beta1"
NS = "demo"


# --- object builders (dicts, as YAML gives them) ---------------------------------------------
def gclass(name: str = "ebpflb", controller: str = CONTROLLER_NAME, **spec: Any) -> dict:
    return {"apiVersion": V1, "kind": "GatewayClass", "metadata": {"name": name},
            "spec": {"controllerName": controller, **spec}}


def listener(name: str = "tcp", port: int = 9000, protocol: str = "TCP", **extra: Any) -> dict:
    return {"name": name, "port": port, "protocol": protocol, **extra}


def gateway(name: str = "gw", ns: str = NS, listeners: Sequence[dict] = (), cls: str = "ebpflb",
            addresses: Sequence[Any] = ("192.0.2.10",), created: Optional[str] = None,
            api: str = V1, **spec: Any) -> dict:
    meta: Dict[str, Any] = {"name": name, "namespace": ns}
    if created:
        meta["creationTimestamp"] = created
    addrs = [a if isinstance(a, dict) else {"type": "IPAddress", "value": a} for a in addresses]
    body: Dict[str, Any] = {"gatewayClassName": cls,
                            "listeners": list(listeners) or [listener()], **spec}
    if addrs:
        body["addresses"] = addrs
    return {"apiVersion": api, "kind": "Gateway", "metadata": meta, "spec": body}


def route(name: str = "r", ns: str = NS, kind: str = "TCPRoute",
          parents: Sequence[dict] = ({"name": "gw"},),
          backends: Sequence[dict] = ({"name": "web", "port": 80},), rules: Optional[list] = None,
          created: Optional[str] = None, api: str = V1) -> dict:
    meta: Dict[str, Any] = {"name": name, "namespace": ns}
    if created:
        meta["creationTimestamp"] = created
    return {"apiVersion": api, "kind": kind, "metadata": meta,
            "spec": {"parentRefs": list(parents),
                     "rules": rules if rules is not None else [{"backendRefs": list(backends)}]}}


def grant(name: str = "allow", ns: str = "backend", from_kind: str = "TCPRoute",
          from_ns: str = NS, to_kind: str = "Service", to_name: Optional[str] = None,
          from_group: str = "gateway.networking.k8s.io") -> dict:
    to: Dict[str, Any] = {"group": "", "kind": to_kind}
    if to_name is not None:
        to["name"] = to_name
    return {"apiVersion": V1, "kind": "ReferenceGrant", "metadata": {"name": name, "namespace": ns},
            "spec": {"from": [{"group": from_group, "kind": from_kind, "namespace": from_ns}],
                     "to": [to]}}


def namespace(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


_next_ip = iter(range(10, 4000))


def service(name: str = "web", ns: str = NS, port: int = 80, protocol: str = "TCP",
            endpoints: Sequence[Any] = ("10.244.0.1",), target: int = 8080,
            family: str = "IPv4", **spec: Any) -> List[dict]:
    """A Service and its EndpointSlice; an endpoint is an address or (address, ready)."""
    n = next(_next_ip)
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"clusterIP": f"10.96.{n // 250}.{n % 250 + 1}",
                    "ports": [{"name": "p", "port": port, "protocol": protocol,
                               "targetPort": target}], **spec}}
    eps = []
    for e in endpoints:
        addr, ready = (e, True) if isinstance(e, str) else e
        eps.append({"addresses": [addr], "conditions": {"ready": ready}})
    slc = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": f"{name}-{family.lower()}", "namespace": ns,
                        "labels": {"kubernetes.io/service-name": name}},
           "addressType": family, "ports": [{"name": "p", "port": target, "protocol": protocol}],
           "endpoints": eps}
    return [svc, slc]


def read_docs(*docs: Any):
    """The objects of the given documents (lists of documents are flattened); every one must be
    valid, and the GatewayClass "ebpflb" is there unless one is given."""
    flat: List[dict] = []
    for d in docs:
        flat.extend(d if isinstance(d, list) else [d])
    if not any(d.get("kind") == "GatewayClass" for d in flat):
        flat.insert(0, gclass())
    read = read_objects(flat, "test.yaml")
    assert not read.errors, [str(e) for e in read.errors]
    return read


def build(*docs: Any, taken=None) -> GatewayModel:
    """The model of the given documents, as read_docs reads them."""
    read = read_docs(*docs)
    return gateway_model(read.gateway, ObjectStore.of(read.services, read.slices), taken)


def conds(conditions) -> Dict[str, Tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in conditions}


def parent(m: GatewayModel, name: str = "r", kind: str = "TCPRoute", ns: str = NS, i: int = 0):
    st = m.route(kind, ns, name)
    assert st is not None
    return st.parents[i]


def accepted(m: GatewayModel, name: str = "r", kind: str = "TCPRoute", i: int = 0) -> Tuple[str, str]:
    return conds(parent(m, name, kind, i=i).conditions)["Accepted"]


def resolved_refs(m: GatewayModel, name: str = "r", kind: str = "TCPRoute") -> Tuple[str, str]:
    return conds(parent(m, name, kind).conditions)["ResolvedRefs"]


def listener_status(m: GatewayModel, lname: str = "tcp", gw: str = "gw", ns: str = NS):
    st = m.gateway(ns, gw)
    assert st is not None
    return next(li for li in st.listeners if li.name == lname)


def split(m: GatewayModel, port: int = 9000, protocol: str = "TCP",
          address: str = "192.0.2.10") -> Dict[str, int]:
    """"ip:port" -> weight of the frontend on address:port/protocol."""
    fe = next(f for f in m.frontends if f.key == (address, port, protocol))
    return {str(wb.backend): wb.weight for wb in fe.backends}


def frontend(m: GatewayModel, port: int = 9000, protocol: str = "TCP", address: str = "192.0.2.10"):
    return next(f for f in m.frontends if f.key == (address, port, protocol))


# --- conversion: the objects and their field rules -------------------------------------------
@pytest.mark.parametrize("kind,api", [
    ("GatewayClass", V1), ("GatewayClass", V1BETA1),
    ("Gateway", V1), ("Gateway", V1BETA1),
    ("TCPRoute", V1), ("TCPRoute", V1ALPHA2),
    ("UDPRoute", V1), ("UDPRoute", V1ALPHA2),
    ("ReferenceGrant", V1), ("ReferenceGrant", V1BETA1),
])
def test_every_kind_is_read_in_the_versions_the_spec_serves(kind, api):
    doc = {"GatewayClass": gclass(), "Gateway": gateway(), "TCPRoute": route(),
           "UDPRoute": route(kind="UDPRoute"), "ReferenceGrant": grant()}[kind]
    doc["apiVersion"] = api
    c = convert_gateway_document(doc, "document 1")
    assert not c.refused, c.problems
    assert c.kind == kind and c.obj is not None and c.claims


@pytest.mark.parametrize("kind,api,expected", [
    ("TCPRoute", V1BETA1, "apiVersion: \"gateway.networking.k8s.io/v1beta1\" is not supported "
                          "(use gateway.networking.k8s.io/v1 or gateway.networking.k8s.io/v1alpha2)"),
    ("Gateway", V1ALPHA2, "apiVersion: \"gateway.networking.k8s.io/v1alpha2\" is not supported "
                          "(use gateway.networking.k8s.io/v1 or gateway.networking.k8s.io/v1beta1)"),
    ("ReferenceGrant", V1ALPHA2, "apiVersion: \"gateway.networking.k8s.io/v1alpha2\" is not supported"),
])
def test_another_version_of_the_group_is_an_error(kind, api, expected):
    doc = {"TCPRoute": route(), "Gateway": gateway(), "ReferenceGrant": grant()}[kind]
    doc["apiVersion"] = api
    errors = problems_of(convert_gateway_document(doc, "document 1"), "f.yaml")
    assert [str(e) for e in errors][0].startswith(f"f.yaml: {kind} ")
    assert expected in str(errors[0])


def test_another_group_or_kind_is_someone_elses():
    other = route()
    other["apiVersion"] = "example.com/v1"
    assert convert_gateway_document(other, "d").ignored == "apiVersion example.com/v1 not used by ebpflb"
    assert convert_gateway_document({"kind": "HTTPRoute", "apiVersion": V1, "metadata": {"name": "h"}},
                                    "d").ignored == "kind not used by ebpflb"


def test_api_objects_carry_neither_kind_nor_api_version():
    doc = route()
    del doc["kind"], doc["apiVersion"]
    c = convert_gateway_api_object("TCPRoute", doc, V1ALPHA2)
    assert not c.refused and c.label == "TCPRoute demo/r"
    cls = gclass()
    del cls["kind"], cls["apiVersion"]
    assert convert_gateway_api_object("GatewayClass", cls).label == "GatewayClass ebpflb"


def _set(doc: dict, path: str, value: Any) -> dict:
    """doc with the field at a dotted path ("spec.listeners.0.port") set (or removed: ...)."""
    doc = copy.deepcopy(doc)
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = doc
    for p in parts[:-1]:
        node = node[p]
    if value is ...:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return doc


TWO_LISTENERS = gateway(listeners=[listener("a", 9000), listener("b", 9001)])
TWO_RULES_V1 = route(rules=[{"backendRefs": [{"name": "a", "port": 80}]},
                            {"backendRefs": [{"name": "b", "port": 80}]}])


@pytest.mark.parametrize("doc,path,value,error", [
    # GatewayClass
    (gclass(), "spec.controllerName", "ebpflb", "GatewayClass ebpflb: spec.controllerName: \"ebpflb\" "
     "is not a valid controller name (DOMAIN/PATH, e.g. example.net/gateway-controller)"),
    (gclass(), "spec.controllerName", ..., "GatewayClass ebpflb: spec.controllerName: missing"),
    # Gateway
    (gateway(), "spec.gatewayClassName", ..., "Gateway demo/gw: spec.gatewayClassName: missing"),
    (gateway(), "spec.listeners", [], "Gateway demo/gw: spec.listeners: 0 entries: at least 1 allowed"),
    (gateway(), "spec.listeners.0.port", 0,
     "Gateway demo/gw: spec.listeners[0].port: 0 is not a valid port (1-65535)"),
    (gateway(), "spec.listeners.0.port", True, "Gateway demo/gw: spec.listeners[0].port: true is not "
     "a valid port (an integer 1-65535, not a boolean)"),
    (gateway(), "spec.listeners.0.protocol", ..., "Gateway demo/gw: spec.listeners[0].protocol: missing"),
    (gateway(), "spec.listeners.0.protocol", "T CP",
     "Gateway demo/gw: spec.listeners[0].protocol: \"T CP\" is not a valid protocol"),
    (gateway(), "spec.listeners.0.hostname", "example.com",
     "Gateway demo/gw: spec.listeners[0].hostname: must not be set for protocol TCP"),
    (gateway(), "spec.listeners.0.tls", {"mode": "Terminate"},
     "Gateway demo/gw: spec.listeners[0].tls: must not be set for protocol TCP"),
    (TWO_LISTENERS, "spec.listeners.1.name", "a",
     "Gateway demo/gw: spec.listeners[1].name: duplicate listener name \"a\" (also spec.listeners[0])"),
    (TWO_LISTENERS, "spec.listeners.1.port", 9000,
     "Gateway demo/gw: spec.listeners[1]: duplicate port 9000/TCP (also spec.listeners[0])"),
    (gateway(), "spec.listeners.0.allowedRoutes", {"namespaces": {"from": "Everywhere"}},
     "Gateway demo/gw: spec.listeners[0].allowedRoutes.namespaces.from: \"Everywhere\" is not one "
     "of All, Selector, Same"),
    (gateway(), "spec.listeners.0.allowedRoutes", {"namespaces": {"from": "Selector"}},
     "Gateway demo/gw: spec.listeners[0].allowedRoutes.namespaces.selector: required when from is Selector"),
    (gateway(), "spec.listeners.0.allowedRoutes", {"namespaces": {"from": "Selector", "selector": {
        "matchExpressions": [{"key": "team", "operator": "In"}]}}},
     "Gateway demo/gw: spec.listeners[0].allowedRoutes.namespaces.selector.matchExpressions[0]."
     "values: must not be empty with operator In"),
    (gateway(), "spec.listeners.0.allowedRoutes", {"namespaces": {"from": "Selector", "selector": {
        "matchExpressions": [{"key": "team", "operator": "Like", "values": ["a"]}]}}},
     "selector.matchExpressions[0].operator: \"Like\" is not one of In, NotIn, Exists, DoesNotExist"),
    (gateway(), "spec.listeners.0.allowedRoutes", {"kinds": [{"group": "x"}]},
     "Gateway demo/gw: spec.listeners[0].allowedRoutes.kinds[0].kind: missing"),
    (gateway(), "spec.addresses.0.value", "192.0.2.300",
     "Gateway demo/gw: spec.addresses[0].value: \"192.0.2.300\" is not a valid IP address"),
    (gateway(addresses=["192.0.2.10", "192.0.2.10"]), "spec.addresses.1.type", "IPAddress",
     "Gateway demo/gw: spec.addresses[1].value: duplicate IPAddress \"192.0.2.10\" (also spec.addresses[0])"),
    (gateway(), "spec.addresses.0.type", "not a type",
     "Gateway demo/gw: spec.addresses[0].type: \"not a type\" is not a valid address type"),
    (gateway(), "metadata.creationTimestamp", "yesterday",
     "Gateway demo/gw: metadata.creationTimestamp: \"yesterday\" is not an RFC 3339 time"),
    (gateway(), "metadata.name", "GW", "Gateway demo/GW: metadata.name: \"GW\" is not a valid name"),
    # TCPRoute / UDPRoute
    (route(), "spec.rules.0.backendRefs.0.weight", 1_000_001, "TCPRoute demo/r: spec.rules[0]."
     "backendRefs[0].weight: 1000001 is not a weight (an integer from 0 to 1,000,000)"),
    (route(), "spec.rules.0.backendRefs.0.weight", -1, "backendRefs[0].weight: -1 is not a weight"),
    (route(), "spec.rules.0.backendRefs.0.weight", "90", "backendRefs[0].weight: \"90\" is not a weight"),
    (route(), "spec.rules.0.backendRefs.0.port", ...,
     "TCPRoute demo/r: spec.rules[0].backendRefs[0].port: missing (a Service reference needs its port)"),
    (route(), "spec.rules.0.backendRefs.0.port", 70000,
     "TCPRoute demo/r: spec.rules[0].backendRefs[0].port: 70000 is not a valid port (1-65535)"),
    (route(), "spec.rules.0.backendRefs.0.name", ..., "spec.rules[0].backendRefs[0].name: missing"),
    (route(), "spec.rules.0.backendRefs", [], "spec.rules[0].backendRefs: 0 entries: at least 1 allowed"),
    (route(), "spec.rules", ..., "TCPRoute demo/r: spec.rules: missing"),
    (TWO_RULES_V1, "kind", "TCPRoute", "TCPRoute demo/r: spec.rules: 2 entries: at most 1 allowed"),
    (route(parents=[{"name": "gw"}, {"name": "gw"}]), "kind", "TCPRoute",
     "TCPRoute demo/r: spec.parentRefs[1]: sectionName or port must be unique when parentRefs includes "
     "2 or more references to the same parent (also spec.parentRefs[0])"),
    (route(parents=[{"name": "gw", "sectionName": "a"}, {"name": "gw"}]), "kind", "TCPRoute",
     "TCPRoute demo/r: spec.parentRefs[1]: sectionName or port must be specified alike"),
    (route(), "spec.parentRefs.0.sectionName", "Bad_Name",
     "TCPRoute demo/r: spec.parentRefs[0].sectionName: \"Bad_Name\" is not a valid section name"),
    (route(), "spec.parentRefs.0.port", 0, "TCPRoute demo/r: spec.parentRefs[0].port: 0 is not a valid port"),
    (route(kind="UDPRoute"), "spec.parentRefs.0.namespace", "Demo",
     "UDPRoute demo/r: spec.parentRefs[0].namespace: \"Demo\" is not a valid namespace"),
    # ReferenceGrant
    (grant(), "spec.from.0.namespace", ...,
     "ReferenceGrant backend/allow: spec.from[0].namespace: missing"),
    (grant(), "spec.to.0.group", ..., "ReferenceGrant backend/allow: spec.to[0].group: missing "
     "(\"\" for the core group)"),
    (grant(), "spec.to", [], "ReferenceGrant backend/allow: spec.to: 0 entries: at least 1 allowed"),
])
def test_field_errors_name_the_object_and_the_field(doc, path, value, error):
    errors = [str(e) for e in problems_of(convert_gateway_document(_set(doc, path, value),
                                                                   "document 1"), "demo.yaml")]
    assert any(e.startswith("demo.yaml: ") and error in e for e in errors), errors


def test_an_error_reads_as_the_service_errors_do():
    c = convert_gateway_document(_set(gateway(), "spec.listeners.0.port", 0), "document 1")
    assert c.refused and c.claims and c.obj is None
    assert [str(e) for e in problems_of(c, "demo.yaml")] == [
        "demo.yaml: Gateway demo/gw: spec.listeners[0].port: 0 is not a valid port (1-65535)"]


def test_every_problem_of_an_object_is_reported_at_once():
    doc = _set(_set(route(), "spec.rules.0.backendRefs.0.weight", -1), "spec.parentRefs.0.port", 0)
    fields = [e.field for e in problems_of(convert_gateway_document(doc, "d"), "f")]
    assert fields == ["spec.parentRefs[0].port", "spec.rules[0].backendRefs[0].weight"]


def test_a_bad_object_is_refused_alone_and_the_others_are_kept():
    docs = [gclass(), gateway(), route("bad", backends=[{"name": "web", "port": 80, "weight": -5}]),
            route("good"), *service(), None, "not a mapping"]
    read = read_objects(docs, "demo.yaml")
    assert [str(e) for e in read.errors] == [
        "demo.yaml: TCPRoute demo/bad: spec.rules[0].backendRefs[0].weight: -5 is not a weight "
        "(an integer from 0 to 1,000,000)",
        "demo.yaml: document 8: not a mapping (a string)",
    ]
    assert set(read.gateway.routes) == {("TCPRoute", NS, "good")}
    assert set(read.gateway.gateways) == {(NS, "gw")} and "ebpflb" in read.gateway.classes
    assert [s.name for s in read.services] == ["web"] and len(read.slices) == 1
    m = gateway_model(read.gateway, ObjectStore.of(read.services, read.slices))
    assert accepted(m, "good") == ("True", "Accepted")


def test_an_object_defined_twice_is_refused_the_second_time():
    read = read_objects([route("r"), route("r")], "demo.yaml")
    assert [str(e) for e in read.errors] == ["demo.yaml: TCPRoute demo/r: defined twice (also document 1)"]


def test_defaults_as_the_crds_give_them():
    c = convert_gateway_document(route(parents=[{"name": "gw"}],
                                       backends=[{"name": "web", "port": 80}]), "d")
    r = c.obj
    assert r.parent_refs == (ParentRef("gw", "gateway.networking.k8s.io", "Gateway", None, None, None),)
    ref = r.rules[0].backend_refs[0]
    assert (ref.group, ref.kind, ref.namespace, ref.port, ref.weight) == ("", "Service", None, 80, 1)
    g = convert_gateway_document(gateway(addresses=[{"value": "2001:DB8::A"}]), "d").obj
    assert g.listeners[0].allowed_routes == AllowedRoutes("Same", None, ())
    assert [(a.type, a.value) for a in g.addresses] == [("IPAddress", "2001:db8::a")]


@pytest.mark.parametrize("raw,expected", [
    ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00Z"),
    ("2024-05-01T12:00:00+02:00", "2024-05-01T10:00:00Z"),
    ("2024-05-01T10:00:00.5Z", "2024-05-01T10:00:00Z"),
    (datetime.datetime(2024, 5, 1, 10, 0, tzinfo=datetime.timezone.utc), "2024-05-01T10:00:00Z"),
])
def test_creation_timestamps_compare_as_times(raw, expected):
    assert convert_gateway_document(route(created=raw), "d").obj.created == expected


def test_yaml_text_reads_the_same_as_dicts():
    text = yaml.safe_dump_all([gclass(), gateway(), route(created="2024-05-01T10:00:00Z")])
    read = read_objects(yaml.safe_load_all(text), "f.yaml")
    assert not read.errors and read.gateway.routes[("TCPRoute", NS, "r")].created == "2024-05-01T10:00:00Z"


def test_the_module_is_pure():
    names = set()
    for node in ast.walk(ast.parse(Path(gwmod.__file__).read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module or "")
    assert not {n for n in names if n.split(".")[0] in ("bcc", "pyroute2", "kubernetes")}


# --- GatewayClass: which Gateways are ebpflb's ------------------------------------------------
def test_only_gatewayclasses_naming_our_controller_are_ours():
    m = build(gclass("ebpflb"), gclass("other", "example.com/gateway-controller"),
              gateway("mine"), gateway("theirs", cls="other"), gateway("classless", cls="missing"),
              route(parents=[{"name": "mine"}, {"name": "theirs"}, {"name": "classless"},
                             {"name": "nowhere"}, {"name": "web", "kind": "Service", "group": ""}]),
              *service())
    assert [c.name for c in m.classes] == ["ebpflb"]
    assert conds(m.classes[0].conditions) == {"Accepted": ("True", "Accepted")}
    # A Gateway of another class is ignored entirely: no status, no frontend, no route status.
    assert [g.name for g in m.gateways] == ["mine"]
    assert {f.gateway for f in m.frontends} == {"demo/mine"}
    st = m.route("TCPRoute", NS, "r")
    assert [p.gateway for p in st.parents] == ["demo/mine"]
    assert st.ignored == (
        "parentRefs[1]: Gateway demo/theirs is of GatewayClass other, not one of ebpflb's",
        "parentRefs[2]: Gateway demo/classless is of GatewayClass missing, not one of ebpflb's",
        "parentRefs[3]: Gateway demo/nowhere not found",
        "parentRefs[4]: Service is not a parent ebpflb serves",
    )


def test_parameters_are_invalid_parameters():
    """GatewayInvalidParametersRef: ebpflb reads no parameters, so asking for some is refused."""
    m = build(gclass(parametersRef={"group": "example.com", "kind": "Config", "name": "c"}),
              gateway())
    assert conds(m.classes[0].conditions)["Accepted"] == ("False", "InvalidParameters")
    assert conds(m.gateways[0].conditions) == {"Accepted": ("False", "InvalidParameters"),
                                               "Programmed": ("False", "Invalid")}
    assert not m.frontends
    m = build(gateway(infrastructure={"parametersRef": {"group": "", "kind": "ConfigMap", "name": "c"}}))
    assert conds(m.gateways[0].conditions)["Accepted"] == ("False", "InvalidParameters")


# --- Gateway: addresses and listeners ---------------------------------------------------------
def test_gateway_accepted_and_programmed():
    m = build(gateway(), route(), *service())
    gw = m.gateway(NS, "gw")
    assert conds(gw.conditions) == {"Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
    assert gw.addresses == ("192.0.2.10",)
    li = gw.listeners[0]
    assert conds(li.conditions) == {"Accepted": ("True", "Accepted"),
                                    "ResolvedRefs": ("True", "ResolvedRefs"),
                                    "Programmed": ("True", "Programmed")}
    assert [str(k) for k in li.supported_kinds] == ["gateway.networking.k8s.io/TCPRoute"]
    assert li.attached_routes == 1


@pytest.mark.parametrize("addresses,accepted_,programmed", [
    # GatewayStaticAddresses: a type ebpflb does not support refuses the Gateway.
    ([{"type": "test/fake-invalid-type", "value": "fake"}, "192.0.2.10"],
     ("False", "UnsupportedAddress"), ("False", "Invalid")),
    ([{"type": "Hostname", "value": "gw.example.com"}], ("False", "UnsupportedAddress"), ("False", "Invalid")),
    ([{"type": "NamedAddress", "value": "static-1"}], ("False", "UnsupportedAddress"), ("False", "Invalid")),
    # ebpflb has no address pool: no address, or an IPAddress without a value, is not assigned.
    ([], ("True", "Accepted"), ("False", "AddressNotAssigned")),
    ([{"type": "IPAddress"}], ("True", "Accepted"), ("False", "AddressNotAssigned")),
    (["192.0.2.10", {"type": "IPAddress", "value": ""}], ("True", "Accepted"), ("False", "AddressNotAssigned")),
    (["192.0.2.10", "2001:db8::10"], ("True", "Accepted"), ("True", "Programmed")),
])
def test_addresses(addresses, accepted_, programmed):
    m = build(gateway(addresses=addresses), route(), *service())
    gw = m.gateway(NS, "gw")
    assert conds(gw.conditions) == {"Accepted": accepted_, "Programmed": programmed}
    if programmed[0] == "True":
        assert {f.address for f in m.frontends} == set(gw.addresses)
    else:
        assert not m.frontends and gw.addresses == ()
    listener_programmed = conds(gw.listeners[0].conditions)["Programmed"]
    expected = {"True": ("True", "Programmed"), "False": ("False", "Invalid")}[programmed[0]]
    if programmed[1] == "AddressNotAssigned":
        expected = ("False", "Pending")
    assert listener_programmed == expected
    # Attachment does not depend on the Gateway's state (ListenerStatus.attachedRoutes).
    assert gw.listeners[0].attached_routes == 1


def test_each_address_family_gets_its_own_endpoints():
    docs = service(endpoints=["10.244.0.1"]) + service(endpoints=["fd00:10:244::1"], family="IPv6")[1:]
    m = build(gateway(addresses=["192.0.2.10", "2001:db8::10"]), route(), *docs)
    assert split(m) == {"10.244.0.1:8080": 1}
    assert split(m, address="2001:db8::10") == {"[fd00:10:244::1]:8080": 1}


@pytest.mark.parametrize("listeners,gateway_accepted,states", [
    # GatewayListenerUnsupportedProtocol: a Gateway with no listener ebpflb can serve is refused;
    # one with at least one is accepted, its other listeners not.
    ([listener("invalid", 1111, "INVALID")], ("False", "ListenersNotValid"),
     {"invalid": ("False", "UnsupportedProtocol")}),
    ([listener("http", 80, "HTTP"), listener("invalid", 1111, "INVALID")], ("False", "ListenersNotValid"),
     {"http": ("False", "UnsupportedProtocol"), "invalid": ("False", "UnsupportedProtocol")}),
    ([listener("tcp", 9000), listener("tls", 443, "TLS", tls={"mode": "Passthrough"}),
      listener("custom", 9001, "example.com/proto")], ("True", "ListenersNotValid"),
     {"tcp": ("True", "Accepted"), "tls": ("False", "UnsupportedProtocol"),
      "custom": ("False", "UnsupportedProtocol")}),
    ([listener("tcp", 53), listener("udp", 53, "UDP")], ("True", "Accepted"),
     {"tcp": ("True", "Accepted"), "udp": ("True", "Accepted")}),
])
def test_listener_protocols(listeners, gateway_accepted, states):
    m = build(gateway(listeners=listeners))
    gw = m.gateway(NS, "gw")
    assert conds(gw.conditions)["Accepted"] == gateway_accepted
    assert {li.name: conds(li.conditions)["Accepted"] for li in gw.listeners} == states
    for li in gw.listeners:
        if states[li.name][0] == "False":
            assert li.supported_kinds == () and conds(li.conditions)["Programmed"] == ("False", "Invalid")
    assert {f.listener for f in m.frontends} == {n for n, s in states.items() if s[0] == "True"}


def test_two_gateways_on_one_address_and_port_the_oldest_holds_it():
    older = gateway("b-older", created="2024-01-01T00:00:00Z", listeners=[listener("tcp", 9000),
                                                                         listener("other", 9001)])
    newer = gateway("a-newer", created="2024-06-01T00:00:00Z",
                    listeners=[listener("tcp", 9000), listener("udp", 9000, "UDP")])
    m = build(older, newer)
    a = listener_status(m, "tcp", gw="a-newer")
    assert conds(a.conditions)["Accepted"] == ("False", "PortUnavailable")
    assert condition(a.conditions, "Accepted").message == (
        "192.0.2.10:9000/TCP is already used by Gateway demo/b-older listener tcp")
    # Another protocol on the same port is another frontend.
    assert conds(listener_status(m, "udp", gw="a-newer").conditions)["Accepted"] == ("True", "Accepted")
    assert conds(m.gateway(NS, "a-newer").conditions)["Accepted"] == ("True", "ListenersNotValid")
    assert conds(listener_status(m, "tcp", gw="b-older").conditions)["Accepted"] == ("True", "Accepted")
    assert {(f.gateway, f.port, f.protocol) for f in m.frontends} == {
        ("demo/b-older", 9000, "TCP"), ("demo/b-older", 9001, "TCP"), ("demo/a-newer", 9000, "UDP")}


def test_without_timestamps_the_first_by_namespace_and_name_holds_it():
    m = build(gateway("b"), gateway("a"))
    assert conds(listener_status(m, gw="a").conditions)["Accepted"] == ("True", "Accepted")
    assert conds(listener_status(m, gw="b").conditions)["Accepted"] == ("False", "PortUnavailable")
    assert conds(m.gateway(NS, "b").conditions)["Accepted"] == ("False", "ListenersNotValid")


def test_a_frontend_a_service_holds_is_port_unavailable():
    m = build(gateway(), taken={("192.0.2.10", 9000, "TCP"): "Service demo/lb"})
    li = listener_status(m)
    assert conds(li.conditions)["Accepted"] == ("False", "PortUnavailable")
    assert "already used by Service demo/lb" in condition(li.conditions, "Accepted").message
    assert not m.frontends


def test_gateway_invalid_route_kind():
    """GatewayInvalidRouteKind: kinds ebpflb cannot serve on the listener are InvalidRouteKinds;
    the valid ones stay in supportedKinds."""
    m = build(gateway(listeners=[
        listener("only-invalid", 9000, allowedRoutes={"kinds": [{"kind": "InvalidRoute"}]}),
        listener("mixed", 9001, allowedRoutes={"kinds": [{"kind": "InvalidRoute"}, {"kind": "TCPRoute"},
                                                         {"kind": "UDPRoute"}]}),
        listener("wrong-group", 9002, allowedRoutes={"kinds": [{"group": "example.com", "kind": "TCPRoute"}]}),
    ]), route(parents=[{"name": "gw"}]), *service())
    only = listener_status(m, "only-invalid")
    assert conds(only.conditions)["ResolvedRefs"] == ("False", "InvalidRouteKinds")
    assert only.supported_kinds == () and only.attached_routes == 0
    mixed = listener_status(m, "mixed")
    assert conds(mixed.conditions)["ResolvedRefs"] == ("False", "InvalidRouteKinds")
    assert [k.kind for k in mixed.supported_kinds] == ["TCPRoute"] and mixed.attached_routes == 1
    assert listener_status(m, "wrong-group").supported_kinds == ()
    # The route attaches where its kind is taken.
    assert parent(m).listeners == ("mixed",)


# --- routes: attachment -----------------------------------------------------------------------
SELECTOR = {"matchLabels": {"team": "a"}}
EXPRESSIONS = {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "stage"]},
                                    {"key": "legacy", "operator": "DoesNotExist"}]}


@pytest.mark.parametrize("allowed,route_ns,ns_labels,expected", [
    (None, NS, {}, ("True", "Accepted")),  # default: Same
    (None, "other", {}, ("False", "NotAllowedByListeners")),
    ({"from": "Same"}, "other", {}, ("False", "NotAllowedByListeners")),
    ({"from": "All"}, "other", {}, ("True", "Accepted")),
    ({"from": "Selector", "selector": SELECTOR}, "other", {"team": "a"}, ("True", "Accepted")),
    ({"from": "Selector", "selector": SELECTOR}, "other", {"team": "b"}, ("False", "NotAllowedByListeners")),
    ({"from": "Selector", "selector": SELECTOR}, "other", None, ("False", "NotAllowedByListeners")),
    # Selector applies to the Gateway's own namespace too.
    ({"from": "Selector", "selector": SELECTOR}, NS, None, ("False", "NotAllowedByListeners")),
    ({"from": "Selector", "selector": EXPRESSIONS}, "other", {"env": "prod"}, ("True", "Accepted")),
    ({"from": "Selector", "selector": EXPRESSIONS}, "other", {"env": "prod", "legacy": "y"},
     ("False", "NotAllowedByListeners")),
    ({"from": "Selector", "selector": EXPRESSIONS}, "other", {"env": "dev"}, ("False", "NotAllowedByListeners")),
    # Every namespace has its name label, Namespace object or not.
    ({"from": "Selector", "selector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}}},
     "other", None, ("True", "Accepted")),
    ({"from": "Selector", "selector": {}}, "other", None, ("True", "Accepted")),  # empty: everything
])
def test_allowed_routes(allowed, route_ns, ns_labels, expected):
    lst = listener(allowedRoutes={"namespaces": allowed}) if allowed else listener()
    docs: List[Any] = [gateway(listeners=[lst]),
                       route(ns=route_ns, parents=[{"name": "gw", "namespace": NS}]),
                       *service(ns=route_ns)]
    if ns_labels is not None:
        docs.append(namespace(route_ns, **ns_labels))
    m = build(*docs)
    st = m.route("TCPRoute", route_ns, "r").parents[0]
    assert conds(st.conditions)["Accepted"] == expected
    assert listener_status(m).attached_routes == (1 if expected[0] == "True" else 0)
    assert (frontend(m).route is not None) == (expected[0] == "True")


@pytest.mark.parametrize("selector,labels,matches", [
    (LabelSelector(), {}, True),
    (LabelSelector((("a", "1"),)), {"a": "1"}, True),
    (LabelSelector((("a", "1"),)), {"a": "2"}, False),
    (LabelSelector((), (SelectorRequirement("a", "In", ("1", "2")),)), {"a": "2"}, True),
    (LabelSelector((), (SelectorRequirement("a", "In", ("1",)),)), {}, False),
    (LabelSelector((), (SelectorRequirement("a", "NotIn", ("1",)),)), {}, True),
    (LabelSelector((), (SelectorRequirement("a", "NotIn", ("1",)),)), {"a": "1"}, False),
    (LabelSelector((), (SelectorRequirement("a", "Exists"),)), {"a": ""}, True),
    (LabelSelector((), (SelectorRequirement("a", "DoesNotExist"),)), {"a": ""}, False),
])
def test_label_selector(selector, labels, matches):
    assert selector.matches(labels) is matches
    allowed = AllowedRoutes("Selector", selector)
    assert namespace_allowed(allowed, "gw-ns", "route-ns", labels) is matches


MULTI = [listener("one", 9310), listener("two", 9311), listener("three", 9312), listener("four", 9313)]


@pytest.mark.parametrize("case,ref,attached,reason", [
    ("TCPRouteParentRefAttachAll", {}, ["one", "two", "three", "four"], "Accepted"),
    ("TCPRouteParentRefPortAndSectionName/by port", {"port": 9310}, ["one"], "Accepted"),
    ("TCPRouteParentRefPortAndSectionName/by sectionName", {"sectionName": "two"}, ["two"], "Accepted"),
    ("TCPRouteParentRefPortAndSectionName/by both", {"sectionName": "three", "port": 9312}, ["three"],
     "Accepted"),
    ("sectionName and port of two listeners", {"sectionName": "three", "port": 9310}, [], "NoMatchingParent"),
    ("no such sectionName", {"sectionName": "five"}, [], "NoMatchingParent"),
    ("no such port", {"port": 9999}, [], "NoMatchingParent"),
])
def test_section_name_and_port(case, ref, attached, reason):
    m = build(gateway(listeners=MULTI), route(parents=[{"name": "gw", **ref}]), *service())
    st = parent(m)
    assert list(st.listeners) == attached, case
    assert conds(st.conditions)["Accepted"] == ("True" if attached else "False", reason), case
    served = sorted(f.listener for f in m.frontends if f.route == "TCPRoute demo/r")
    assert served == sorted(attached)
    gw = m.gateway(NS, "gw")
    assert {li.name: li.attached_routes for li in gw.listeners} == {
        n: int(n in attached) for n in ("one", "two", "three", "four")}


def test_udproute_parentref_port_and_section_name():
    """UDPRouteParentRefPortAndSectionName and UDPRouteParentRefAttachAllListeners."""
    listeners = [listener("by-port", 5300, "UDP"), listener("by-section", 5301, "UDP"),
                 listener("by-section-and-port", 5302, "UDP")]
    m = build(gateway(listeners=listeners),
              route("by-port", kind="UDPRoute", parents=[{"name": "gw", "port": 5300}],
                    backends=[{"name": "dns", "port": 53}]),
              route("by-section", kind="UDPRoute", parents=[{"name": "gw", "sectionName": "by-section"}],
                    backends=[{"name": "dns", "port": 53}]),
              route("by-both", kind="UDPRoute",
                    parents=[{"name": "gw", "sectionName": "by-section-and-port", "port": 5302}],
                    backends=[{"name": "dns", "port": 53}]),
              *service("dns", port=53, protocol="UDP", target=5353))
    assert {f.listener: f.route for f in m.frontends} == {
        "by-port": "UDPRoute demo/by-port", "by-section": "UDPRoute demo/by-section",
        "by-section-and-port": "UDPRoute demo/by-both"}
    assert all(f.protocol == "UDP" and split(m, f.port, "UDP") == {"10.244.0.1:5353": 1}
               for f in m.frontends)


def test_udproute():
    """UDPRoute (udproute-simple): a UDP listener serves a UDPRoute's Service."""
    m = build(gateway(listeners=[listener("coredns", 5300, "UDP")]),
              route(kind="UDPRoute", parents=[{"name": "gw", "sectionName": "coredns"}],
                    backends=[{"name": "coredns", "port": 53}]),
              *service("coredns", port=53, protocol="UDP", target=53, endpoints=["10.244.0.5"]))
    assert accepted(m, kind="UDPRoute") == ("True", "Accepted")
    assert resolved_refs(m, kind="UDPRoute") == ("True", "ResolvedRefs")
    assert split(m, 5300, "UDP") == {"10.244.0.5:53": 1}


@pytest.mark.parametrize("case,kind,listeners,ref", [
    ("TCPRouteInvalidNonTCPListener", "TCPRoute",
     [listener("only-allow-http-routes", 5300, "HTTP", allowedRoutes={"kinds": [{"kind": "HTTPRoute"}]})],
     {"sectionName": "only-allow-http-routes"}),
    ("UDPRouteNotAllowedByListeners", "UDPRoute",
     [listener("tls", 443, "TLS", tls={"mode": "Passthrough"})], {"sectionName": "tls"}),
    ("UDPRoute on a TCP listener", "UDPRoute", [listener("tcp", 9000)], {}),
    ("TCPRoute on a UDP listener", "TCPRoute", [listener("udp", 9000, "UDP")], {}),
    ("TCPRoute where only UDPRoutes are allowed", "TCPRoute",
     [listener("tcp", 9000, allowedRoutes={"kinds": [{"kind": "UDPRoute"}]})], {}),
])
def test_not_allowed_by_listeners(case, kind, listeners, ref):
    m = build(gateway(listeners=listeners), route(kind=kind, parents=[{"name": "gw", **ref}]),
              *service())
    assert accepted(m, kind=kind) == ("False", "NotAllowedByListeners"), case
    assert all(li.attached_routes == 0 for li in m.gateway(NS, "gw").listeners)


@pytest.mark.parametrize("kind", ["TCPRoute", "UDPRoute"])
def test_multiple_routes_attachment(kind):
    """TCPRouteMultipleRoutesAttachment / UDPRouteMultipleRoutesAttachment: both routes are
    Accepted and counted; only the oldest is served."""
    proto = "TCP" if kind == "TCPRoute" else "UDP"
    m = build(gateway(listeners=[listener("l", 9310, proto)]),
              route("attach-older", kind=kind, created="2024-01-01T00:00:01Z",
                    backends=[{"name": "backend-1", "port": 3000}]),
              route("attach-newer", kind=kind, created="2024-01-01T00:00:02Z",
                    backends=[{"name": "backend-2", "port": 3000}]),
              *service("backend-1", port=3000, protocol=proto, endpoints=["10.244.0.1"]),
              *service("backend-2", port=3000, protocol=proto, endpoints=["10.244.0.2"]))
    assert accepted(m, "attach-older", kind) == ("True", "Accepted")
    assert accepted(m, "attach-newer", kind) == ("True", "Accepted")
    assert condition(parent(m, "attach-newer", kind).conditions, "Accepted").message == (
        f"listener l serves the older {kind} demo/attach-older")
    assert listener_status(m, "l").attached_routes == 2
    assert frontend(m, 9310, proto).route == f"{kind} demo/attach-older"
    assert split(m, 9310, proto) == {"10.244.0.1:8080": 1}


def test_without_timestamps_routes_go_by_namespace_and_name():
    m = build(gateway(), route("b", backends=[{"name": "b", "port": 80}]),
              route("a", backends=[{"name": "a", "port": 80}]),
              *service("a", endpoints=["10.244.0.1"]), *service("b", endpoints=["10.244.0.2"]))
    assert frontend(m).route == "TCPRoute demo/a"


def test_several_rules_of_a_v1alpha2_route_serve_the_first():
    m = build(gateway(), route(api=V1ALPHA2, rules=[{"backendRefs": [{"name": "a", "port": 80}]},
                                                     {"backendRefs": [{"name": "b", "port": 80}]}]),
              *service("a", endpoints=["10.244.0.1"]), *service("b", endpoints=["10.244.0.2"]))
    c = conds(parent(m).conditions)
    assert c["Accepted"] == ("True", "Accepted")
    assert c["PartiallyInvalid"] == ("True", "UnsupportedValue")
    assert condition(parent(m).conditions, "PartiallyInvalid").message.startswith("Dropped Rule(s) rules[1]")
    assert split(m) == {"10.244.0.1:8080": 1}


def test_matching_listeners():
    ls = [Listener("a", 80, "TCP"), Listener("b", 81, "TCP"), Listener("c", 80, "UDP")]
    assert [li.name for li in matching_listeners(ls, ParentRef("gw"))] == ["a", "b", "c"]
    assert [li.name for li in matching_listeners(ls, ParentRef("gw", port=80))] == ["a", "c"]
    assert [li.name for li in matching_listeners(ls, ParentRef("gw", section_name="c", port=80))] == ["c"]
    assert matching_listeners(ls, ParentRef("gw", section_name="c", port=81)) == []


# --- routes: backend references ---------------------------------------------------------------
GRANTS = [ReferenceGrant("backend", "g1", (GrantFrom("gateway.networking.k8s.io", "TCPRoute", NS),),
                         (GrantTo("", "Service"),)),
          ReferenceGrant("named", "g2", (GrantFrom("gateway.networking.k8s.io", "UDPRoute", NS),),
                         (GrantTo("", "Service", "dns"),))]


@pytest.mark.parametrize("from_kind,from_ns,to_kind,to_ns,to_name,permitted", [
    ("TCPRoute", NS, "Service", NS, "web", True),  # same namespace: no grant needed
    ("TCPRoute", NS, "Service", "backend", "web", True),
    ("TCPRoute", NS, "Service", "backend", "anything", True),  # no name: every Service
    ("UDPRoute", NS, "Service", "backend", "web", False),  # the grant names TCPRoutes
    ("TCPRoute", "other", "Service", "backend", "web", False),  # from another namespace
    ("TCPRoute", NS, "Secret", "backend", "web", False),  # to another kind
    ("UDPRoute", NS, "Service", "named", "dns", True),  # name-limited
    ("UDPRoute", NS, "Service", "named", "web", False),
    ("TCPRoute", NS, "Service", "elsewhere", "web", False),  # no grant in that namespace
])
def test_reference_permitted(from_kind, from_ns, to_kind, to_ns, to_name, permitted):
    group = "" if to_kind in ("Service", "Secret") else "x"
    assert reference_permitted(GRANTS, "gateway.networking.k8s.io", from_kind, from_ns, group,
                               to_kind, to_ns, to_name) is permitted


@pytest.mark.parametrize("case,grant_doc,reason", [
    ("TCPRouteReferenceGrant", grant(to_name="xns"), ("True", "ResolvedRefs")),
    ("every Service of the namespace", grant(), ("True", "ResolvedRefs")),
    ("TCPRouteInvalidCrossNamespaceBackendRef", None, ("False", "RefNotPermitted")),
    ("grant for another Service", grant(to_name="other"), ("False", "RefNotPermitted")),
    ("grant for UDPRoutes", grant(from_kind="UDPRoute"), ("False", "RefNotPermitted")),
    ("grant for another namespace's routes", grant(from_ns="other"), ("False", "RefNotPermitted")),
    ("grant to Secrets", grant(to_kind="Secret"), ("False", "RefNotPermitted")),
    ("grant from another group", grant(from_group="example.com"), ("False", "RefNotPermitted")),
    ("grant in the route's namespace", grant(ns=NS), ("False", "RefNotPermitted")),
])
def test_cross_namespace_backend_refs(case, grant_doc, reason):
    docs = [gateway(), route(backends=[{"name": "xns", "namespace": "backend", "port": 3000}]),
            *service("xns", ns="backend", port=3000)]
    m = build(*docs, *([grant_doc] if grant_doc else []))
    # The route is Accepted on its parent whatever its backends: only their resolution fails.
    assert accepted(m) == ("True", "Accepted"), case
    assert resolved_refs(m) == reason, case
    if reason[0] == "True":
        assert split(m) == {"10.244.0.1:8080": 1} and frontend(m).reject_weight == 0
    else:
        assert split(m) == {} and frontend(m).reject_weight == 1
        assert "no ReferenceGrant there allows TCPRoutes from demo" in condition(
            parent(m).conditions, "ResolvedRefs").message


def test_udproute_reference_grant():
    """UDPRouteReferenceGrant and UDPRouteInvalidCrossNamespaceBackendRef."""
    docs = [gateway(listeners=[listener("udp", 5300, "UDP")]),
            route(kind="UDPRoute", backends=[{"name": "dns", "namespace": "backend", "port": 53}]),
            *service("dns", ns="backend", port=53, protocol="UDP")]
    assert resolved_refs(build(*docs), kind="UDPRoute") == ("False", "RefNotPermitted")
    m = build(*docs, grant(from_kind="UDPRoute", to_name="dns"))
    assert resolved_refs(m, kind="UDPRoute") == ("True", "ResolvedRefs")
    assert split(m, 5300, "UDP") == {"10.244.0.1:8080": 1}


@pytest.mark.parametrize("case,backend,reason,message", [
    ("TCPRouteInvalidBackendRefNonexistent", {"name": "nonexistent-service", "port": 8080},
     "BackendNotFound", "rules[0].backendRefs[0]: Service demo/nonexistent-service not found"),
    ("a port the Service does not have", {"name": "web", "port": 81},
     "BackendNotFound", "rules[0].backendRefs[0]: Service demo/web has no TCP port 81"),
    ("another kind", {"name": "web", "kind": "ConfigMap", "port": 80},
     "InvalidKind", "rules[0].backendRefs[0]: ConfigMap is not a kind ebpflb sends traffic to"),
    ("another group", {"name": "web", "group": "example.com", "kind": "Service", "port": 80},
     "InvalidKind", "example.com/Service is not a kind"),
    ("an ExternalName Service", {"name": "ext", "port": 80},
     "BackendNotFound", "Service demo/ext is of type ExternalName"),
])
def test_backends_that_do_not_resolve(case, backend, reason, message):
    ext = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext", "namespace": NS},
           "spec": {"type": "ExternalName", "externalName": "example.com"}}
    m = build(gateway(), route(backends=[backend]), *service(), ext)
    assert accepted(m) == ("True", "Accepted"), case
    assert resolved_refs(m) == ("False", reason), case
    assert message in condition(parent(m).conditions, "ResolvedRefs").message, case
    assert split(m) == {} and frontend(m).reject_weight == 1


def test_udproute_invalid_backendref_nonexistent():
    m = build(gateway(listeners=[listener("udp", 5300, "UDP")]),
              route(kind="UDPRoute", backends=[{"name": "nonexistent", "port": 53}]))
    assert resolved_refs(m, kind="UDPRoute") == ("False", "BackendNotFound")


def test_a_udproute_needs_a_udp_service_port():
    m = build(gateway(listeners=[listener("udp", 5300, "UDP")]),
              route(kind="UDPRoute", backends=[{"name": "web", "port": 80}]), *service())
    assert resolved_refs(m, kind="UDPRoute") == ("False", "BackendNotFound")
    assert "Service demo/web has no UDP port 80" in condition(
        parent(m, kind="UDPRoute").conditions, "ResolvedRefs").message


def test_the_first_failing_backend_gives_the_reason_and_the_message_names_all():
    m = build(gateway(), route(backends=[{"name": "web", "port": 80},
                                         {"name": "gone", "port": 80},
                                         {"name": "xns", "namespace": "backend", "port": 80}]),
              *service())
    c = condition(parent(m).conditions, "ResolvedRefs")
    assert (c.status, c.reason) == ("False", "BackendNotFound")
    assert c.message == ("rules[0].backendRefs[1]: Service demo/gone not found; "
                         "rules[0].backendRefs[2]: Service backend/xns is in another namespace and "
                         "no ReferenceGrant there allows TCPRoutes from demo")
    # The valid backend keeps its share; the two others' are rejected.
    assert split(m) == {"10.244.0.1:8080": 1} and frontend(m).reject_weight == 2


# --- weights ----------------------------------------------------------------------------------
@pytest.mark.parametrize("groups,rejected,weights,reject", [
    # 90/10 over 3 and 2 endpoints: shares 30, 30, 30, 5, 5 -> the smallest integers.
    ([(90, "abc"), (10, "de")], 0, {"a": 6, "b": 6, "c": 6, "d": 1, "e": 1}, 0),
    ([(70, "a"), (30, "b"), (0, "c")], 0, {"a": 7, "b": 3, "c": 0}, 0),  # weight 0 drains
    ([(1, "ab")], 0, {"a": 1, "b": 1}, 0),
    ([(50, "ab"), (50, "cde")], 0, {"a": 3, "b": 3, "c": 2, "d": 2, "e": 2}, 0),
    ([(1, "ab"), (1, "bc")], 0, {"a": 1, "b": 2, "c": 1}, 0),  # an endpoint of two Services
    ([(80, "a")], 20, {"a": 4}, 1),  # 20 of 100 rejected
    ([(0, "ab")], 0, {"a": 0, "b": 0}, 0),  # nothing takes new flows
    ([(0, "a")], 5, {"a": 0}, 1),
    ([], 3, {}, 1),
    ([(7, "abcdefg"), (11, "hijklmnopqr")], 0, {**dict.fromkeys("abcdefg", 1),
                                                **dict.fromkeys("hijklmnopqr", 1)}, 0),
])
def test_split_weights(groups, rejected, weights, reject):
    assert split_weights([(w, list(keys)) for w, keys in groups], rejected) == (weights, reject)


def test_split_weights_beyond_the_cap_rounds_and_keeps_every_positive_share():
    big = [f"big{i}" for i in range(997)]
    small = [f"small{i}" for i in range(991)]
    weights, reject = split_weights([(1_000_000, big), (1, small), (0, ["drained"])], 1)
    assert max(weights.values()) == MAX_ENDPOINT_WEIGHT
    assert {weights[k] for k in big} == {MAX_ENDPOINT_WEIGHT}
    # Each small endpoint's exact share is 0.066 units: a positive share never becomes 0. The
    # reject share (1 against 1,000,000/997 per big endpoint) is 65.3 units, rounded.
    assert {weights[k] for k in small} == {1} and weights["drained"] == 0 and reject == 65


def test_split_weights_rounding_error_is_at_most_half_a_unit():
    groups = [(999_983, [f"a{i}" for i in range(101)]), (3, [f"b{i}" for i in range(103)]),
              (500_000, [f"c{i}" for i in range(107)])]
    weights, _ = split_weights(groups, 0)
    top = 999_983 / 101
    for w, keys in groups:
        exact = w / len(keys) * MAX_ENDPOINT_WEIGHT / top
        for k in keys:
            assert abs(weights[k] - max(exact, 1)) <= 0.5 or (exact < 1 and weights[k] == 1)


@pytest.mark.parametrize("case,refs,services,expected,reject", [
    ("TCPRouteWeightedRouting", [("v1", 70), ("v2", 30), ("v3", 0)],
     {"v1": ["10.244.0.1"], "v2": ["10.244.0.2"], "v3": ["10.244.0.3"]},
     {"10.244.0.1:8080": 7, "10.244.0.2:8080": 3, "10.244.0.3:8080": 0}, 0),
    ("90/10 canary over 3 and 2 endpoints", [("stable", 90), ("canary", 10)],
     {"stable": ["10.244.0.1", "10.244.0.2", "10.244.0.3"], "canary": ["10.244.1.1", "10.244.1.2"]},
     {"10.244.0.1:8080": 6, "10.244.0.2:8080": 6, "10.244.0.3:8080": 6,
      "10.244.1.1:8080": 1, "10.244.1.2:8080": 1}, 0),
    ("a Service with no ready endpoint: its share is rejected", [("stable", 90), ("canary", 10)],
     {"stable": ["10.244.0.1"], "canary": [("10.244.1.1", False)]}, {"10.244.0.1:8080": 9}, 1),
    ("only ready endpoints share", [("stable", 1)],
     {"stable": ["10.244.0.1", ("10.244.0.2", False), "10.244.0.3"]},
     {"10.244.0.1:8080": 1, "10.244.0.3:8080": 1}, 0),
    ("a missing Service: its share is rejected", [("stable", 75), ("gone", 25)],
     {"stable": ["10.244.0.1"]}, {"10.244.0.1:8080": 3}, 1),
    ("every weight 0: every endpoint drains", [("stable", 0), ("canary", 0)],
     {"stable": ["10.244.0.1"], "canary": ["10.244.1.1"]},
     {"10.244.0.1:8080": 0, "10.244.1.1:8080": 0}, 0),
    ("one Service twice: its weights add up", [("stable", 1), ("stable", 2), ("canary", 1)],
     {"stable": ["10.244.0.1"], "canary": ["10.244.1.1"]},
     {"10.244.0.1:8080": 3, "10.244.1.1:8080": 1}, 0),
])
def test_weighted_backends(case, refs, services, expected, reject):
    docs = [s for name, eps in services.items() for s in service(name, endpoints=eps)]
    m = build(gateway(), route(backends=[{"name": n, "port": 80, "weight": w} for n, w in refs]), *docs)
    assert split(m) == expected, case
    assert frontend(m).reject_weight == reject, case


def test_a_missing_port_rejects_its_share():
    m = build(gateway(), route(backends=[{"name": "web", "port": 80, "weight": 3},
                                         {"name": "web", "port": 81, "weight": 1}]), *service())
    assert resolved_refs(m) == ("False", "BackendNotFound")
    assert split(m) == {"10.244.0.1:8080": 3} and frontend(m).reject_weight == 1


def test_endpoint_readiness_is_the_models():
    """publishNotReadyAddresses takes every endpoint; with none ready, serving and terminating
    ones keep answering (ebpflb.model's rules, reused)."""
    docs = service(endpoints=[("10.244.0.1", False), ("10.244.0.2", False)],
                   publishNotReadyAddresses=True)
    assert split(build(gateway(), route(), *docs)) == {"10.244.0.1:8080": 1, "10.244.0.2:8080": 1}
    svc, slc = service()
    slc["endpoints"] = [{"addresses": ["10.244.0.1"],
                         "conditions": {"ready": False, "serving": True, "terminating": True}},
                        {"addresses": ["10.244.0.2"], "conditions": {"ready": False}}]
    assert split(build(gateway(), route(), svc, slc)) == {"10.244.0.1:8080": 1}


def test_the_services_traffic_policies_do_not_apply_to_the_gateway():
    docs = service(endpoints=["10.244.0.1", "10.244.0.2"], internalTrafficPolicy="Local")
    assert len(split(build(gateway(), route(), *docs))) == 2


def test_a_listener_without_a_route_is_a_frontend_with_no_backend():
    """Its traffic is rejected by the data plane, not passed to the node."""
    m = build(gateway())
    fe = frontend(m)
    assert fe.route is None and fe.backends == () and fe.reject_weight == 0


def test_to_frontend_feeds_weighted_maglev():
    """90/10 through the planner's own slot computation: each Service's share of the Maglev
    table is its weight's, within the table's resolution."""
    m = build(gateway(), route(backends=[{"name": "stable", "port": 80, "weight": 90},
                                         {"name": "canary", "port": 80, "weight": 10}]),
              *service("stable", endpoints=["10.244.0.1", "10.244.0.2", "10.244.0.3"]),
              *service("canary", endpoints=["10.244.1.1", "10.244.1.2"]))
    fe, backends = frontend(m).to_frontend()
    assert (fe.vip, fe.port, fe.protocol, fe.service, fe.port_name, fe.kind) == (
        "192.0.2.10", 9000, "TCP", "Gateway demo/gw", "tcp", "ExternalIP")
    assert fe.policy.algorithm == "maglev" and fe.policy.endpoint_weights == (
        ("10.244.0.1", 8080, 6), ("10.244.0.2", 8080, 6), ("10.244.0.3", 8080, 6),
        ("10.244.1.1", 8080, 1), ("10.244.1.2", 8080, 1))
    slots, _ = frontend_slots(fe, backends, PlanDefaults())
    assert len(slots) == 16381
    per_ip = Counter(backends[i].ip for i in slots)
    canary = per_ip["10.244.1.1"] + per_ip["10.244.1.2"]
    assert abs(canary / len(slots) - 0.10) < 0.005
    for ip in ("10.244.0.1", "10.244.0.2", "10.244.0.3"):
        assert abs(per_ip[ip] / len(slots) - 0.30) < 0.005


def test_moving_weight_moves_few_flows():
    """90/10 -> 50/50 on the same endpoints: close to the 40% of new flows that must move from
    stable to canary move, not a reshuffle (Maglev)."""
    names = [f"10.244.0.{i}:8080".encode() for i in (1, 2, 3)] + [b"10.244.1.1:8080", b"10.244.1.2:8080"]
    before_w, _ = split_weights([(90, names[:3]), (10, names[3:])])
    after_w, _ = split_weights([(50, names[:3]), (50, names[3:])])
    before = maglev_table(names, 16381, [before_w[n] for n in names])
    after = maglev_table(names, 16381, [after_w[n] for n in names])
    moved = sum(a != b for a, b in zip(before, after)) / 16381
    assert 0.40 <= moved < 0.40 + 0.10


def test_one_pod_on_two_ports_has_a_weight_per_port():
    """Two backendRefs whose Services reach the same pod on two ports: each (IP, port) keeps its
    own share, in the slots the planner computes."""
    m = build(gateway(), route(backends=[{"name": "a", "port": 80, "weight": 2},
                                         {"name": "b", "port": 80, "weight": 1}]),
              *service("a", endpoints=["10.244.0.1"], target=8080),
              *service("b", endpoints=["10.244.0.1"], target=9090))
    assert split(m) == {"10.244.0.1:8080": 2, "10.244.0.1:9090": 1}
    fe, backends = frontend(m).to_frontend()
    slots, _ = frontend_slots(fe, backends, PlanDefaults())
    per_port = Counter(backends[i].port for i in slots)
    assert abs(per_port[8080] / len(slots) - 2 / 3) < 0.005


def test_the_reject_share_has_slots_of_its_own():
    """A backendRef that does not resolve keeps its weight: its share of the slots is the
    reject share (index len(backends)), the rest split as the weights say."""
    m = build(gateway(), route(backends=[{"name": "stable", "port": 80, "weight": 3},
                                         {"name": "missing", "port": 80, "weight": 1}]),
              *service("stable", endpoints=["10.244.0.1"]))
    fe, backends = frontend(m).to_frontend()
    assert fe.policy.reject_weight == 1 and len(backends) == 1
    slots, _ = frontend_slots(fe, backends, PlanDefaults())
    assert abs(slots.count(len(backends)) / len(slots) - 0.25) < 0.005


def test_hostile_kinds_are_errors_not_crashes():
    read = read_objects([{"kind": ["Gateway"], "metadata": {"name": "x"}},
                         {"kind": {"a": 1}, "apiVersion": V1, "metadata": {"name": "y"}}], "f.yaml")
    assert [str(e) for e in read.errors] == [
        'f.yaml: document 1: kind: ["Gateway"] is not a valid kind',
        'f.yaml: document 2: kind: {"a": 1} is not a valid kind']
    c = convert_gateway_document({"kind": ["GatewayClass"], "metadata": {"name": "x"}}, "d")
    assert c.refused and c.problems == ((("kind",), '["GatewayClass"] is not a valid kind'),)


def test_referenced_services():
    read = read_objects([route("a", backends=[{"name": "web", "port": 80},
                                              {"name": "x", "namespace": "backend", "port": 80},
                                              {"name": "cm", "kind": "ConfigMap", "port": 80}]),
                         route("b", kind="UDPRoute", backends=[{"name": "dns", "port": 53}])], "f")
    assert gwmod.referenced_services(read.gateway) == {(NS, "web"), ("backend", "x"), (NS, "dns")}


def test_the_model_is_a_function_of_the_objects():
    docs = [gateway(), route(backends=[{"name": "web", "port": 80, "weight": 3}]), *service()]
    assert build(*docs) == build(*reversed(docs))
