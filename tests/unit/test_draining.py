"""Draining frontends in the control plane (pure, with the in-memory map writer): a TCP frontend
that goes away keeps its record (and service id) for its open flows until the conntrack GC finds
none; UDP frontends go at once with their flows; a Service asking for the key takes it over; an
agent restart keeps the draining records. The data-plane side is tests/bpf/test_draining.py."""
import pytest

from ebpflb.convert import SERVICE
from ebpflb.draining import is_draining
from ebpflb.maps import SERVICES, SVC_F_DRAINING, SVC_META, SvcKey
from ebpflb.syncer import Syncer
from tests.helpers.dict_writer import DictWriter

from .test_incremental_sync import CTX, ApiLike

pytestmark = pytest.mark.unit

TCP_KEY, UDP_KEY = SvcKey("10.96.0.1", 80, 6), SvcKey("10.96.0.1", 53, 17)


def service(name, port=80, ip="10.96.0.1"):
    return {"metadata": {"name": name, "namespace": "a"},
            "spec": {"clusterIP": ip, "ports": [
                {"name": "web", "port": port, "targetPort": 8080},
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]}}


def synced(syncer, api, *changes):
    syncer.take(c for c in (api.change(*ch) for ch in changes) if c is not None)
    outcome = syncer.sync()
    assert outcome is None or outcome.applied, outcome
    return outcome


@pytest.fixture
def removed():
    """Service a/s (TCP 80 and UDP 53 on 10.96.0.1) programmed, then deleted."""
    writer, api = DictWriter(), ApiLike()
    syncer = Syncer(writer, ctx=CTX)
    synced(syncer, api, (SERVICE, "s", service("s")))
    ids = {k: v.svc_id for k, v in writer.maps[SERVICES].items()}
    outcome = synced(syncer, api, (SERVICE, "s", None))
    return writer, api, syncer, ids, outcome


def test_a_removed_tcp_frontend_drains_and_a_udp_one_goes(removed):
    writer, _, syncer, ids, outcome = removed
    assert dict(writer.maps[SERVICES]) == {TCP_KEY: writer.maps[SERVICES][TCP_KEY]}
    value = writer.maps[SERVICES][TCP_KEY]
    assert (value.svc_id, value.count, value.flags & SVC_F_DRAINING) == (ids[TCP_KEY], 0,
                                                                         SVC_F_DRAINING)
    assert writer.maps[SVC_META][value.svc_id] == "a/s:web"  # still named in the CLI
    assert syncer.planner.draining() == {TCP_KEY: ids[TCP_KEY]}
    # The UDP frontend's flows are purged with it; the TCP one's are left to finish.
    assert outcome.purged.svc_ids == {ids[UDP_KEY]}


def test_release_waits_for_the_last_flow(removed):
    writer, _, syncer, ids, _ = removed
    assert syncer.release_drained({ids[TCP_KEY]}) is None  # a flow is still open
    assert TCP_KEY in writer.maps[SERVICES]
    outcome = syncer.release_drained(set())
    assert outcome.applied and not writer.maps[SERVICES] and not writer.maps[SVC_META]
    assert outcome.purged.svc_ids == {ids[TCP_KEY]}  # whatever is left of its flows goes too
    assert syncer.planner.draining() == {}
    assert syncer.release_drained(set()) is None


def test_a_service_asking_for_the_key_takes_it_over(removed):
    writer, api, syncer, ids, _ = removed
    synced(syncer, api, (SERVICE, "t", service("t")))  # another Service, the same frontends
    value = writer.maps[SERVICES][TCP_KEY]
    assert value.svc_id == ids[TCP_KEY] and not is_draining(value)
    assert writer.maps[SVC_META][value.svc_id] == "a/t:web"
    assert syncer.planner.draining() == {}
    synced(syncer, api, (SERVICE, "t", service("t", port=81)))  # and moves off it: drains again
    assert is_draining(writer.maps[SERVICES][TCP_KEY])
    assert syncer.planner.draining() == {TCP_KEY: ids[TCP_KEY]}


