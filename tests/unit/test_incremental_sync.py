"""Incremental sync equals a fresh full sync, whatever the sequence of changes (pure: the maps are
dicts here; tests/bpf/test_incremental_maps.py runs the same pipeline against real maps).

Objects are raw API dicts, valid or not, converted as the Kubernetes source converts them (a
refused object keeps its last good version); they go through the agent's pipeline (store ->
model -> planner -> apply) one change at a time. After every step the maps must hold what a
full sync of the same objects from nothing holds (ids aside), a full plan against a read-back
must find nothing to do, and after every single map write a packet must find every frontend's
slots, backends, source ranges and VIP.
"""
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebpflb.apply import read_snapshot
from ebpflb.changes import Change
from ebpflb.convert import ENDPOINT_SLICE, SERVICE, convert_api_object
from ebpflb.draining import is_draining
from ebpflb.maps import (BACKENDS, SERVICES, SLOTS, SRC_RANGES, SVC_F_SRC_RANGES, SVC_META, VIPS,
                         slot_tables)
from ebpflb.model import ModelContext, desired_state
from ebpflb.reconcile import reconcile
from ebpflb.records import frontend_key
from ebpflb.syncer import Syncer
from tests.helpers.dict_writer import DictWriter

pytestmark = pytest.mark.unit

CTX = ModelContext(node_name="node-1", node_addresses=("192.168.200.10",),
                   external_ip_allow=("192.0.2.0/24",))
NAMES = ["s0", "s1", "s2", "s3"]
VIPS_POOL = ["10.96.0.1", "10.96.0.2", "10.96.0.3"]  # few: Services clash on frontends
PORTS = [("p80", 80, "TCP", 8080), ("p53", 53, "UDP", 5353), ("p443", 443, "TCP", 8443)]


@st.composite
def services(draw, name: str) -> Dict[str, Any]:
    kind = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
    ports = draw(st.lists(st.sampled_from(PORTS), min_size=1, max_size=2, unique_by=lambda p: p[0]))
    spec: Dict[str, Any] = {
        "type": kind, "clusterIP": draw(st.sampled_from(VIPS_POOL)),
        "ports": [{"name": n, "port": p, "protocol": proto, "targetPort": t} for n, p, proto, t in ports],
    }
    if kind != "ClusterIP":
        for p in spec["ports"]:
            p["nodePort"] = draw(st.sampled_from([30001, 30002]))
    if kind == "LoadBalancer" and draw(st.booleans()):
        spec["externalTrafficPolicy"] = "Local"
        spec["healthCheckNodePort"] = draw(st.sampled_from([32001, 32002]))
    if kind == "LoadBalancer" and draw(st.booleans()):
        spec["loadBalancerSourceRanges"] = draw(st.lists(
            st.sampled_from(["10.0.0.0/8", "172.16.0.0/12", "203.0.113.7/32"]), min_size=1,
            max_size=2, unique=True))
    if draw(st.booleans()):
        spec["externalIPs"] = [draw(st.sampled_from(["192.0.2.10", "198.51.100.1"]))]
    if draw(st.booleans()):
        spec["sessionAffinity"] = "ClientIP"
    spec["internalTrafficPolicy"] = draw(st.sampled_from(["Cluster", "Local"]))
    annotations = draw(st.sampled_from([
        {}, {"lb.ebpflb.io/algorithm": "maglev", "lb.ebpflb.io/maglev-table-size": "251"},
        {"lb.ebpflb.io/backend-weights": "10.244.0.1=0,10.244.0.2=3"}]))
    doc = {"metadata": {"name": name, "namespace": "a", "annotations": annotations},
           "spec": spec}
    if kind == "LoadBalancer":
        doc["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.50"}]}}
    broken = draw(st.sampled_from([None, None, None, "port", "protocol"]))
    if broken == "port":
        spec["ports"][0]["port"] = 70000
    elif broken == "protocol":
        spec["ports"][0]["protocol"] = "QUIC"
    return doc


