"""Pure pieces behind issue 3 and 4 features: annotation policy, Maglev/weighted slot filling in
the plan, explain's prediction steps, and the stats views, rates and rendering."""
import json

import pytest

from ebpflb.explain import ConntrackView, Flow, explain, parse_flow, render
from ebpflb.flowhash import FLOW_HASH_SEED, flow_hash
from ebpflb.manifests import ManifestErrors, parse_documents
from ebpflb.maps import SERVICES, SLOTS, SVC_F_MAGLEV, SlotKey, SvcKey, empty_snapshot
from ebpflb.model import Backend, DesiredState, Frontend
from ebpflb.plan import PlanDefaults, apply_to, compute_plan
from ebpflb.policy import LbPolicy, parse_policy
from ebpflb.stats import Counters, build_stats, render_table, to_json, with_rates

pytestmark = pytest.mark.unit

BACKENDS = tuple(Backend(f"10.244.0.{i}", 8080) for i in (11, 12, 13))


def program(policy=LbPolicy(), defaults=PlanDefaults(), backends=BACKENDS):
    fe = Frontend("10.96.0.10", 80, "TCP", "demo/web", "http", policy)
    snap = empty_snapshot()
    return apply_to(snap, compute_plan(DesiredState({fe: backends}, ()), snap, None, defaults))


@pytest.mark.parametrize("annotations,errors", [
    ({"lb.ebpflb.io/algorithm": "maglev"}, []),
    ({"lb.ebpflb.io/algorithm": "roundrobin"}, ["lb.ebpflb.io/algorithm"]),
    ({"lb.ebpflb.io/maglev-table-size": "1000"}, ["lb.ebpflb.io/maglev-table-size"]),
    ({"lb.ebpflb.io/maglev-table-size": "big"}, ["lb.ebpflb.io/maglev-table-size"]),
    ({"lb.ebpflb.io/backend-weights": "10.244.0.11=0, 10.244.0.12=7"}, []),
    ({"lb.ebpflb.io/backend-weights": "10.244.0.11=-1,nope=2,10.244.0.12"},
     ["lb.ebpflb.io/backend-weights"] * 3),
])
def test_policy_annotations(annotations, errors):
    _, problems = parse_policy(annotations)
    assert [key for key, _ in problems] == errors


def test_bad_annotation_is_a_manifest_error_naming_the_field():
    with pytest.raises(ManifestErrors) as exc:
        parse_documents("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  annotations:\n"
                        "    lb.ebpflb.io/algorithm: fastest\nspec:\n  clusterIP: 10.96.0.1\n"
                        "  ports: [{port: 80}]\n", "x.yaml")
    assert "Service default/web: metadata.annotations[lb.ebpflb.io/algorithm]: 'fastest'" in str(exc.value)


def test_random_slots_repeat_backends_by_weight():
    snap = program(LbPolicy(weights=(("10.244.0.11", 0), ("10.244.0.13", 3))))
    svc = snap[SERVICES][SvcKey("10.96.0.10", 80, 6)]
    assert svc.count == 4 and svc.flags == 0
    addrs = [snap["lb4_backends"][snap[SLOTS][svc.svc_id][i]].addr for i in range(4)]
    assert addrs == ["10.244.0.12", "10.244.0.13", "10.244.0.13", "10.244.0.13"]
    # the weight-0 backend is still programmed (draining), with no slot
    assert "10.244.0.11" in {v.addr for v in snap["lb4_backends"].values()}


def test_maglev_by_annotation_and_by_default():
    snap = program(LbPolicy(algorithm="maglev", table_size=251))
    svc = snap[SERVICES][SvcKey("10.96.0.10", 80, 6)]
    assert (svc.count, svc.flags) == (251, SVC_F_MAGLEV)
    snap = program(defaults=PlanDefaults("maglev", 509))
    assert snap[SERVICES][SvcKey("10.96.0.10", 80, 6)].count == 509
    snap = program(LbPolicy(algorithm="random"), PlanDefaults("maglev", 509))
    assert snap[SERVICES][SvcKey("10.96.0.10", 80, 6)].count == 3


def test_maglev_change_writes_only_the_slots_that_differ():
    policy = LbPolicy(algorithm="maglev", table_size=16381)
    fe = Frontend("10.96.0.10", 80, "TCP", "demo/web", "http", policy)
    four = BACKENDS + (Backend("10.244.0.14", 8080),)
    snap = empty_snapshot()
    snap = apply_to(snap, compute_plan(DesiredState({fe: four}, ()), snap))
    plan = compute_plan(DesiredState({fe: BACKENDS}, ()), snap)
    slot_writes = plan.counts()["lb4_slots upsert"]
    # Only the removed backend's quarter of the table moves (Maglev's promise), not all of it.
    assert 16381 / 4 * 0.9 < slot_writes < 16381 / 4 * 1.1


def test_explain_steps():
    snap = program()
    flow = parse_flow("10.244.0.2:40000", "10.96.0.10:80", "tcp")
    e = explain(snap, flow)
    h = flow_hash(0x0AF40002, 0x0A60000A, 40000, 80, 6, FLOW_HASH_SEED)
    assert (e.verdict, e.hash, e.slot, e.algorithm) == ("dnat", h, h % 3, "random")
    assert e.backend == f"{BACKENDS[h % 3].ip}:8080"
    pinned = explain(snap, flow, ConntrackView("10.244.0.99:8080", 7, 3.0, 1.0))
    assert pinned.backend == "10.244.0.99:8080" and "conntrack decides" in pinned.reason
    assert explain(snap, Flow("10.244.0.2", 1, "10.96.0.10", 81, "TCP")).verdict == "pass"
    empty = explain(program(backends=()), flow)
    assert empty.verdict == "reject" and "TCP RST" in empty.reason
    assert "DNAT to" in render(e) and "no entry" in render(e)
    json.dumps(e.to_json())


@pytest.mark.parametrize("src,dst,proto,bad", [
    ("10.0.0.1", "10.96.0.10:80", "tcp", "source"),
    ("10.0.0.1:70000", "10.96.0.10:80", "tcp", "source"),
    ("10.0.0.1:5", "nowhere:80", "tcp", "destination"),
    ("10.0.0.1:5", "10.96.0.10:80", "sctp", "protocol"),
])
def test_explain_refuses_bad_flows(src, dst, proto, bad):
    with pytest.raises(ValueError, match=bad):
        parse_flow(src, dst, proto)


def test_stats_views_rates_and_output():
    snap = program()
    svc_id = snap[SERVICES][SvcKey("10.96.0.10", 80, 6)].svc_id
    backend_ids = sorted(snap["lb4_backends"])
    before = build_stats(snap, {svc_id: Counters(10, 1000, 8, 800, 2)},
                         {backend_ids[0]: Counters(10, 1000, 8, 800, 2)})
    after = build_stats(snap, {svc_id: Counters(30, 3000, 28, 2800, 6)},
                        {backend_ids[0]: Counters(30, 3000, 28, 2800, 6)})
    rated = with_rates(before, after, 2.0)
    assert rated[0].rates == (10.0, 1000.0, 10.0, 1000.0, 2.0)
    assert rated[0].backends[1].rates == (0.0,) * 5
    data = to_json(rated)
    assert data[0]["conns"] == 6 and data[0]["rates"]["packets_in"] == 10.0
    assert data[0]["backends"][0]["backend"] == "10.244.0.11:8080"
    table = render_table(rated).splitlines()
    assert table[0].split()[:4] == ["FRONTEND", "/", "BACKEND", "SERVICE"]
    assert "CPS" in table[0] and table[1].split()[2] == "6"
