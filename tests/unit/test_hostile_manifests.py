"""Hostile manifests (issue 9, part 5), property-based: Services and EndpointSlices that are mostly
valid Kubernetes with mutations (wrong types, missing fields, out-of-range ports, bad and forbidden
addresses, bad names, duplicates, huge strings, unicode, nested garbage, clashing frontends,
unknown protocols), serialised as YAML or JSON and sometimes broken as text.

Every input either parses, and then the model and the planner take it, or is refused as a whole
with ManifestErrors whose every error says what is wrong and where; never a bare Python exception,
never a partial result, the same answer every time. The bpf tier applies the same inputs to real
maps (tests/bpf/test_hostile_manifests_apply.py)."""
import copy
import ipaddress
import json
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from ebpflb.backend_rules import (DEFAULT_SERVICE_CIDRS, check_backends, forbidden_backend,
                                  parse_service_cidrs)
from ebpflb.draining import is_draining, without_draining
from ebpflb.manifests import ManifestError, ManifestErrors, Manifests, parse_documents
from ebpflb.maps import BACKENDS, SERVICES, SLOTS, SVC_META, Snapshot, empty_snapshot
from ebpflb.model import DesiredState, Endpoint, EndpointSlice, desired_state
from ebpflb.plan import PlanDefaults, apply_to, compute_plan

pytestmark = pytest.mark.unit

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                derandomize=False)

# Small pools, so that generated Services and slices link up and frontends clash.
NAMES = ["web", "dns", "api", "db"]
NAMESPACES = ["demo", "default"]
VIPS = ["10.96.0.10", "10.96.0.11", "10.96.0.20", "10.96.1.1", "10.96.1.2"]
POD_IPS = [f"10.244.0.{i}" for i in range(1, 7)]
FORBIDDEN_IPS = ["127.0.0.1", "127.1.2.3", "169.254.169.254", "169.254.0.1", "0.0.0.0", "0.0.0.1",
                 "224.0.0.1", "239.1.1.1", "255.255.255.255", "10.96.0.10", "10.111.0.1"]
BAD_IPS = ["10.0.0.256", "10.0.0.010", "fd00::1", "::ffff:10.244.0.1", "", "localhost",
           "fe80::1%eth0", "fd00::1%x",
           " 10.244.0.1", "10.244.0.1\n", "١٠.٢٤٤.٠.١", "10.244.0.1/32", "1e3"]
PORT_NAMES = ["http", "dns", ""]
SLICE_PORTS = [8080, 9053, 53]


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
keys = st.one_of(st.sampled_from(["port", "name", "addresses", "", "1", "null", "kind"]), st.text(max_size=6))
garbage = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)), max_leaves=5)
huge_text = st.integers(64, 20_000).map(lambda n: "x" * n)
odd_text = st.one_of(st.text(min_size=1, max_size=20), huge_text,
                     st.sampled_from(["Web", "web_1", "-web", "web-", "1web", "wéb", "a" * 64, "a.b",
                                      "null", "true", "0x10", "~", "*", "&a", "- x", "a: b", "'", '"']))


