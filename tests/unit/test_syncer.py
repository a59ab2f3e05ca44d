"""The syncer's correctness net (pure: dict maps): the full sync at start, a refused plan kept
pending and retried, a failed write undone and followed by a full sync, the periodic full sync
finding nothing in steady state and repairing (and counting) drift when something else wrote."""
import pytest

from ebpflb.changes import Change
from ebpflb.convert import ENDPOINT_SLICE, SERVICE
from ebpflb.maps import BACKENDS, SERVICES, SLOTS, BackendValue, SlotKey
from ebpflb.model import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
from ebpflb.syncer import FAILED, FULL, INCREMENTAL, PERIODIC, REFUSED, Syncer
from tests.helpers.dict_writer import DictWriter

pytestmark = pytest.mark.unit


def svc(i: int) -> Change:
    s = Service("a", f"s{i}", "ClusterIP", (f"10.96.0.{i + 1}",), (ServicePort("", "TCP", 80, 8080),))
    return Change(SERVICE, ("a", f"s{i}"), s)


def eps(i: int, *addresses: str) -> Change:
    s = EndpointSlice("a", f"s{i}-x", f"s{i}", "IPv4", (EndpointPort("", 8080, "TCP"),),
                      tuple(Endpoint((a,), True, True, False) for a in addresses))
    return Change(ENDPOINT_SLICE, ("a", f"s{i}-x"), s)


def started(writer=None, limits=None) -> Syncer:
    syncer = Syncer(writer or DictWriter(), limits)
    syncer.take([svc(0), eps(0, "10.244.0.1", "10.244.0.2"), svc(1), eps(1, "10.244.0.3")])
    outcome = syncer.sync()
    assert outcome.kind == FULL and outcome.reason == "start" and outcome.applied
    return syncer


def backends(syncer: Syncer) -> list:
    return sorted(v.addr for v in syncer.writer.dump(BACKENDS).values())


def test_start_is_a_full_sync_that_adopts_what_the_pins_hold():
    """A restarted agent's first sync plans against what the maps already hold: nothing to write
    when they already hold the same state (under whatever ids)."""
    writer = DictWriter()
    started(writer)
    again = Syncer(writer)
    again.take([svc(0), eps(0, "10.244.0.1", "10.244.0.2"), svc(1), eps(1, "10.244.0.3")])
    outcome = again.sync()
    assert outcome.kind == FULL and outcome.writes == 0
    again.take([eps(1, "10.244.0.4")])
    outcome = again.sync()
    assert outcome.kind == INCREMENTAL and outcome.services == 1
    assert backends(again) == ["10.244.0.1", "10.244.0.2", "10.244.0.4"]


def test_a_plan_that_does_not_fit_is_refused_whole_and_retried():
    syncer = started(limits={"lb4_backends": 4})
    syncer.take([eps(0, "10.244.0.5", "10.244.0.6", "10.244.0.7")])  # needs 7 during the update
    outcome = syncer.sync()
    assert outcome.status == REFUSED and "lb4_backends would need" in outcome.error
    assert backends(syncer) == ["10.244.0.1", "10.244.0.2", "10.244.0.3"]  # untouched
    assert syncer.pending
    syncer.take([eps(1)])  # another change meanwhile; the map is then made larger
    syncer.planner.limits["lb4_backends"] = 6  # (removals run last: they lower no peak)
    outcome = syncer.sync()
    assert outcome.applied and outcome.services == 2
    assert backends(syncer) == ["10.244.0.5", "10.244.0.6", "10.244.0.7"]


def test_one_service_that_does_not_fit_does_not_hold_back_the_others():
    """A batch of two changes does not fit; alone, the small one does: it goes in, the big one
    stays pending and is retried."""
    syncer = started(limits={"lb4_backends": 5})
    syncer.take([eps(0, "10.244.0.5", "10.244.0.6", "10.244.0.7"), eps(1, "10.244.0.9")])
    outcome = syncer.sync()
    assert outcome.applied and "1 Services not programmed: a/s0" in outcome.error
    assert backends(syncer) == ["10.244.0.1", "10.244.0.2", "10.244.0.9"]
    assert syncer.pending
    assert syncer.sync().status == REFUSED  # still too big alone
    syncer.planner.limits["lb4_backends"] = 6
    assert syncer.sync().applied and not syncer.pending
    assert backends(syncer) == ["10.244.0.5", "10.244.0.6", "10.244.0.7", "10.244.0.9"]