@st.composite
def slices(draw, name: str) -> Dict[str, Any]:
    owner = draw(st.sampled_from(NAMES))
    labels = {} if draw(st.integers(0, 9)) == 0 else {"kubernetes.io/service-name": owner}
    endpoints = []
    for ip in draw(st.lists(st.sampled_from([f"10.244.0.{i}" for i in range(1, 7)]), max_size=4,
                            unique=True)):
        ready = draw(st.booleans())
        endpoints.append({"addresses": [ip], "nodeName": draw(st.sampled_from(["node-1", "node-2"])),
                          "conditions": {"ready": ready, "serving": ready or draw(st.booleans()),
                                         "terminating": not ready and draw(st.booleans())}})
    if endpoints and draw(st.integers(0, 9)) == 0:
        endpoints[0]["addresses"] = ["127.0.0.1"]  # refused: loopback is never a backend
    return {"metadata": {"name": name, "namespace": "a", "labels": labels},
            "addressType": "IPv4",
            "ports": [{"name": n, "port": t, "protocol": proto} for n, _, proto, t in PORTS],
            "endpoints": endpoints}


@st.composite
def events(draw) -> Tuple[str, str, Optional[Dict[str, Any]]]:
    kind = draw(st.sampled_from([SERVICE, SERVICE, ENDPOINT_SLICE, ENDPOINT_SLICE, "nodes", "full",
                                 "drained"]))
    if kind == "full":  # the agent's periodic full sync, between changes
        return kind, "", None
    if kind == "drained":  # a conntrack GC found flows only for draining ids of this parity
        return kind, "", {"parity": draw(st.sampled_from([0, 1, None]))}
    if kind == "nodes":
        return kind, "", {"addresses": draw(st.sampled_from([("192.168.200.10",),
                                                             ("192.168.200.11",), ()]))}
    name = draw(st.sampled_from(NAMES)) if kind == SERVICE else draw(st.sampled_from(["x", "y", "z"]))
    if draw(st.integers(0, 4)) == 0:
        return kind, name, None  # deleted
    return kind, name, draw(services(name) if kind == SERVICE else slices(name))


class ApiLike:
    """What the Kubernetes source does with an object: convert it; a refused one keeps its last
    good version (no change); an ignored one is gone."""

    def __init__(self) -> None:
        self.last: Dict[Tuple[str, Tuple[str, str]], Any] = {}

    def change(self, kind: str, name: str, doc: Optional[Dict[str, Any]]) -> Optional[Change]:
        key = ("a", name)
        old = self.last.get((kind, key))
        if doc is None:
            new = None
        else:
            verdict = convert_api_object(kind, doc)
            if verdict.refused:
                return None
            new = verdict.obj
        if new is None:
            self.last.pop((kind, key), None)
        else:
            self.last[(kind, key)] = new
        return None if new == old else Change(kind, key, new)


def take_step(syncer: Syncer, api: "ApiLike", ctx: ModelContext, kind: str, name: str,
              doc: Optional[Dict[str, Any]]) -> ModelContext:
    """One generated event into the syncer, as the agent would take it; the node context after."""
    if kind == "full":
        syncer.request_full("periodic")
    elif kind == "drained":
        live = {i for i in syncer.planner.draining().values() if i % 2 == doc["parity"]}
        outcome = syncer.release_drained(live)
        assert outcome is None or outcome.applied, outcome
    elif kind == "nodes":
        ctx = ModelContext(CTX.node_name, CTX.proxy_name, doc["addresses"], CTX.external_ip_allow)
        syncer.set_context(ctx)
    else:
        change = api.change(kind, name, doc)
        if change is not None:
            syncer.take([change])
    return ctx


def run_steps(syncer: Syncer, steps) -> Iterator[Tuple[str, Any, ModelContext]]:
    """Each generated event taken and synced: (its kind, the sync's outcome, the node context)."""
    api = ApiLike()
    ctx = CTX
    for kind, name, doc in steps:
        ctx = take_step(syncer, api, ctx, kind, name, doc)
        yield kind, syncer.sync(), ctx


def fresh_full_sync(syncer: Syncer, ctx: ModelContext) -> Tuple[Any, DictWriter]:
    """What a full sync of the syncer's objects, from nothing, programs: (desired, its maps)."""
    fresh = DictWriter()
    desired = desired_state(syncer.store.services.values(), syncer.store.slices.values(),
                            ctx.node_name, ctx.proxy_name, ctx.node_addresses,
                            ctx.external_ip_allow)
    reconcile(desired, fresh)
    return desired, fresh


class CheckingWriter(DictWriter):
    """Checks, after every single write, what a packet could see."""

    def _upsert_one(self, m, k, v):
        super()._upsert_one(m, k, v)
        assert_consistent(self.maps)

    def _delete_one(self, m, k):
        super()._delete_one(m, k)
        assert_consistent(self.maps)