class Fields:
    """Strategies for every field ebpflb reads: only valid values (clean), or valid about three
    times in four and otherwise wrong in every way we could think of (hostile)."""

    def __init__(self, hostile: bool, table_sizes: Sequence[str] = ("251", "257")):
        def mostly(good: st.SearchStrategy, *bad: st.SearchStrategy) -> st.SearchStrategy:
            return st.one_of(good, good, good, st.one_of(*bad)) if hostile and bad else good

        self.mostly = mostly
        self.names = mostly(st.sampled_from(NAMES), odd_text, garbage)
        self.namespaces = mostly(st.sampled_from(NAMESPACES + [None]), odd_text, garbage)
        self.vips = mostly(st.sampled_from(VIPS), st.sampled_from(
            ["None", "", "fd00::10", "10.96.0.300", "127.0.0.1", "0.0.0.0", "255.255.255.255"]),
            st.ip_addresses(v=4).map(str), garbage)
        self.ports = mostly(st.sampled_from([80, 443, 53]), st.integers(-5, 70_000),
                            st.sampled_from(["80", True, False, 80.5, None, 2 ** 70, "http", "0x50"]), garbage)
        self.protocols = mostly(st.sampled_from(["TCP", "UDP", None]),
                                st.sampled_from(["SCTP", "tcp", "ICMP", 6, "", "TCP "]), garbage)
        self.port_names = mostly(st.sampled_from(PORT_NAMES + [None]),
                                 st.sampled_from(["Bad_Name", "-x", "a" * 70, "ünï", "a--b"]), garbage)
        self.target_ports = mostly(st.sampled_from([None, 8080, 9053, "http", "dns"]),
                                   st.sampled_from(["Http", "http--x", 0, 65536, "a" * 16, "8080"]), garbage)
        self.backend_ips = mostly(st.sampled_from(POD_IPS), st.sampled_from(FORBIDDEN_IPS),
                                  st.sampled_from(BAD_IPS), st.ip_addresses(v=4).map(str), garbage)
        booleans = mostly(st.booleans(), st.sampled_from(["true", 1, 0, "yes"]), garbage)
        # Clean ports are named (a Service with several ports must name them all).
        named = {"name": st.sampled_from(["http", "dns", "metrics"])} if not hostile else {}
        unnamed = {"name": self.port_names} if hostile else {}
        self.service_ports = st.fixed_dictionaries(
            {"port": self.ports, **named},
            optional={**unnamed, "protocol": self.protocols, "targetPort": self.target_ports})
        self.slice_ports = st.fixed_dictionaries(
            {"port": mostly(st.sampled_from(SLICE_PORTS), self.ports), **named},
            optional={**unnamed, "protocol": self.protocols})
        self.endpoints = st.fixed_dictionaries(
            {"addresses": mostly(st.lists(self.backend_ips, min_size=1, max_size=3), garbage)},
            optional={"conditions": mostly(st.fixed_dictionaries(
                {}, optional={"ready": booleans, "serving": booleans, "terminating": booleans}), garbage),
                "nodeName": mostly(st.just("node-0"), garbage),
                "targetRef": mostly(st.fixed_dictionaries(
                    {"kind": st.just("Pod"), "name": st.sampled_from(["p1", "p2"])}), garbage)})
        seconds = mostly(st.integers(1, 86400), st.integers(), st.sampled_from(["60", True, 1.5]), garbage)
        self.traffic = st.fixed_dictionaries({}, optional={
            "publishNotReadyAddresses": booleans,
            "internalTrafficPolicy": mostly(st.sampled_from(["Cluster", "Local"]), st.sampled_from(["local", ""]),
                                            garbage),
            "sessionAffinity": mostly(st.sampled_from(["None", "ClientIP"]), st.sampled_from(["clientip"]), garbage),
            "sessionAffinityConfig": mostly(
                st.fixed_dictionaries({"clientIP": st.fixed_dictionaries({}, optional={"timeoutSeconds": seconds})}),
                st.fixed_dictionaries({"clientIP": garbage}),
                st.sampled_from([{"clientIP": "x"}, {"clientIP": [1]}, [1], "x", {"clientIP": {"timeoutSeconds": 0}}]),
                garbage),
        })
        self.annotations = st.fixed_dictionaries({}, optional={
            "lb.ebpflb.io/algorithm": mostly(st.sampled_from(["maglev", "random"]),
                                             st.sampled_from(["Maglev", ""])),
            "lb.ebpflb.io/maglev-table-size": mostly(st.sampled_from(list(table_sizes)),
                                                     st.sampled_from(["4", "abc", "1" * 5000, 251])),
            "lb.ebpflb.io/backend-weights": mostly(
                st.sampled_from(["10.244.0.1=0", "10.244.0.1=0,10.244.0.2=3", "10.244.0.3=100"]),
                st.sampled_from(["10.244.0.1=101", "x=1", "10.244.0.1", "=", ",,,"])),
            "note": mostly(st.text(max_size=10), odd_text),
        })