def test_a_failed_write_is_undone_and_a_full_sync_follows():
    writer = DictWriter()
    syncer = started(writer)
    before = {m: dict(t) for m, t in writer.maps.items()}
    writer.fail_at = writer.writes + 2
    syncer.take([eps(0, "10.244.0.8"), eps(1, "10.244.0.9")])
    outcome = syncer.sync()
    assert outcome.status == FAILED and "earlier writes undone" in outcome.error
    assert writer.maps == before
    assert syncer.counters.failed == 1 and syncer.pending
    outcome = syncer.sync()
    assert outcome.kind == FULL and outcome.reason == "after a failed apply" and outcome.applied
    assert backends(syncer) == ["10.244.0.8", "10.244.0.9"]


def test_periodic_full_sync_finds_nothing_in_steady_state():
    syncer = started()
    syncer.take([eps(0, "10.244.0.1")])
    syncer.request_full(PERIODIC)
    first = syncer.sync()  # the pending change goes first, on its own
    assert first.kind == INCREMENTAL and first.writes > 0
    second = syncer.sync()
    assert second.kind == FULL and second.reason == PERIODIC and second.writes == 0
    assert syncer.counters.drift_repairs == 0 and syncer.sync() is None


def test_periodic_full_sync_repairs_drift_and_counts_it():
    """Someone else deleted a backend record and rewrote a slot: the periodic full sync puts
    them back and counts the writes as drift."""
    writer = DictWriter()
    syncer = started(writer)
    victim = next(k for k, v in writer.maps[BACKENDS].items() if v.addr == "10.244.0.3")
    del writer.maps[BACKENDS][victim]
    writer.maps[SLOTS][SlotKey(1, 0)] = 999
    writer.maps[BACKENDS][999] = BackendValue("10.244.9.9", 1, 6, 1)
    syncer.request_full(PERIODIC)
    outcome = syncer.sync()
    assert outcome.kind == FULL and outcome.writes >= 3
    assert syncer.counters.drift_repairs == outcome.writes
    assert backends(syncer) == ["10.244.0.1", "10.244.0.2", "10.244.0.3"]
    syncer.request_full(PERIODIC)
    assert syncer.sync().writes == 0


def test_changes_that_touch_nothing_programmed_plan_nothing():
    syncer = started()
    syncer.take([svc(0)])  # the same Service again
    outcome = syncer.sync()
    assert outcome.kind == INCREMENTAL and outcome.writes == 0
    assert writer_frontends(syncer) == ["10.96.0.1:80/TCP", "10.96.0.2:80/TCP"]


def writer_frontends(syncer: Syncer) -> list:
    return sorted(str(k) for k in syncer.writer.dump(SERVICES))


def test_a_full_sync_too_big_for_the_maps_programs_the_services_that_fit():
    """At start, more Services than the maps hold (here 4 backend ids; a dual-stack cluster needs
    one per endpoint address of each family): the first Services by namespace and name that fit
    are programmed, the rest stay pending and say so. Before, the whole sync was refused and
    the node served no Service at all. Room made later (an endpoint gone), the rest go in."""
    syncer = Syncer(DictWriter(), {"lb4_backends": 4})
    syncer.take([svc(0), eps(0, "10.244.0.1", "10.244.0.2"), svc(1), eps(1, "10.244.0.3"),
                 svc(2), eps(2, "10.244.0.4", "10.244.0.5")])
    outcome = syncer.sync()
    assert outcome.kind == FULL and outcome.applied
    assert "1 of 3 Services not programmed" in outcome.error
    assert backends(syncer) == ["10.244.0.1", "10.244.0.2", "10.244.0.3"]
    assert syncer.pending
    outcome = syncer.sync()  # still no room: refused again, nothing moves
    assert outcome.status == REFUSED
    assert backends(syncer) == ["10.244.0.1", "10.244.0.2", "10.244.0.3"]
    syncer.take([eps(0, "10.244.0.1")])
    syncer.sync()
    syncer.sync()
    assert backends(syncer) == ["10.244.0.1", "10.244.0.3", "10.244.0.4", "10.244.0.5"]
    assert not syncer.pending
