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

from .test_frontend_kinds import text as service_text

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
    ack = parse_flow("10.244.0.2:40000", "10.96.0.10:80", "tcp", "A")
    pinned = explain(snap, ack, ConntrackView("10.244.0.99:8080", 7, 3.0, 1.0))
    assert pinned.backend == "10.244.0.99:8080" and "conntrack decides" in pinned.reason
    # A SYN of that flow goes elsewhere: backend 7 is not 10.244.0.99 (a removed backend).
    retry = explain(snap, flow, ConntrackView("10.244.0.99:8080", 7, 3.0, 1.0))
    assert retry.backend == e.backend and retry.counters[0] == "backend_gone"
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


# ---------------------------------------------------------------- explain: every decision
# The pure side of each decision explain models; tests/bpf/test_explain_parity.py checks the same
# decisions against the programs themselves.

def test_explain_names_the_programs_counters():
    """The counter names explain reports are the programs' (ebpflb/abi.py's enums)."""
    import re

    from ebpflb import explain as ex
    from ebpflb.dataplane.bcc_maps import STAT_NAMES, VERDICT_HOOKS
    from ebpflb.dataplane.loader import bpf_source_dir

    source = (bpf_source_dir().parent / "ebpflb" / "explain.py").read_text()
    named = set(re.findall(r'"([a-z_]+)"', source))
    counted = {n for n in named if n in STAT_NAMES}
    assert {"spoofed", "bad_source", "tcp_no_state", "conntrack_rebuilt", "port_nat"} <= counted
    assert set(ex.HOOKS.values()) <= set(VERDICT_HOOKS)


def _world(local=False, ranges=(), typ="NodePort"):
    """A Service with a backend on this node and one on node-1, and a pod reaching itself."""
    from ebpflb.maps import empty_snapshot
    from ebpflb.model import desired_state

    extra = "  externalTrafficPolicy: Local\n" if local else ""
    if ranges:
        extra += f"  loadBalancerSourceRanges: [{', '.join(ranges)}]\n"
    status = ("status: {loadBalancer: {ingress: [{ip: 192.168.200.200}]}}\n"
              if typ == "LoadBalancer" else "")
    text = service_text(extra.rstrip("\n"), status, typ)
    m = parse_documents(text, "x.yaml")
    state = desired_state(m.services, m.slices, node_name="node-0",
                          node_addresses=["192.168.200.10"])
    return apply_to(empty_snapshot(), compute_plan(state, empty_snapshot()))


def _port_to(snap, backend, src="10.244.0.2", dst=("10.96.0.10", 80), **kw):
    """A source port whose new flow the hash sends to `backend`."""
    for sport in range(40000, 41000):
        if explain(snap, Flow(src, sport, *dst, "TCP"), **kw).hashed_backend == backend:
            return sport
    raise AssertionError(backend)


def test_explain_hairpin_bad_sources_and_spoofing():
    from ebpflb.explain import HAIRPIN_ADDR, Device

    snap = _world()
    me = "10.244.0.11"
    sport = _port_to(snap, f"{me}:8080", src=me)
    e = explain(snap, Flow(me, sport, "10.96.0.10", 80, "TCP"))
    assert (e.verdict, e.backend, e.source) == ("hairpin", f"{me}:8080", f"{HAIRPIN_ADDR}:{sport}")
    assert (e.counters, e.counted_as) == (("conntrack_insert",), "from_pod/new")
    for src in ("127.0.0.1", "10.96.0.10", "192.168.200.10"):  # loopback, a VIP, a node port's
        bad = explain(snap, Flow(src, 1000, "10.96.0.10", 80, "TCP"))
        assert (bad.verdict, bad.counters, bad.counted_as) == ("drop", ("bad_source",),
                                                               "from_pod/drop"), src
    pod = Device(ifindex=7, addrs=frozenset({"10.244.0.2"}))
    spoofed = explain(snap, Flow("10.244.0.3", 1000, "10.96.0.10", 80, "TCP"), device=pod)
    assert (spoofed.verdict, spoofed.counters) == ("drop", ("spoofed",))
    # A listed device checks its sources before the bad-source rule; an unlisted one takes any.
    assert explain(snap, Flow("127.0.0.1", 1, "10.96.0.10", 80, "TCP"),
                   device=pod).counters == ("spoofed",)
    assert explain(snap, Flow("10.244.0.3", 1000, "10.96.0.10", 80, "TCP")).verdict == "dnat"
    # The flow of another device: taken only from a source this device may use.
    flow = Flow("10.244.0.3", 1000, "10.96.0.10", 80, "TCP", "A")
    ct = ConntrackView("10.244.0.11:8080", 1, 1.0, 1.0, flags=1, ifindex=9)
    assert explain(snap, flow, ct, device=pod).counters == ("spoofed",)
    assert explain(snap, flow, ct, device=Device(ifindex=7)).verdict == "dnat"