def test_an_agent_restart_keeps_draining_records(removed):
    writer, *_ = removed
    before = dict(writer.maps[SERVICES])
    restarted = Syncer(writer, ctx=CTX)  # a new agent: its store is empty, the maps are not
    outcome = restarted.sync()
    assert outcome.kind == "full" and outcome.applied and outcome.writes == 0
    assert dict(writer.maps[SERVICES]) == before
    assert restarted.planner.draining() == {TCP_KEY: before[TCP_KEY].svc_id}
    assert restarted.release_drained(set()).applied and not writer.maps[SERVICES]


def test_a_port_change_drains_the_old_port_only():
    writer, api = DictWriter(), ApiLike()
    syncer = Syncer(writer, ctx=CTX)
    synced(syncer, api, (SERVICE, "s", service("s")))
    synced(syncer, api, (SERVICE, "s", service("s", port=8080)))
    state = {k: is_draining(v) for k, v in writer.maps[SERVICES].items()}
    assert state == {TCP_KEY: True, SvcKey("10.96.0.1", 8080, 6): False, UDP_KEY: False}


def test_a_full_sync_that_knows_the_flows_keeps_only_frontends_with_flows(removed):
    """When the writer can read conntrack (the real maps), a full sync drains only frontends
    with open flows: at a restart, after the flows ended, the record goes."""
    writer, *_ = removed
    writer.flows = {12345}  # some other frontend's flows
    outcome = Syncer(writer, ctx=CTX).sync()
    assert outcome.kind == "full" and outcome.applied and not writer.maps[SERVICES]


def test_a_frontend_removed_by_a_full_sync_drains_whatever_conntrack_said():
    """The flows are read before the plan is applied: a connection may start in between, so a
    frontend the full sync removes drains even when none was seen; the GC releases it."""
    writer, api = DictWriter(), ApiLike()
    synced(Syncer(writer, ctx=CTX), api, (SERVICE, "s", service("s")))
    writer.flows = set()
    restarted = Syncer(writer, ctx=CTX)  # its store lacks the Service: it goes
    assert restarted.sync().applied
    assert list(writer.maps[SERVICES]) == [TCP_KEY] and is_draining(writer.maps[SERVICES][TCP_KEY])
    assert restarted.release_drained(set()).applied and not writer.maps[SERVICES]


LOCAL_LB = {"metadata": {"name": "lb", "namespace": "a"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.5", "externalTrafficPolicy": "Local",
                     "healthCheckNodePort": 32001,
                     "ports": [{"name": "web", "port": 80, "targetPort": 8080, "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.50"}]}}}


def test_the_two_records_of_a_local_policy_frontend_go_together():
    """Flows from outside to an externalTrafficPolicy Local frontend hold the id of its @external
    record, but once it drains the programs find them through the record for every client: that
    one stays while either has flows, and the pair goes together."""
    writer, api = DictWriter(), ApiLike()
    ctx = CTX.__class__(CTX.node_name, CTX.proxy_name, ("192.168.200.10",), CTX.external_ip_allow)
    syncer = Syncer(writer, ctx=ctx)
    synced(syncer, api, (SERVICE, "lb", LOCAL_LB))
    synced(syncer, api, (SERVICE, "lb", None))
    draining = syncer.planner.draining()
    external = {k: i for k, i in draining.items() if k.scope == 1}
    # The ClusterIP, and the NodePort and LoadBalancer frontends in both scopes.
    assert len(external) == 2 and len(draining) == 5
    pairs = {k: i for k, i in draining.items() if k._replace(scope=1) in external}
    assert syncer.release_drained(set(external.values())).applied  # flows from outside only
    assert syncer.planner.draining() == pairs  # the ClusterIP, without flows, went alone
    assert syncer.release_drained(set()).applied and not writer.maps[SERVICES]
