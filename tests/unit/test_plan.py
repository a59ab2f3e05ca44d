"""Plan and apply (pure): fewest writes, ids kept, ordering so that no packet can ever see a
frontend whose slots or backends are missing, capacity refused up front, rollback on failure.

The MapWriter here is a dict: these tests are about the planner's logic; the bpf tier applies
plans to real maps."""
from typing import Any, Dict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.apply import ApplyError, apply_plan, read_snapshot
from ebpflb.draining import is_draining
from ebpflb.maps import (CONTROL_MAPS, BACKENDS, SERVICES, SLOTS, SRC_RANGES, SVC_F_SRC_RANGES, SVC_META,
                         BackendValue, SlotKey, SvcKey, SvcValue, empty_snapshot, slot_tables)
from ebpflb.model import Backend, DesiredState, Frontend
from ebpflb.plan import DELETE, RESET, UPSERT, PlanError, apply_to, compute_plan
from tests.helpers.dict_writer import DictWriter

pytestmark = pytest.mark.unit

WEB = Frontend("10.96.0.10", 80, "TCP", "demo/web", "http")
DNS = Frontend("10.96.0.20", 53, "UDP", "demo/dns", "dns")


def b(i: int, port: int = 8080) -> Backend:
    return Backend(f"10.244.0.{i}", port)


def state(frontends: Dict[Frontend, tuple]) -> DesiredState:
    return DesiredState(frontends=dict(frontends), skipped=())


def test_initial_plan_writes_dependencies_first():
    plan = compute_plan(state({WEB: (b(11), b(12)), DNS: (b(21, 9053),)}), empty_snapshot())
    # Counters of the new ids are zeroed first, before anything can count into them.
    resets = [op for op in plan.ops if op.action == RESET]
    assert plan.ops[:len(resets)] == tuple(resets)
    assert [(op.map, op.key) for op in resets] == [
        ("lb4_svc_stats", 1), ("lb4_svc_stats", 2), ("lb4_backend_stats", 1),
        ("lb4_backend_stats", 2), ("lb4_backend_stats", 3)]
    maps_in_order = [op.map for op in plan.ops if op.action != RESET]
    assert all(op.action == UPSERT for op in plan.ops[len(resets):])
    last = {m: max(i for i, x in enumerate(maps_in_order) if x == m) for m in set(maps_in_order)}
    first = {m: maps_in_order.index(m) for m in set(maps_in_order)}
    assert last[BACKENDS] < first[SLOTS] and last[SLOTS] < first[SERVICES]
    assert plan.counts() == {"lb4_backends upsert": 3, "lb4_slots upsert": 3,
                             "lb4_svc_meta upsert": 2, "lb4_services upsert": 2,
                             "lb4_vips upsert": 2,
                             "lb4_svc_stats reset": 2, "lb4_backend_stats reset": 3}
    after = apply_to(empty_snapshot(), plan)
    web = after[SERVICES][SvcKey("10.96.0.10", 80, 6)]
    assert web.count == 2
    assert [after[BACKENDS][after[SLOTS][web.svc_id][i]] for i in range(2)] == [
        BackendValue("10.244.0.11", 8080, 6, web.svc_id), BackendValue("10.244.0.12", 8080, 6, web.svc_id)]
    assert after[SVC_META][web.svc_id] == "demo/web:http"


def test_same_state_again_is_no_change():
    desired = state({WEB: (b(11), b(12)), DNS: ()})
    snap = apply_to(empty_snapshot(), compute_plan(desired, empty_snapshot()))
    plan = compute_plan(desired, snap)
    assert not plan and plan.render() == "no changes"


def test_adding_a_backend_touches_only_that_service():
    snap = apply_to(empty_snapshot(), compute_plan(state({WEB: (b(11),), DNS: (b(21, 9053),)}),
                                                   empty_snapshot()))
    plan = compute_plan(state({WEB: (b(11), b(12)), DNS: (b(21, 9053),)}), snap)
    assert [(op.action, op.map) for op in plan.ops] == [
        (RESET, "lb4_backend_stats"), (UPSERT, BACKENDS), (UPSERT, SLOTS), (UPSERT, SERVICES)]
    assert plan.ops[-1].new.count == 2 and plan.ops[-1].old.count == 1


def test_removing_a_backend_shrinks_before_deleting():
    snap = apply_to(empty_snapshot(), compute_plan(state({WEB: (b(11), b(12), b(13))}),
                                                   empty_snapshot()))
    plan = compute_plan(state({WEB: (b(11), b(13))}), snap)
    kinds = [(op.action, op.map) for op in plan.ops]
    assert kinds == [(UPSERT, SLOTS), (UPSERT, SERVICES), (DELETE, SLOTS), (DELETE, BACKENDS)]