def test_explain_scopes_from_outside():
    from ebpflb.explain import NODE, Device

    node = Device(NODE, remote={"10.244.1.11": "192.168.200.10"})
    snap = _world()
    assert explain(snap, Flow("192.168.200.2", 1, "10.96.0.10", 80, "TCP"),
                   device=node).counters == ("external_clusterip",)
    sport = _port_to(snap, "10.244.1.11:8080", "192.168.200.2", ("192.168.200.10", 30080))
    e = explain(snap, Flow("192.168.200.2", sport, "192.168.200.10", 30080, "TCP"), device=node)
    assert (e.verdict, e.backend) == ("forward", "10.244.1.11:8080")
    assert e.source.startswith("192.168.200.10:") and "node_forward" in e.counters
    # Not a SYN, no state: forwarded by hash to a local backend, dropped towards a remote one.
    ack = Flow("192.168.200.2", sport, "192.168.200.10", 30080, "TCP", "A")
    assert explain(snap, ack, device=node).counters == ("tcp_no_state",)
    assert explain(snap, ack, device=node).counted_as == "node_in/drop"
    assert explain(snap, ack).stateless and explain(snap, ack).verdict == "dnat"
    assert (explain(snap, ack).counters, explain(snap, ack).counted_as) == ((), "from_pod/stateless")
    local = _world(local=True)
    e = explain(local, Flow("192.168.200.2", sport, "192.168.200.10", 30080, "TCP"), device=node)
    assert e.frontend.endswith("@external") and e.backend == "10.244.0.11:8080"
    ranged = _world(ranges=("192.168.200.0/28",), typ="LoadBalancer")
    denied = explain(ranged, Flow("192.168.200.99", 1, "192.168.200.200", 80, "TCP"), device=node)
    assert denied.counters == ("source_denied",)


def test_explain_no_backend_and_lost_state():
    from dataclasses import replace

    from ebpflb.explain import CtKey

    empty = program(backends=())
    flow = Flow("10.244.0.2", 40000, "10.96.0.10", 80, "TCP")
    rejected = explain(empty, flow)
    assert (rejected.verdict, rejected.counters, rejected.counted_as) == ("reject", (),
                                                                          "from_pod/reject")
    rst = explain(empty, replace(flow, tcp_flags="R"))  # never answered
    assert (rst.verdict, rst.counters, rst.counted_as) == ("drop", ("no_backend",), "from_pod/drop")
    snap = program()
    e = explain(snap, flow)
    ack = Flow("10.244.0.2", 40000, "10.96.0.10", 80, "TCP", "A")
    assert explain(snap, ack).counters == ()
    backend_id = e.hashed_backend_id
    addr, port = e.backend.split(":")
    reply = {CtKey(addr, int(port), "10.244.0.2", 40000, 6, True):
             ConntrackView("10.96.0.10:80", backend_id, 1.0, 1.0, flags=0)}
    rebuilt = explain(snap, ack, ct_table=reply)
    assert rebuilt.counters == ("conntrack_rebuilt",) and rebuilt.backend == e.backend
    assert rebuilt.counted_as == "from_pod/established"
    closed = {**reply, CtKey("10.244.0.2", 40000, "10.96.0.10", 80, 6):
              ConntrackView(e.backend, backend_id, 5.0, 1.0, flags=0x3)}
    assert explain(snap, ack, ct_table=closed).counters == ()  # still its flow
    assert explain(snap, flow, ct_table=closed).counters == ("conntrack_insert",)


def test_explain_renders_the_device_and_the_counters():
    snap = program()
    text = render(explain(snap, parse_flow("10.244.0.2:40000", "10.96.0.10:80", "tcp", "a")))
    assert "pod device" in text and "from_pod/stateless" in text and "/TCP [A]" in text
    with pytest.raises(ValueError, match="TCP flags"):
        parse_flow("10.244.0.2:40000", "10.96.0.10:80", "tcp", "X")