def assert_consistent(maps: Dict[str, Dict[Any, Any]]) -> None:
    tables = slot_tables(maps[SLOTS])
    for key, svc in maps[SERVICES].items():
        assert maps[VIPS].get(key.vip, 0) >= 1, f"{key}: its VIP is not in lb4_vips"
        table = tables.get(svc.svc_id, ())
        assert len(table) >= svc.count, f"{key}: {svc.count} slots announced, {len(table)} there"
        for slot in range(svc.count):
            backend = maps[BACKENDS].get(table[slot])
            assert backend is not None and backend.svc_id == svc.svc_id, f"{key} slot {slot}"
        if svc.flags & SVC_F_SRC_RANGES:
            assert any(r.svc_id == svc.svc_id for r in maps[SRC_RANGES]), f"{key}: no ranges"


def canonical(maps: Dict[str, Dict[Any, Any]]) -> Tuple:
    """The maps without their ids: per frontend what a packet and the CLI get. Records nobody
    points at (garbage) make it differ too."""
    tables = slot_tables(maps[SLOTS])
    live = {svc.svc_id for svc in maps[SERVICES].values() if not is_draining(svc)}
    frontends = {}
    vips = dict(maps[VIPS])
    for key, svc in maps[SERVICES].items():
        if is_draining(svc):
            # A removed TCP frontend kept for its flows: a name, no slots, no backends.
            assert svc.count == 0 and maps[SVC_META].get(svc.svc_id), (key, svc)
            vips[key.vip] -= 1
            continue
        be = maps[BACKENDS]
        frontends[key] = (
            svc.count, svc.flags, svc.affinity_timeout, maps[SVC_META].get(svc.svc_id),
            tuple(be[b][:3] + (be[b].flags,) for b in tables.get(svc.svc_id, ())),
            sorted(v[:3] + (v.flags,) for v in be.values() if v.svc_id == svc.svc_id),
            sorted(r.cidr for r in maps[SRC_RANGES] if r.svc_id == svc.svc_id))
    named = {svc.svc_id for svc in maps[SERVICES].values()}
    garbage = ({i for i in maps[SVC_META] if i not in named},
               {b for b, v in maps[BACKENDS].items() if v.svc_id not in live},
               {i for i in tables if i not in live},
               {r for r in maps[SRC_RANGES] if r.svc_id not in live})
    return frontends, {vip: n for vip, n in vips.items() if n}, garbage


def draining_keys(maps: Dict[str, Dict[Any, Any]]) -> set:
    return {key for key, svc in maps[SERVICES].items() if is_draining(svc)}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events(), min_size=1, max_size=14))
def test_every_incremental_step_equals_a_fresh_full_sync(steps) -> None:
    writer = CheckingWriter()
    syncer = Syncer(writer, ctx=CTX)
    assert syncer.sync().kind == "full"  # the start: nothing yet
    ids: Dict[Any, int] = {}  # every frontend's service id after the previous step
    syncer_draining: Dict[Any, int] = {}
    for (kind, outcome, ctx), (_, _, doc) in zip(run_steps(syncer, steps), steps):
        assert outcome is None or outcome.applied, outcome
        assert outcome is None or outcome.kind == ("full" if kind == "full" else "incremental")
        assert outcome is None or kind != "full" or outcome.writes == 0  # no drift here
        desired, fresh = fresh_full_sync(syncer, ctx)
        assert canonical(writer.maps) == canonical(fresh.maps)
        # A TCP frontend that goes away drains, with its id, until a GC finds none of its flows
        # (or a Service asks for it again).
        draining = {k: v.svc_id for k, v in writer.maps[SERVICES].items() if is_draining(v)}
        wanted = {frontend_key(fe) for fe in desired.frontends}
        if kind == "drained":
            # Those with flows stay, and the two scopes of a key go together.
            was = syncer_draining
            live = {i for i in was.values() if i % 2 == doc["parity"]}
            expected = {k: i for k, i in was.items() if i in live or
                        was.get(k._replace(scope=1 - k.scope)) in live}
        else:
            expected = {k: ids[k] for k in ids if k.proto == 6 and k not in wanted}
        assert draining == expected
        assert syncer.planner.draining() == draining
        ids = {k: v.svc_id for k, v in writer.maps[SERVICES].items()}
        syncer_draining = dict(draining)
        assert syncer.skipped() == desired.skipped
        assert syncer.health_checks() == desired.health_checks
        # The claims, by a naive oracle: Services in (namespace, name) order, first come first
        # served (what the incremental claims must amount to), independent of ClusterModel.
        assert {fe: (fe.service, bs) for fe, bs in desired.frontends.items()} == naive_frontends(
            syncer.store, ctx)
        # And what a packet finds, independent of the planner: each frontend's backends.
        assert programmed_backends(writer.maps) == {
            (fe.vip, fe.port, fe.protocol, fe.scope): sorted((b.ip, b.port) for b in bs)
            for fe, bs in desired.frontends.items()}
        # A full plan against a read-back finds nothing: no drift between the planner and maps.
        everything = {k: syncer.model.frontends_of(k) for k in syncer.model.holders()}
        assert not syncer.planner.plan_full(everything, read_snapshot(writer)).plan
        assert syncer.planner.held() == read_snapshot(writer).sizes()