def test_each_frontend_has_its_own_backend_records():
    """A pod behind two frontends gets a record per frontend: its counters stay per Service."""
    plan = compute_plan(state({WEB: (b(11),), Frontend("10.96.0.11", 80, "TCP", "demo/web2"): (b(11),)}),
                        empty_snapshot())
    assert plan.counts()["lb4_backends upsert"] == 2
    after = apply_to(empty_snapshot(), plan)
    assert sorted(v.svc_id for v in after[BACKENDS].values()) == sorted(
        v.svc_id for v in after[SERVICES].values())


def test_new_ids_never_reuse_ids_still_in_the_maps():
    snap = apply_to(empty_snapshot(), compute_plan(state({WEB: (b(11),)}), empty_snapshot()))
    old_id = snap[SERVICES][SvcKey("10.96.0.10", 80, 6)].svc_id
    old_backend = next(iter(snap[BACKENDS]))
    # Replace WEB by DNS in one plan: DNS must not take WEB's ids while WEB is still programmed.
    plan = compute_plan(state({DNS: (b(21, 9053),)}), snap)
    after = apply_to(snap, plan)
    assert after[SERVICES][SvcKey("10.96.0.20", 53, 17)].svc_id != old_id
    assert old_backend not in after[BACKENDS]
    assert set(after[BACKENDS]) and old_backend not in after[BACKENDS]


def test_capacity_is_checked_at_the_peak_of_the_update():
    snap = apply_to(empty_snapshot(), compute_plan(state({WEB: (b(11), b(12))}), empty_snapshot()))
    # Swapping both backends needs 4 backend entries during the update (old ones go last).
    desired = state({WEB: (b(13), b(14))})
    with pytest.raises(PlanError, match="lb4_backends would need 4 entries .* holds 3"):
        compute_plan(desired, snap, {BACKENDS: 3})
    assert compute_plan(desired, snap, {BACKENDS: 4})


def test_apply_rolls_back_on_failure():
    writer = DictWriter()
    apply_plan(compute_plan(state({WEB: (b(11), b(12))}), empty_snapshot()), writer)
    good = read_snapshot(writer)
    plan = compute_plan(state({WEB: (b(13),), DNS: (b(21, 9053),)}), good)
    writer.fail_at = writer.writes + len(plan) - 2
    with pytest.raises(ApplyError, match="earlier writes undone"):
        apply_plan(plan, writer)
    assert read_snapshot(writer) == good


frontends = st.sampled_from([
    Frontend("10.96.0.10", 80, "TCP", "a/a"), Frontend("10.96.0.10", 80, "UDP", "a/b"),
    Frontend("10.96.0.11", 443, "TCP", "a/c"), Frontend("10.96.1.1", 53, "UDP", "a/d"),
    # one load balancer frontend whose source ranges come and go and change
    Frontend("192.0.2.50", 80, "TCP", "a/e", kind="LoadBalancer"),
    Frontend("192.0.2.50", 80, "TCP", "a/e", kind="LoadBalancer", source_ranges=("10.0.0.0/8",)),
    Frontend("192.0.2.50", 80, "TCP", "a/e", kind="LoadBalancer",
             source_ranges=("10.0.0.0/8", "192.168.0.0/16"), external_local=True)])
backends = st.lists(st.builds(Backend, st.sampled_from([f"10.244.0.{i}" for i in range(1, 9)]),
                              st.sampled_from([8080, 9053])), max_size=5, unique=True)
desired_states = st.dictionaries(frontends, backends.map(lambda bs: tuple(sorted(bs))), max_size=4)


def _consistent(snap) -> bool:
    """What a packet could see: every frontend's slots exist and point at existing backends, and
    a frontend restricted to source ranges has its ranges (all ranges here are IPv4)."""
    for svc in snap[SERVICES].values():
        if svc.flags & SVC_F_SRC_RANGES and not any(k.svc_id == svc.svc_id for k in snap[SRC_RANGES]):
            return False
        table = snap[SLOTS].get(svc.svc_id, ())
        if len(table) < svc.count:
            return False
        for slot in range(svc.count):
            backend = table[slot]
            if backend not in snap[BACKENDS]:
                return False
            if snap[BACKENDS][backend].svc_id != svc.svc_id:
                return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.lists(desired_states, min_size=1, max_size=4))
