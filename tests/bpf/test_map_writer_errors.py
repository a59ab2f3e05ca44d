"""The MapWriter's error path against real maps: a batch the kernel refuses (the map is full) is
an OSError naming the map, and apply_plan undoes what the plan wrote before it, so the maps hold
exactly what they held. (The planner's capacity check would refuse such a plan first: here it is
left out on purpose, to reach the kernel's own refusal.)"""
import pytest

from ebpflb.apply import ApplyError, apply_plan, read_snapshot
from ebpflb.maps import BACKENDS, BackendValue
from ebpflb.model import Backend, DesiredState, Frontend
from ebpflb.plan import compute_plan

from .conftest import maps_only

pytestmark = pytest.mark.bpf


@pytest.fixture
def small_maps():
    with maps_only("ebpflb-errs-", max_services=16, max_backends=16, max_slots=1024,
                   ct_max_entries=1024) as (_, writer):
        yield writer


def state(n_frontends: int, per: int) -> DesiredState:
    return DesiredState({Frontend(f"10.96.0.{f + 1}", 80, "TCP", f"a/s{f}"):
                         tuple(Backend(f"10.244.{f}.{b + 1}", 8080) for b in range(per))
                         for f in range(n_frontends)}, ())


def test_a_full_map_is_an_oserror_and_the_apply_is_undone(small_maps) -> None:
    writer = small_maps
    apply_plan(compute_plan(state(2, 3), read_snapshot(writer)), writer)
    before = read_snapshot(writer)
    with pytest.raises(OSError, match="lb4_backends"):
        writer.upsert(BACKENDS, list(range(100, 130)),
                      [BackendValue("10.244.9.9", 1, 6, 1)] * 30)
    # The kernel may have written part of the batch before it refused: what apply undoes.
    writer.delete(BACKENDS, list(range(100, 130)))  # (keys never written are skipped)
    assert read_snapshot(writer) == before
    plan = compute_plan(state(4, 5), before)  # 20 more backends than the map holds
    with pytest.raises(ApplyError) as exc:
        apply_plan(plan, writer)
    assert exc.value.rolled_back and "lb4_backend" in str(exc.value)  # the records or their counters
    assert read_snapshot(writer) == before
