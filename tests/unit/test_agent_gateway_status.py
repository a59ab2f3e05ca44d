"""The agent hands its Gateway model to the status writer whenever the model is recomputed: after
changes are taken (a change of status alone, such as a route a listener does not allow, moves no
frontend and makes no sync) and after a sync that programs a Gateway. Pure: a dict MapWriter and
a recording stand-in for ebpflb.sources.gateway_status_writer.GatewayStatusThread (the kube tier
runs the real writer against a fake API server; the lab tier the whole agent)."""
from typing import Any, List

import pytest

from ebpflb.agent import Agent, AgentOptions
from ebpflb.changes import ChangeBatch
from ebpflb.gateway import condition
from tests.helpers.dict_writer import DictWriter
from tests.unit.test_gateway import gateway, gclass, route, service
from tests.unit.test_gateway_sync import changes

pytestmark = pytest.mark.unit


class Source:
    """A source handing over what a test puts in it."""
    description = "test source"
    synced = True

    def __init__(self) -> None:
        self.pending: List[Any] = []

    def take(self) -> ChangeBatch:
        batch, self.pending = ChangeBatch(self.pending), []
        return batch

    def revision(self) -> int:
        return 0

    def problems(self) -> list:
        return []

    def own_node(self) -> None:
        return None


class Recorder:
    """Stands in for GatewayStatusThread: what the agent offered, in order."""

    def __init__(self) -> None:
        self.offered: List[Any] = []

    def offer(self, model, objects) -> None:
        self.offered.append((model, dict(objects.routes)))


def agent(source: Source, recorder: Recorder) -> Agent:
    class Config:
        pin_dir = "/sys/fs/bpf/ebpflb-unit-never-created"
        map_limits: dict = {}
    a = Agent(source, Config(), AgentOptions(devices=["lxc*"], external_ip_allow=("192.0.2.0/24",)),
              gateway_status=recorder)
    a.start_syncer(DictWriter())
    return a


def test_a_status_only_change_is_offered_without_a_sync():
    source, recorder = Source(), Recorder()
    a = agent(source, recorder)
    source.pending = changes(gclass(), gateway(), route(), service("web"))
    a.take_changes()
    assert len(recorder.offered) == 1  # taken: the model was recomputed
    a.sync()
    a.take_changes()
    assert len(recorder.offered) == 1  # the sync programmed it; the model did not change
    # A second route on a parent that does not exist: no frontend moves, no sync is due.
    source.pending = changes(route("lost", parents=[{"name": "nowhere"}]))
    a.take_changes()
    assert not a.syncer.pending
    assert len(recorder.offered) == 2
    model, routes = recorder.offered[-1]
    assert ("TCPRoute", "demo", "lost") in routes
    assert model.route("TCPRoute", "demo", "lost").ignored  # its parent is not ebpflb's
    # An update that leaves the model as it was offers nothing.
    source.pending = changes(service("other"))
    a.take_changes()
    assert len(recorder.offered) == 2


def test_a_listener_refused_is_offered_and_said_in_the_status_file_view():
    source, recorder = Source(), Recorder()
    a = agent(source, recorder)
    source.pending = changes(gclass(), gateway(addresses=("198.51.100.1",)))  # not allowed
    a.take_changes()
    a.sync()
    (model, _), = recorder.offered
    programmed = condition(model.gateway("demo", "gw").conditions, "Programmed")
    assert programmed.reason == "AddressNotUsable"
    view = a._gateway_view()
    assert view is not None and view["gateways"][0]["gateway"] == "demo/gw"
    assert any(s.ref == "Gateway demo/gw" and s.reason.startswith("AddressNotUsable")
               for s in a.syncer.skipped())