def test_every_intermediate_state_is_consistent(sequence):
    """Across any sequence of changes, after every single write the maps are consistent, and the
    end state has exactly the desired frontends and backends."""
    snap = empty_snapshot()
    ever = set()  # the TCP frontends programmed so far: those that went away drain
    for frontends_map in sequence:
        desired = state(frontends_map)
        plan = compute_plan(desired, snap)
        for op in plan.ops:
            snap = apply_to(snap, type(plan)((op,)))
            assert _consistent(snap), op
        assert not compute_plan(desired, snap)
        wanted = {SvcKey(f.vip, f.port, 6 if f.protocol == "TCP" else 17) for f in frontends_map}
        ever |= {k for k in wanted if k.proto == 6}
        assert {k for k, v in snap[SERVICES].items() if is_draining(v)} == ever - wanted
        programmed = {}
        for key, svc in snap[SERVICES].items():
            if is_draining(svc):
                continue
            programmed[key] = [snap[BACKENDS][snap[SLOTS][svc.svc_id][i]][:3]
                               for i in range(svc.count)]
        assert programmed == {
            SvcKey(f.vip, f.port, 6 if f.protocol == "TCP" else 17):
                [(x.ip, x.port, 6 if f.protocol == "TCP" else 17) for x in bs]
            for f, bs in frontends_map.items()}
        # No garbage is left: every backend and slot in the maps is used.
        assert {i: len(t) for i, t in snap[SLOTS].items()} == {
            s.svc_id: s.count for s in snap[SERVICES].values() if s.count}
        assert set(snap[BACKENDS]) == {b for t in snap[SLOTS].values() for b in t}
        assert {(k.svc_id, k.cidr) for k in snap[SRC_RANGES]} == {
            (snap[SERVICES][SvcKey(f.vip, f.port, 6)].svc_id, cidr)
            for f in frontends_map for cidr in f.source_ranges}


def test_a_device_map_changes_new_records_first_and_removals_last():
    """lb4_pod_addrs and lb4_node_ifs go through plan and apply too (ebpflb.plan.diff_map): a
    device's new address and its marker are written before the address that went is deleted."""
    from ebpflb.maps import NODE_IFS, POD_ADDRS, NodeIfValue, PodAddrKey
    from ebpflb.plan import DELETE, UPSERT, diff_map

    have = {PodAddrKey(7, "0.0.0.0"): 1, PodAddrKey(7, "10.244.0.5"): 1}
    want = {PodAddrKey(7, "0.0.0.0"): 1, PodAddrKey(7, "10.244.0.6"): 1}
    plan = diff_map(POD_ADDRS, want, have)
    assert [(op.action, op.key) for op in plan.ops] == [
        (UPSERT, PodAddrKey(7, "10.244.0.6")), (DELETE, PodAddrKey(7, "10.244.0.5"))]
    assert len(diff_map(POD_ADDRS, want, want)) == 0
    # A new device: its addresses go in before its marker (written first, the marker would
    # refuse the pod's own packets until they are in; failed on dfccfcc, found by review).
    fresh = {PodAddrKey(9, "0.0.0.0"): 1, PodAddrKey(9, "10.244.0.7"): 1,
             PodAddrKey(9, "10.244.0.8"): 1}
    assert [op.key.addr for op in diff_map(POD_ADDRS, fresh, {}).ops] == [
        "10.244.0.7", "10.244.0.8", "0.0.0.0"]
    plan = diff_map(NODE_IFS, {3: NodeIfValue("192.168.200.10")}, {3: NodeIfValue("192.168.200.9")})
    assert [str(op) for op in plan.ops] == [
        "~ lb4_node_ifs node device 3 = SNAT to 192.168.200.10 (was SNAT to 192.168.200.9)"]


WEB6 = Frontend("fd00:96::10", 80, "TCP", "demo/web", "http")


def b6(i: int, port: int = 8080) -> Backend:
    return Backend(f"fd00:10:244::{i:x}", port)


