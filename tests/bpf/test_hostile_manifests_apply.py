"""Hostile manifests against real pinned maps (issue 9, part 5): a sequence of manifest texts,
valid and invalid mixed, applied the way the agent applies them (parse; refused -> keep the last
good state; else model -> reconcile). After every step the maps, read back from the kernel, hold
exactly the last good desired state, never a mixture; also when a map write fails part-way
(apply_plan undoes what it wrote).

The expected contents are computed independently: the last good desired state planned against an
empty snapshot. Ids depend on history, so the comparison is of what a packet can see: per
frontend its name, flags and slot count, the ordered (address, port) of its slots, and the backend
records it owns (tests/unit/test_hostile_manifests.programmed)."""
from typing import Any, List, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ebpflb.apply import ApplyError, apply_plan, read_snapshot
from ebpflb.draining import without_draining
from ebpflb.manifests import ManifestErrors, parse_documents
from ebpflb.maps import Snapshot, empty_snapshot
from ebpflb.model import DesiredState, desired_state
from ebpflb.plan import PlanDefaults, PlanError, apply_to, compute_plan
from ebpflb.reconcile import reconcile

from .conftest import maps_only
from ..unit.test_hostile_manifests import manifest_texts, programmed

pytestmark = pytest.mark.bpf

# Small Maglev tables: every step reads the maps back, and a 65537-slot table per frontend would
# make each read cost a second.
DEFAULTS = PlanDefaults(table_size=251)
TABLE_SIZES = ("251", "257")
EMPTY = DesiredState(frontends={}, skipped=())


@pytest.fixture(scope="module")
def maps():
    with maps_only("ebpflb-hostile-", max_services=4096, max_backends=16384, max_slots=262144,
                   ct_max_entries=1024) as pinned:
        yield pinned


class FailingWriter:
    """A MapWriter whose `fail_at`-th call (0-based) raises OSError once, as a full map or a
    vanished pin would; a failing batch first writes part of itself, as the kernel may."""

    def __init__(self, inner: Any, fail_at: int):
        self.inner = inner
        self.fail_at = fail_at
        self.calls = 0
        self.failed = False

    def _tick(self) -> bool:
        fail = not self.failed and self.calls == self.fail_at
        self.calls += 1
        self.failed = self.failed or fail
        return fail

    def upsert(self, map_name: str, keys: Sequence[Any], values: Sequence[Any]) -> None:
        if self._tick():
            if len(keys) > 1:
                self.inner.upsert(map_name, keys[: len(keys) // 2], values[: len(values) // 2])
            raise OSError(28, f"injected failure in a batch of {len(keys)} to {map_name}")
        self.inner.upsert(map_name, keys, values)

    def delete(self, map_name: str, keys: Sequence[Any]) -> None:
        if self._tick():
            if len(keys) > 1:
                self.inner.delete(map_name, keys[: len(keys) // 2])
            raise OSError(2, f"injected failure deleting from {map_name}")
        self.inner.delete(map_name, keys)

    def zero(self, map_name: str, ids: Sequence[int]) -> None:
        if self._tick():
            raise OSError(28, f"injected failure zeroing {map_name}")
        self.inner.zero(map_name, ids)

    def dump(self, map_name: str) -> Any:
        return self.inner.dump(map_name)

    def flow_service_ids(self) -> Any:
        return self.inner.flow_service_ids()


def expected(desired: DesiredState) -> dict:
    """The snapshot view of `desired` planned from nothing: what the maps must show."""
    return programmed(apply_to(empty_snapshot(), compute_plan(desired, empty_snapshot(), defaults=DEFAULTS)))


def agent_step(text: str, writer: Any, config: Any, snapshot: Snapshot, last_good: DesiredState
               ) -> Tuple[Snapshot, DesiredState, str]:
    """One source change, handled as ebpflb.agent.Agent.sync handles it."""
    try:
        m = parse_documents(text, "hostile.yaml")
    except ManifestErrors:
        return snapshot, last_good, "refused"
    desired = desired_state(m.services, m.slices)
    try:
        result = reconcile(desired, writer, config.map_limits, current=snapshot, defaults=DEFAULTS)
    except PlanError:
        return snapshot, last_good, "too big"
    except ApplyError as exc:
        assert exc.rolled_back, str(exc)
        return read_snapshot(writer), last_good, "write failed"  # the agent trusts the kernel then
    return result.snapshot, desired, "applied"


def reset(writer: Any, config: Any) -> Snapshot:
    return reconcile(EMPTY, writer, config.map_limits, defaults=DEFAULTS).snapshot


@settings(max_examples=80, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(manifest_texts(TABLE_SIZES), st.one_of(st.none(), st.integers(0, 5))),
                min_size=2, max_size=6))
def test_maps_hold_exactly_the_last_good_state(maps, steps: List[Tuple[str, Optional[int]]]) -> None:
    config, writer = maps
    snapshot = reset(writer, config)
    last_good = EMPTY
    for text, fail_at in steps:
        target = writer if fail_at is None else FailingWriter(writer, fail_at)
        snapshot, last_good, outcome = agent_step(text, target, config, snapshot, last_good)
        event(outcome)
        in_kernel = read_snapshot(writer)
        assert in_kernel == snapshot, "the agent's cached snapshot differs from the maps"
        # Frontends left draining (their release failed, as any write may) are not the state.
        assert programmed(without_draining(in_kernel)) == expected(last_good), outcome
    reset(writer, config)


VALID = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo, annotations: {lb.ebpflb.io/algorithm: maglev}}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 53, protocol: UDP}]
endpoints: [{addresses: [%s]}]
"""


def test_every_failing_write_of_a_change_leaves_the_previous_state(maps) -> None:
    """A change touching every map (backends replaced, a frontend added, a Maglev table rewritten),
    failed at each of its writer calls in turn (a batch per map and action, half of it written
    before the failure, as the kernel may): each time, the maps are exactly the state before."""
    config, writer = maps
    before = VALID % "10.244.0.1, 10.244.0.2"
    after = (VALID % "10.244.0.2, 10.244.0.3, 10.244.0.4").replace("10.96.0.10", "10.96.0.11") + """\
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: demo}
spec: {clusterIP: 10.96.0.12, ports: [{port: 443}]}
"""
    snapshot = reset(writer, config)
    snapshot, good, outcome = agent_step(before, writer, config, snapshot, EMPTY)
    assert outcome == "applied" and len(good.frontends) == 2
    want = expected(good)
    plan = compute_plan(desired_state(*(lambda m: (m.services, m.slices))(parse_documents(after, "a.yaml"))),
                        snapshot, defaults=DEFAULTS)
    counter = FailingWriter(None, -1)
    counter.inner = type("Nothing", (), {"__getattr__": lambda self, name: lambda *a: None})()
    apply_plan(plan, counter)
    calls = counter.calls  # writer calls the apply makes (a batch is one)
    assert calls >= 8
    for fail_at in sorted(set(range(min(calls, 16))) | set(range(16, calls, 1 + calls // 12)) | {calls - 1}):
        snapshot, still, outcome = agent_step(after, FailingWriter(writer, fail_at), config, snapshot, good)
        assert outcome == "write failed" and still is good
        assert programmed(read_snapshot(writer)) == want, f"failure at call {fail_at}"
    snapshot, new, outcome = agent_step(after, writer, config, snapshot, good)
    assert outcome == "applied"
    assert programmed(read_snapshot(writer)) == expected(new) != want
    reset(writer, config)
