"""Incremental sync against real pinned maps: the property of tests/unit/test_incremental_sync.py
(after every step the maps hold what a fresh full sync of the same objects holds, and a full plan
against a read-back finds nothing), with the kernel's maps written through the agent's
BccMapWriter (batch syscalls, packed records) and read back from the kernel."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebpflb.apply import read_snapshot
from ebpflb.maps import CONTROL_MAPS, SLOTS, Records
from ebpflb.model import desired_state
from ebpflb.reconcile import reconcile
from ebpflb.syncer import Syncer

from .conftest import maps_only
from ..unit.test_incremental_sync import CTX, canonical, events, fresh_full_sync, run_steps

pytestmark = pytest.mark.bpf


@pytest.fixture(scope="module")
def maps():
    with maps_only("ebpflb-incr-", max_services=4096, max_backends=16384, max_slots=262144,
                   ct_max_entries=1024) as pinned:
        yield pinned


def raw(records: Records) -> dict:
    """Records in the per-record form canonical() reads (slot tables back to slot keys)."""
    from ebpflb.maps import SlotKey

    out = {name: dict(records[name]) for name in CONTROL_MAPS}
    out[SLOTS] = {SlotKey(svc, i): b for svc, table in records.slots.items()
                  for i, b in enumerate(table) if b}
    return out


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(events(), min_size=1, max_size=10))
def test_incremental_steps_on_real_maps_equal_a_fresh_full_sync(maps, steps) -> None:
    config, writer = maps
    reconcile(desired_state((), ()), writer, config.map_limits)  # empty from the last example
    syncer = Syncer(writer, config.map_limits, ctx=CTX)
    assert syncer.sync().applied
    for _, outcome, ctx in run_steps(syncer, steps):
        assert outcome is None or outcome.applied, outcome
        _, fresh = fresh_full_sync(syncer, ctx)
        kernel = read_snapshot(writer)
        assert canonical(raw(kernel)) == canonical(fresh.maps)
        everything = {k: syncer.model.frontends_of(k) for k in syncer.model.holders()}
        assert not syncer.planner.plan_full(everything, kernel).plan