@st.composite
def services(draw, f: Fields) -> Dict[str, Any]:
    meta: Dict[str, Any] = {"name": draw(f.names)}
    ns = draw(f.namespaces)
    if ns is not None:
        meta["namespace"] = ns
    if draw(st.booleans()):
        meta["annotations"] = draw(f.annotations)
    if draw(st.integers(0, 5)) == 0:
        meta["labels"] = draw(f.mostly(st.dictionaries(st.sampled_from(["app", "tier"]), st.text(max_size=5)),
                                       garbage))
    spec: Dict[str, Any] = {"ports": draw(f.mostly(
        st.lists(f.service_ports, min_size=1, max_size=3, unique_by=(
            lambda p: repr(p.get("name")), lambda p: repr((p.get("port"), p.get("protocol") or "TCP")))),
        st.just([]), garbage))}
    vip = draw(f.vips)
    if draw(st.integers(0, 3)):
        spec["clusterIP"] = vip
    elif draw(st.booleans()):
        spec["clusterIPs"] = draw(f.mostly(st.lists(f.vips, min_size=1, max_size=1), st.lists(f.vips), garbage))
    if draw(st.integers(0, 3)) == 0:
        spec["type"] = draw(f.mostly(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]),
                                     st.sampled_from(["Foo", ""]), garbage))
    if draw(st.booleans()):
        spec.update(draw(f.traffic))
    return {"apiVersion": draw(f.mostly(st.just("v1"), st.sampled_from(["v2", "apps/v1", None]), garbage)),
            "kind": "Service", "metadata": meta, "spec": spec}


@st.composite
def endpoint_slices(draw, f: Fields) -> Dict[str, Any]:
    service = draw(f.names)
    suffix = draw(st.sampled_from(["-a", "-b", "-c"]))
    meta: Dict[str, Any] = {"name": f"{service}{suffix}" if isinstance(service, str) else draw(f.names),
                            "labels": {"kubernetes.io/service-name": service}}
    ns = draw(f.namespaces)
    if ns is not None:
        meta["namespace"] = ns
    return {
        "apiVersion": draw(f.mostly(st.just("discovery.k8s.io/v1"), st.just("discovery.k8s.io/v1beta1"), garbage)),
        "kind": "EndpointSlice", "metadata": meta,
        "addressType": draw(f.mostly(st.just("IPv4"), st.sampled_from(["IPv6", "FQDN", "IPv5", None]), garbage)),
        "ports": draw(f.mostly(st.lists(f.slice_ports, max_size=3, unique_by=lambda p: repr(p.get("name"))),
                               st.none(), garbage)),
        "endpoints": draw(f.mostly(st.lists(f.endpoints, max_size=4), st.none(), garbage)),
    }


valid_others = st.one_of(
    st.fixed_dictionaries({"apiVersion": st.just("v1"), "kind": st.just("ConfigMap"),
                           "metadata": st.fixed_dictionaries({"name": st.just("cm")}),
                           "data": st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3)}),
    st.fixed_dictionaries({"apiVersion": st.just("serving.knative.dev/v1"), "kind": st.just("Service"),
                           "metadata": st.fixed_dictionaries({"name": st.just("kn")})}))
others = st.one_of(valid_others, garbage)


def _paths(node: Any, path: Tuple = ()) -> Iterator[Tuple]:
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, path + (i,))