def naive_frontends(store, ctx: ModelContext) -> Dict[Any, Any]:
    from ebpflb.model import service_model

    taken: Dict[Any, Any] = {}
    for key in sorted(store.services):
        model = service_model(store.services[key], store.slices_of(key), ctx)
        for fe, backends in model.frontends:
            if fe not in taken:
                taken[fe] = (fe.service, backends)
    return taken


def programmed_backends(maps: Dict[str, Dict[Any, Any]]) -> Dict[Tuple, List[Tuple[str, int]]]:
    out = {}
    names = {6: "TCP", 17: "UDP"}
    for key, svc in maps[SERVICES].items():
        if is_draining(svc):
            continue
        out[(key.vip, key.port, names[key.proto], key.scope)] = sorted(
            (b.addr, b.port) for b in maps[BACKENDS].values() if b.svc_id == svc.svc_id)
    return out


def test_ids_freed_after_a_full_sync_are_not_given_twice() -> None:
    """After a full sync of existing records, a removal frees an id below the pool's scan
    point; a plan needing more ids than were freed must not hand that id out twice."""
    writer = DictWriter()
    syncer = Syncer(writer, ctx=CTX)
    api = ApiLike()
    two_ports = {"metadata": {"name": "s2", "namespace": "a"},
                 "spec": {"clusterIP": "10.96.0.3", "ports": [
                     {"name": "p80", "port": 80, "targetPort": 8080},
                     {"name": "p53", "port": 53, "protocol": "UDP", "targetPort": 5353}]}}
    syncer.take([api.change(SERVICE, "s0", {"metadata": {"name": "s0", "namespace": "a"},
                                            "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}}),
                 api.change(SERVICE, "s1", {"metadata": {"name": "s1", "namespace": "a"},
                                            "spec": {"clusterIP": "10.96.0.2", "ports": [{"port": 80}]}})])
    assert syncer.sync().kind == "full"
    syncer.take([api.change(SERVICE, "s1", None)])
    syncer.sync()
    syncer.take([api.change(SERVICE, "s2", two_ports)])
    syncer.sync()
    ids = [v.svc_id for v in writer.maps[SERVICES].values()]
    # s0, s2's two ports, and s1's TCP frontend draining.
    assert len(ids) == len(set(ids)) == 4, writer.maps[SERVICES]
    assert [k.vip for k, v in writer.maps[SERVICES].items() if is_draining(v)] == ["10.96.0.2"]


def test_a_burst_is_one_plan_and_costs_only_the_services_it_touches() -> None:
    """1,000 Services programmed; 200 slice changes over 20 Services arrive together: one plan,
    20 Services planned, and only their records written."""
    writer = DictWriter()
    syncer = Syncer(writer, ctx=CTX)
    api = ApiLike()
    changes = []
    for i in range(1000):
        svc = {"metadata": {"name": f"s{i}", "namespace": "a"},
               "spec": {"clusterIP": f"10.96.{i // 250}.{i % 250 + 1}",
                        "ports": [{"name": "p80", "port": 80, "targetPort": 8080}]}}
        changes.append(api.change(SERVICE, f"s{i}", svc))
        changes.append(api.change(ENDPOINT_SLICE, f"s{i}-x", slice_of(f"s{i}", [f"10.244.{i // 200}.{i % 200 + 1}"])))
    syncer.take(changes)
    assert syncer.sync().kind == "full"
    writer.log.clear()
    burst = [api.change(ENDPOINT_SLICE, f"s{i}-x", slice_of(f"s{i}", [f"10.245.{r}.{i + 1}"]))
             for r in range(10) for i in range(20)]
    syncer.take(c for c in burst if c is not None)
    outcome = syncer.sync()
    assert outcome.kind == "incremental" and outcome.services == 20
    # Per Service: its old backend out, the last version's in, slot, counters: nothing else.
    assert {m for _, m, _ in writer.log} <= {"lb4_backends", "lb4_slots", "lb4_backend_stats"}
    assert sum(1 for a, m, _ in writer.log if m == "lb4_backends" and a == "upsert") == 20
    assert syncer.sync() is None


def slice_of(service: str, addresses: List[str]) -> Dict[str, Any]:
    return {"metadata": {"name": f"{service}-x", "namespace": "a",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"name": "p80", "port": 8080}],
            "endpoints": [{"addresses": [a]} for a in addresses]}


def lb(name: str, vip: str, hc_port: int) -> Dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "a"},
            "spec": {"type": "LoadBalancer", "clusterIP": vip, "externalTrafficPolicy": "Local",
                     "healthCheckNodePort": hc_port,
                     "ports": [{"name": "p80", "port": 80, "targetPort": 8080, "nodePort": 30001}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.50"}]}}}


@pytest.mark.parametrize("release", ["delete", "move"])
def test_a_released_claim_goes_to_the_next_service_in_line(release: str) -> None:
    """s0 holds the node port and the health check port that s1 asks for too; when s0 lets go
    (deleted, or moved to other ports), s1 gets both, in the same incremental sync."""
    writer = DictWriter()
    syncer = Syncer(writer, ctx=CTX)
    api = ApiLike()
    syncer.take([api.change(SERVICE, "s0", lb("s0", "10.96.0.1", 32001)),
                 api.change(SERVICE, "s1", lb("s1", "10.96.0.2", 32001))])
    syncer.sync()
    assert [(h.service, h.port) for h in syncer.health_checks()] == [("a/s0", 32001)]
    assert {s.reason for s in syncer.skipped()} == {
        "healthCheckNodePort 32001 already used by a/s0",
        "frontend 192.168.200.10:30001/TCP already used by a/s0",
        "frontend 192.168.200.10:30001/TCP@external already used by a/s0",
        "frontend 192.0.2.50:80/TCP already used by a/s0",
        "frontend 192.0.2.50:80/TCP@external already used by a/s0"}
    if release == "delete":
        change = api.change(SERVICE, "s0", None)
    else:
        moved = lb("s0", "10.96.0.1", 32002)
        moved["spec"]["ports"][0]["nodePort"] = 30002
        moved["status"]["loadBalancer"]["ingress"][0]["ip"] = "192.0.2.51"
        change = api.change(SERVICE, "s0", moved)
    syncer.take([change])
    outcome = syncer.sync()
    assert outcome.kind == "incremental" and outcome.services == 2
    assert ("a/s1", 32001) in [(h.service, h.port) for h in syncer.health_checks()]
    assert syncer.skipped() == ()
    owners = {str(k): writer.maps[SVC_META][v.svc_id] for k, v in writer.maps[SERVICES].items()}
    assert owners["192.168.200.10:30001/TCP"] == "a/s1:p80"


def test_a_released_health_check_port_alone_goes_to_the_next_service() -> None:
    """Two Services sharing nothing but their healthCheckNodePort: s1 answers it once s0 goes."""
    writer = DictWriter()
    syncer = Syncer(writer, ctx=CTX)
    api = ApiLike()
    other = lb("s1", "10.96.0.2", 32001)
    other["spec"]["ports"][0]["nodePort"] = 30002
    other["status"]["loadBalancer"]["ingress"][0]["ip"] = "192.0.2.51"
    syncer.take([api.change(SERVICE, "s0", lb("s0", "10.96.0.1", 32001)),
                 api.change(SERVICE, "s1", other)])
    syncer.sync()
    assert [(h.service, h.port) for h in syncer.health_checks()] == [("a/s0", 32001)]
    assert [s.reason for s in syncer.skipped()] == ["healthCheckNodePort 32001 already used by a/s0"]
    syncer.take([api.change(SERVICE, "s0", None)])
    syncer.sync()
    assert [(h.service, h.port) for h in syncer.health_checks()] == [("a/s1", 32001)]
    assert syncer.skipped() == ()