def test_ipv6_records_go_to_the_twin_maps_with_ids_shared_with_ipv4():
    """A dual-stack Service's IPv6 frontend and backends are written to lb6_services and
    lb6_backends; its slots, name and counters use the same maps as IPv4 (ids are shared), and
    a read-back merges the twins into one snapshot again."""
    from ebpflb.maps import BACKENDS6, SERVICES6, VIPS, VIPS6

    plan = compute_plan(state({WEB: (b(11),), WEB6: (b6(0x11), b6(0x12))}), empty_snapshot())
    by_map: Dict[str, list] = {}
    for op in plan.ops:
        if op.action == UPSERT:
            by_map.setdefault(str(op.map), []).append(op.key)
    assert by_map[SERVICES] == [SvcKey("10.96.0.10", 80, 6)]
    assert by_map[SERVICES6] == [SvcKey("fd00:96::10", 80, 6)]
    assert by_map[VIPS] == ["10.96.0.10"] and by_map[VIPS6] == ["fd00:96::10"]
    assert sorted(by_map[BACKENDS]) == [1] and sorted(by_map[BACKENDS6]) == [2, 3]
    assert sorted(k.svc_id for k in by_map[SLOTS]) == [1, 2, 2]  # one slots map for both
    writer = DictWriter()
    apply_plan(plan, writer)
    assert writer.maps[BACKENDS6][2].addr == "fd00:10:244::11"
    snap = read_snapshot(writer)
    assert snap == apply_to(empty_snapshot(), plan)
    assert not compute_plan(state({WEB: (b(11),), WEB6: (b6(0x11), b6(0x12))}), snap)
    # Kernel entries per kernel map, for the capacity check.
    sizes = snap.sizes()
    assert (sizes[SERVICES], sizes[SERVICES6], sizes[BACKENDS], sizes[BACKENDS6]) == (1, 1, 1, 2)


def test_a_backend_id_that_changes_family_leaves_the_other_map():
    """An id freed by an IPv4 backend and given to an IPv6 one (or the reverse) is written to
    its new family's map and deleted from the old one's: no stale record is left behind."""
    from ebpflb.maps import BACKENDS6
    from ebpflb.plan import diff

    snap = read_snapshot(DictWriter())
    have = snap.copy()
    have.backends[5] = BackendValue("10.244.0.5", 8080, 6, 1)
    want = snap.copy()
    want.backends[5] = BackendValue("fd00:10:244::5", 8080, 6, 2)
    plan = diff(want, have)
    assert [(op.action, str(op.map), op.key) for op in plan.ops] == [
        (UPSERT, BACKENDS6, 5), (DELETE, BACKENDS, 5)]
    writer = DictWriter()
    writer.maps[BACKENDS][5] = have.backends[5]
    apply_plan(plan, writer)
    assert (writer.maps[BACKENDS], writer.maps[BACKENDS6]) == ({}, {5: want.backends[5]})


def test_an_ipv6_frontend_is_restricted_by_its_ipv6_source_ranges_only():
    """Each family by its own ranges (kube-proxy's per-family rule): the IPv6 ranges go to the
    IPv6 frontend, the IPv4 ones to the IPv4 frontend; a family without any stays open."""
    from ebpflb.maps import SRC_RANGES6

    ranges = ("10.0.0.0/8", "2001:db8::/32")
    lb4 = Frontend("192.0.2.50", 80, "TCP", "a/lb", kind="LoadBalancer", source_ranges=ranges)
    lb6 = Frontend("2001:db8:1::50", 80, "TCP", "a/lb", kind="LoadBalancer", source_ranges=ranges)
    only4 = Frontend("2001:db8:1::51", 80, "TCP", "a/lb", kind="LoadBalancer",
                     source_ranges=("10.0.0.0/8",))
    snap = apply_to(empty_snapshot(), compute_plan(state({lb4: (), lb6: (), only4: ()}),
                                                   empty_snapshot()))
    ids = {k.vip: v.svc_id for k, v in snap[SERVICES].items()}
    flagged = {k.vip for k, v in snap[SERVICES].items() if v.flags & SVC_F_SRC_RANGES}
    assert {(k.svc_id, k.cidr) for k in snap[SRC_RANGES]} == {
        (ids["192.0.2.50"], "10.0.0.0/8"), (ids["2001:db8:1::50"], "2001:db8::/32")}
    assert flagged == {"192.0.2.50", "2001:db8:1::50"}
    writer = DictWriter()
    apply_plan(compute_plan(state({lb4: (), lb6: ()}), empty_snapshot()), writer)
    assert [k.cidr for k in writer.maps[SRC_RANGES6]] == ["2001:db8::/32"]


def test_ipv4_and_ipv6_backends_share_the_backend_id_bound():
    """Backend ids (and their counters) are one space for both families: three IPv4 and three
    IPv6 backends do not fit a limit of 4, though each family's map alone would."""
    from ebpflb.plan import CapacityError

    limits = {"lb4_backends": 4, "lb6_backends": 4}
    with pytest.raises(CapacityError, match="backend ids"):
        compute_plan(state({WEB: (b(1), b(2), b(3)), WEB6: (b6(1), b6(2), b6(3))}),
                     empty_snapshot(), limits)
    assert compute_plan(state({WEB: (b(1), b(2)), WEB6: (b6(1), b6(2))}), empty_snapshot(), limits)