@st.composite
def mutated(draw, doc: Any) -> Any:
    """doc with up to three random edits anywhere in it."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(doc))))
        if not path:
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        op = draw(st.sampled_from(["delete", "garbage", "wrap", "huge", "unicode", "duplicate", "null"]))
        if op == "delete":
            del parent[key]
        elif op == "garbage":
            parent[key] = draw(garbage)
        elif op == "wrap":
            parent[key] = [parent[key]]
        elif op == "huge":
            parent[key] = draw(huge_text)
        elif op == "unicode":
            parent[key] = draw(st.text(min_size=1, max_size=30))
        elif op == "null":
            parent[key] = None
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
    return doc


# Text-level sabotage: inserted at a random place, or the text cut short.
HOSTILE_SNIPPETS = ["\t", ":", "- ", "[", "}", "'", '"', "&a ", "*a", "*nope", "!!int x", "!!python/object:os.system",
                    "2001-13-45", "? ", "%YAML 1.1\n", "---\n", "...\n", "\x00", "\x1b", "\ufeff", "\u2028",
                    "k: &a [*a]\n", "[" * 2000, "- " * 3000, "<<: *a\n", "1" * 5000]


@st.composite
def manifest_texts(draw, table_sizes: Sequence[str] = ("251", "257")) -> str:
    """Up to five objects: in half the texts all valid ones (that may still clash or repeat), in
    the others some hostile, some edited at random afterwards, and the text itself broken."""
    clean, hostile = Fields(False, table_sizes), Fields(True, table_sizes)
    if draw(st.booleans()):
        objs = draw(st.lists(st.one_of(services(clean), endpoint_slices(clean), endpoint_slices(clean),
                                       valid_others), min_size=1, max_size=5))
        return yaml.safe_dump_all(objs, sort_keys=False)
    objs = draw(st.lists(st.one_of(services(clean), services(hostile), endpoint_slices(clean),
                                   endpoint_slices(hostile), others), max_size=5))
    objs = [draw(mutated(o)) if draw(st.integers(0, 3)) == 0 else o for o in objs]
    form = draw(st.sampled_from(["documents", "documents", "list", "json"]))
    if form == "documents":
        text = yaml.safe_dump_all(objs, sort_keys=False, allow_unicode=draw(st.booleans()))
    elif form == "list":
        text = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objs}, sort_keys=False)
    else:
        text = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}, indent=draw(st.sampled_from([None, 2])))
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:at] + draw(st.sampled_from(HOSTILE_SNIPPETS)) + text[at:]
        else:
            text = text[:at]
    return text


# --- the oracle --------------------------------------------------------------------------------

def parse_or_errors(text: str, source: str = "hostile.yaml") -> Optional[Manifests]:
    """The parse, or None after checking that the refusal is a well-formed ManifestErrors."""
    try:
        return parse_documents(text, source)
    except ManifestErrors as exc:
        assert exc.errors, "ManifestErrors without an error"
        for err in exc.errors:
            assert isinstance(err, ManifestError)
            assert isinstance(err.message, str) and err.message.strip(), repr(err)
            assert err.source == source
            assert err.obj or err.line is not None, f"error names neither an object nor a line: {err!r}"
            assert str(err) and len(str(err)) < 4 * len(text) + 1000
        return None


def programmed(snap: Snapshot) -> Dict[Any, Any]:
    """What a packet can see, independent of ids: per frontend its name, flags and the ordered
    backends of its slots, plus every backend record it owns. Orphans make it fail."""
    view: Dict[Any, Any] = {}
    for key, svc in snap[SERVICES].items():
        table = snap[SLOTS].get(svc.svc_id, ())
        records = {i: b for i, b in snap[BACKENDS].items() if b.svc_id == svc.svc_id}
        view[key] = (snap[SVC_META].get(svc.svc_id), svc.count, svc.flags, len(table),
                     tuple((records[i].addr, records[i].port) if i in records else None for i in table),
                     sorted((b.addr, b.port, b.proto) for b in records.values()))
    for name in set(snap) - {SERVICES, SLOTS, BACKENDS, SVC_META}:
        view[name] = snap[name]  # maps keyed by address (a VIP set): no ids to hide
    svc_ids = {svc.svc_id for svc in snap[SERVICES].values()}
    assert set(snap[SLOTS]) <= svc_ids and set(snap[SVC_META]) <= svc_ids
    assert {b.svc_id for b in snap[BACKENDS].values()} <= svc_ids
    return view


DEFAULTS = PlanDefaults(table_size=251)


def fresh(desired: DesiredState) -> Snapshot:
    return apply_to(empty_snapshot(), compute_plan(desired, empty_snapshot(), defaults=DEFAULTS))


def check_accepted(m: Manifests, previous: Snapshot) -> None:
    desired = desired_state(m.services, m.slices)
    snap = fresh(desired)
    assert not compute_plan(desired, snap, defaults=DEFAULTS), "a second plan must be empty"
    for backend in snap[BACKENDS].values():
        assert forbidden_backend(backend.addr, DEFAULT_SERVICE_CIDRS) is None, backend
    assert set(snap[SERVICES]) == {(f.vip, f.port, {"TCP": 6, "UDP": 17}[f.protocol], f.scope)
                                   for f in desired.frontends}
    after = apply_to(previous, compute_plan(desired, previous, defaults=DEFAULTS))
    assert programmed(without_draining(after)) == programmed(snap)
    # TCP frontends of the previous state that went away drain (kept for their open flows).
    assert {k for k, v in after[SERVICES].items() if is_draining(v)} == {
        k for k in previous[SERVICES] if k.proto == 6 and k not in snap[SERVICES]}


def _fresh_from(text: str) -> Snapshot:
    m = parse_documents(text, "previous.yaml")
    return fresh(desired_state(m.services, m.slices))


BASELINE = _fresh_from("""\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 53, protocol: UDP}]
endpoints: [{addresses: [10.244.0.1]}, {addresses: [10.244.0.2, 10.244.0.3]}]
""")
# Previous states a plan starts from: empty, the baseline, and one where every generated VIP is
# taken by other services, with Maglev tables and weights (ids, slots and records all to change).
PREVIOUS = [empty_snapshot(), BASELINE, _fresh_from("".join(f"""\
apiVersion: v1
kind: Service
metadata:
  name: old{i}
  namespace: demo
  annotations: {{lb.ebpflb.io/algorithm: maglev, lb.ebpflb.io/maglev-table-size: "257",
                lb.ebpflb.io/backend-weights: "10.244.0.1=2"}}