def test_explain_from_outside_shows_the_snat_and_forwarding_steps():
    from ebpflb.explain import NODE, Device, render

    node = Device(NODE, remote={"10.244.1.11": "192.168.200.10"})
    snap = _world()
    sport = _port_to(snap, "10.244.1.11:8080", "192.168.200.2", ("192.168.200.10", 30080))
    text = render(explain(snap, Flow("192.168.200.2", sport, "192.168.200.10", 30080, "TCP"),
                          device=node))
    assert "1. DNAT" in text and "-> 10.244.1.11:8080" in text
    assert "2. SNAT" in text and f"source 192.168.200.2:{sport} -> 192.168.200.10:" in text
    assert "3. forward" in text and "4. replies" in text
    local = _world(local=True)
    text = render(explain(local, Flow("192.168.200.2", sport, "192.168.200.10", 30080, "TCP"),
                          device=node))
    assert "client's address 192.168.200.2 is kept" in text and "2. deliver" in text
    assert "SNAT" not in text


def test_global_counters_keep_their_shape_and_show_what_moved():
    """`ebpflb stats --verdicts`: JSON lists every name, zero or not; the table shows the
    verdict columns some hook counted, then the drop reasons and events that are not zero."""
    from ebpflb.dataplane.bcc_maps import DROP_REASONS, EVENTS, VERDICT_HOOKS, VERDICT_NAMES
    from ebpflb.stats import global_counters, render_global_counters

    verdicts = {(h, v): 0 for h in VERDICT_HOOKS for v in VERDICT_NAMES}
    verdicts[("from_pod", "new")] = 3
    verdicts[("node_in", "drop")] = 1
    reasons = {r: 0 for r in DROP_REASONS}
    reasons["source_denied"] = 1
    events = {e: 0 for e in EVENTS}
    events["conntrack_insert"] = 3
    doc = global_counters(verdicts, reasons, events)
    assert list(doc) == ["verdicts", "drops", "events"]
    assert list(doc["verdicts"]) == list(VERDICT_HOOKS)
    assert all(list(row) == list(VERDICT_NAMES) for row in doc["verdicts"].values())
    assert doc["verdicts"]["from_pod"]["new"] == 3 and doc["drops"]["source_denied"] == 1
    lines = render_global_counters(doc).splitlines()
    assert lines[0].split() == ["hook", "new", "drop"]
    assert lines[1].split() == ["from_pod", "3", "0"]
    assert lines[4].split() == ["node_in", "0", "1"]
    assert "drops: source_denied 1" in lines and "events: conntrack_insert 3" in lines


def test_explain_a_half_closed_flow_keeps_its_reply_tuple():
    """explain's copy of ct4_reply_held (tests/bpf/test_hardening.py checks the program on the
    same story): a flow whose backend sent FIN but whose client did not still holds its reply
    tuple, so a new flow from the same client port to another frontend of that backend gets a
    port of its own; once both sides closed, or after a RST, it takes the tuple."""
    from ebpflb.explain import CtKey

    snap = _world()
    client, cluster, nodeport = "10.244.0.2", ("10.96.0.10", 80), ("192.168.200.10", 30080)
    sport = next(p for p in range(41000, 42000)
                 if explain(snap, Flow(client, p, *cluster, "TCP")).hashed_backend ==
                 explain(snap, Flow(client, p, *nodeport, "TCP")).hashed_backend)
    first = explain(snap, Flow(client, sport, *cluster, "TCP"))
    addr, port = first.hashed_backend.split(":")

    def table(fwd_flags, rev_flags):
        return {CtKey(client, sport, *cluster, 6):
                ConntrackView(first.hashed_backend, first.hashed_backend_id, 5.0, 1.0,
                              flags=fwd_flags),
                CtKey(addr, int(port), client, sport, 6, True):
                ConntrackView("10.96.0.10:80", first.hashed_backend_id, 5.0, 1.0,
                              flags=rev_flags)}

    new = Flow(client, sport, *nodeport, "TCP")
    half_closed = explain(snap, new, ct_table=table(0x1, 0x3))  # the backend's FIN only
    assert "port_nat" in half_closed.counters and half_closed.source != f"{client}:{sport}"
    for fwd, rev in ((0x3, 0x3), (0x1, 0x43)):  # closed both ways; reset by the backend
        taken = explain(snap, new, ct_table=table(fwd, rev))
        assert "port_nat" not in taken.counters and taken.counters == ("conntrack_insert",)