spec: {{clusterIP: {vip}, ports: [{{name: http, port: 80}}, {{name: dns, port: 53, protocol: UDP}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: old{i}-a, namespace: demo, labels: {{kubernetes.io/service-name: old{i}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}, {{name: dns, port: 53, protocol: UDP}}]
endpoints: [{{addresses: [10.244.0.1, 10.244.0.4]}}, {{addresses: [10.244.0.2]}}]
---
""" for i, vip in enumerate(VIPS)))]


@settings(max_examples=300, **SETTINGS)
@given(manifest_texts(), st.sampled_from(PREVIOUS))
def test_every_input_applies_or_is_refused_with_a_clear_error(text: str, previous: Snapshot) -> None:
    m = parse_or_errors(text)
    # Deterministic: the same text gives the same objects or the same errors.
    try:
        again = parse_documents(text, "hostile.yaml")
    except ManifestErrors as exc:
        assert m is None
        with pytest.raises(ManifestErrors) as first:
            parse_documents(text, "hostile.yaml")
        assert [str(e) for e in exc.errors] == [str(e) for e in first.value.errors]
    else:
        assert again == m
    if m is not None:
        event(f"accepted, {min(len(m.services), 3)}+ services, {min(len(m.slices), 3)}+ slices")
        check_accepted(m, previous)
    else:
        event("refused")


@settings(max_examples=100, **SETTINGS)
@given(st.lists(st.one_of(services(Fields(True)), endpoint_slices(Fields(True))), min_size=1, max_size=4))
def test_unmutated_objects_parse_or_name_their_object(objs: List[Dict[str, Any]]) -> None:
    """Objects with a kind and a valid name: every error names that object, never only a line."""
    assume(all(isinstance(o["metadata"].get("name"), str) and o["metadata"]["name"] for o in objs))
    text = yaml.safe_dump_all(objs, sort_keys=False)
    try:
        m = parse_documents(text, "h.yaml")
    except ManifestErrors as exc:
        for err in exc.errors:
            assert err.obj and err.obj.split(" ")[0] in ("Service", "EndpointSlice"), str(err)
            assert err.line is not None, str(err)
        return
    check_accepted(m, BASELINE)


@settings(max_examples=100, **SETTINGS)
@given(st.lists(st.sampled_from(["10.96.0.10:80/TCP", "10.96.0.10:80/UDP", "10.96.0.11:80/TCP",
                                 "10.96.0.10:443/TCP"]), min_size=2, max_size=5))
def test_clashing_frontends_go_to_the_first_service_and_name_it(frontends: List[str]) -> None:
    docs = []
    for i, fe in enumerate(frontends):
        vip, _, rest = fe.partition(":")
        port, _, proto = rest.partition("/")
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"s{i}", "namespace": "demo"},
                     "spec": {"clusterIP": vip, "ports": [{"port": int(port), "protocol": proto}]}})
    text = yaml.safe_dump_all(docs)
    clashes = len(frontends) - len(set(frontends))
    if not clashes:
        assert len(desired_state(parse_documents(text, "h.yaml").services, ()).frontends) == len(frontends)
        return
    desired = desired_state(parse_documents(text, "h.yaml").services, ())
    assert len(desired.frontends) == len(set(frontends))
    assert len(desired.skipped) == clashes
    for frontend in desired.frontends:  # the first Service (by name) claiming it keeps it
        assert frontend.service == f"demo/s{min(i for i, fe in enumerate(frontends) if fe == str(frontend))}"
    for skip in desired.skipped:
        assert "already used by demo/s" in skip.reason


# --- the backend rules -------------------------------------------------------------------------

def _oracle(ip: str, cidrs: Sequence[str]) -> bool:
    """Forbidden, by integer ranges written independently of backend_rules."""
    n = int(ipaddress.IPv4Address(ip))
    ranges = [("0.0.0.0", 8), ("127.0.0.0", 8), ("169.254.0.0", 16), ("224.0.0.0", 4),
              ("255.255.255.255", 32)] + [tuple(c.split("/")) for c in cidrs if ":" not in c]
    return any(n >> (32 - int(bits)) == int(ipaddress.IPv4Address(base)) >> (32 - int(bits)) if int(bits)
               else True for base, bits in ranges)


cidr_lists = st.lists(st.builds(lambda a, p: str(ipaddress.IPv4Network(f"{a}/{p}", strict=False)),
                                st.ip_addresses(v=4), st.integers(8, 32)), max_size=2)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.ip_addresses(v=4).map(str), st.sampled_from(FORBIDDEN_IPS + POD_IPS)),
       st.one_of(st.just(list(DEFAULT_SERVICE_CIDRS)), cidr_lists))
def test_forbidden_backend_matches_an_independent_oracle(ip: str, cidrs: List[str]) -> None:
    reason = forbidden_backend(ip, cidrs)
    assert (reason is not None) == _oracle(ip, cidrs)
    if reason:
        assert reason.startswith(f"{ip} ")


@pytest.mark.parametrize("ip, reason", [
    ("127.0.0.1", "127.0.0.1 is a loopback address"),
    ("169.254.169.254", "169.254.169.254 is link-local (cloud metadata service)"),
    ("169.254.10.1", "169.254.10.1 is link-local"),
    ("0.0.0.0", "0.0.0.0 is the unspecified address"),
    ("224.0.0.1", "224.0.0.1 is a multicast address"),
    ("255.255.255.255", "255.255.255.255 is the broadcast address"),
    ("10.96.0.10", "10.96.0.10 is inside the Service range 10.96.0.0/12"),
    ("::1", "::1 is a loopback address"),
    ("fe80::1", "fe80::1 is link-local"),
    ("::ffff:127.0.0.1", "::ffff:127.0.0.1 is IPv4-mapped: 127.0.0.1 is a loopback address"),
    ("10.244.0.11", None), ("172.18.0.2", None), ("240.0.0.1", None), ("10.112.0.0", None),
    ("10.95.255.255", None), ("fd00::1", None),
    ("fd00:ec2::254", "fd00:ec2::254 is the cloud metadata service"),
    ("ff02::1", "ff02::1 is a multicast address"), ("::", ":: is the unspecified address"),
])
def test_forbidden_backend_reasons(ip: str, reason: Optional[str]) -> None:
    assert forbidden_backend(ip, DEFAULT_SERVICE_CIDRS) == reason


def test_service_cidrs_are_validated() -> None:
    assert [str(n) for n in parse_service_cidrs(("10.96.0.0/12", "fd00:10:96::/112"))] == [
        "10.96.0.0/12", "fd00:10:96::/112"]
    assert forbidden_backend("fd00:10:96::5", ("10.96.0.0/12", "fd00:10:96::/112")) == (
        "fd00:10:96::5 is inside the Service range fd00:10:96::/112")
    for bad in ("10.96.0.1/12", "10.96.0.0/40", "x", 7):
        with pytest.raises(ValueError, match="service CIDR"):
            forbidden_backend("10.244.0.1", (bad,))


def _slice(*addresses: str, address_type: str = "IPv4") -> EndpointSlice:
    return EndpointSlice("demo", "web-a", "web", address_type, (),
                         tuple(Endpoint((a,), True, True, False) for a in addresses))


def test_check_backends_on_manifests_from_any_source() -> None:
    check_backends(Manifests((), (_slice("10.244.0.1"), _slice("fd00:10:244::1", address_type="IPv6")),
                             ()))
    with pytest.raises(ManifestErrors) as exc:
        check_backends(Manifests((), (_slice("10.244.0.1", "169.254.169.254", "10.100.0.1"),), ()),
                       source="api")
    assert [str(e) for e in exc.value.errors] == [
        "api: EndpointSlice demo/web-a: endpoints[1].addresses[0]: 169.254.169.254 is link-local "
        "(cloud metadata service): not allowed as a backend",
        "api: EndpointSlice demo/web-a: endpoints[2].addresses[0]: 10.100.0.1 is inside the Service "
        "range 10.96.0.0/12: not allowed as a backend"]
    check_backends(Manifests((), (_slice("10.100.0.1"),), ()), service_cidrs=("172.20.0.0/16",))


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.ip_addresses(v=4).map(str), st.sampled_from(FORBIDDEN_IPS + POD_IPS)))
def test_parser_and_check_backends_agree(ip: str) -> None:
    text = ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-a\n  namespace: demo\n"
            "  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\n"
            f"endpoints:\n- addresses: ['{ip}']\n")
    reason = forbidden_backend(ip, DEFAULT_SERVICE_CIDRS)
    direct: Optional[List[str]] = None
    try:
        check_backends(Manifests((), (_slice(ip),), ()), source="t.yaml")
    except ManifestErrors as exc:
        direct = [e.message for e in exc.errors]
    try:
        parse_documents(text, "t.yaml")
    except ManifestErrors as exc:
        [err] = exc.errors
        assert (err.obj, err.field, err.line) == ("EndpointSlice demo/web-a", "endpoints[0].addresses[0]", 9)
        assert direct == [err.message] == [f"{reason}: not allowed as a backend"]
    else:
        assert reason is None and direct is None


def test_ipv6_endpoint_slices_are_held_to_the_same_backend_rules() -> None:
    """IPv6 slices are programmed now: their addresses are judged as IPv4 ones are, by the
    parser and by check_backends (both let them through before, when IPv6 was not programmed:
    ::1 or the metadata service would have become backends)."""
    bad = ("::1", "fe80::1", "fd00:ec2::254", "::ffff:127.0.0.1", "fd00:10:96::5",
           "64:ff9b::a9fe:a9fe", "64:ff9b:1::a9fe:2a01")
    cidrs = ("10.96.0.0/12", "fd00:10:96::/112")
    with pytest.raises(ManifestErrors) as exc:
        check_backends(Manifests((), (_slice("fd00:10:244::7", *bad, address_type="IPv6"),), ()),
                       cidrs, source="api")
    assert [e.field for e in exc.value.errors] == [
        f"endpoints[{i}].addresses[0]" for i in range(1, len(bad) + 1)]
    assert "NAT64 for 169.254.169.254" in str(exc.value.errors[5])
    eps = "".join(f"- addresses: ['{ip}']\n" for ip in ("fd00:10:244::7",) + bad)
    text = ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-6\n"
            "  namespace: demo\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv6\n"
            f"endpoints:\n{eps}")
    with pytest.raises(ManifestErrors) as exc:
        parse_documents(text, "six.yaml")
    # ::1, fe80::1, the metadata service, NAT64 to it, the hairpin prefix: not allowed; the
    # IPv4-mapped loopback is no IPv6 address at all (the API server refuses it too).
    assert len(exc.value.errors) == 6
    assert sum("not allowed as a backend" in str(e) for e in exc.value.errors) == 5
    assert any("IPv4-mapped IPv6 address" in str(e) for e in exc.value.errors)
    with pytest.raises(ManifestErrors, match="not a valid IPv6 address"):
        parse_documents(text.replace("fd00:10:244::7", "fd00:10:244::7%eth0"), "zone.yaml")
