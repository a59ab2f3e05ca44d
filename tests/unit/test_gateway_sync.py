"""Gateways through the agent's own pipeline (store -> ClusterModel -> Planner -> apply), pure:
changes in, map records out, on a dict MapWriter (tests/helpers/dict_writer.py; the bpf tier
applies the same plans to real maps). What is checked: a Gateway listener becomes a weighted
Maglev frontend owned by its Gateway; the cost of a change follows what it touches (a Service
no route names does not recompute the Gateways); a Service holding the Gateway's address and
port wins it (PortUnavailable) and gives it back; moving weight rewrites only the slots that
move; an unresolved backendRef's share is the reject share; a full sync afterwards finds
nothing to do."""
from collections import Counter
from typing import Any, Dict, List, Sequence

import pytest

from ebpflb.changes import Change
from ebpflb.convert import Converted
from ebpflb.desired import GatewayOwner
from ebpflb.gateway import convert_any_document, condition
from ebpflb.maps import (SERVICES, SERVICES6, SLOT_REJECT, SLOTS, SVC_F_DRAINING, SvcKey,
                         frontend_kind)
from ebpflb.model import ModelContext
from ebpflb.syncer import PERIODIC, Syncer
from tests.helpers.dict_writer import DictWriter
from tests.unit.test_gateway import gclass, gateway, listener, route, service

pytestmark = pytest.mark.unit

GW_KEY = SvcKey("192.0.2.10", 9000, 6, 0)
OWNER = GatewayOwner("demo", "gw")


def changes(*docs: Any, delete: bool = False) -> List[Change]:
    out = []
    for d in docs:
        for doc in (d if isinstance(d, list) else [d]):
            c: Converted = convert_any_document(doc, "test")
            assert not c.refused and c.obj is not None and c.key is not None, c.problems
            out.append(Change(c.kind or "", c.key, None if delete else c.obj))
    return out


def canary(stable: int = 90, canary_weight: int = 10, extra: Sequence[dict] = ()) -> dict:
    return route(backends=[{"name": "stable", "port": 80, "weight": stable},
                           {"name": "canary", "port": 80, "weight": canary_weight}, *extra])


ALLOW = ModelContext(external_ip_allow=("192.0.2.0/24",))


def start(*docs: Any) -> Syncer:
    syncer = Syncer(DictWriter(), ctx=ALLOW)
    syncer.take(changes(gclass(), gateway(), *docs))
    outcome = syncer.sync()
    assert outcome is not None and outcome.applied, outcome
    return syncer


def slot_shares(syncer: Syncer) -> Dict[Any, float]:
    """Per backend address (or "reject"), its share of the Gateway frontend's slots."""
    maps = syncer.writer.maps  # type: ignore[attr-defined]
    svc = maps[SERVICES][GW_KEY]
    table = syncer.planner.records().slots[svc.svc_id]
    backends = syncer.planner.records().backends
    counts = Counter("reject" if i == SLOT_REJECT else backends[i].addr for i in table)
    return {k: n / len(table) for k, n in counts.items()}


STABLE = service("stable", endpoints=["10.244.0.1", "10.244.0.2", "10.244.0.3"])
CANARY = service("canary", endpoints=["10.244.1.1", "10.244.1.2"])


def test_a_listener_is_a_weighted_maglev_frontend_owned_by_its_gateway():
    syncer = start(canary(), STABLE, CANARY)
    svc = syncer.writer.maps[SERVICES][GW_KEY]  # type: ignore[attr-defined]
    assert frontend_kind(svc.flags) == "ExternalIP" and svc.count == 16381
    shares = slot_shares(syncer)
    assert abs(shares["10.244.1.1"] + shares["10.244.1.2"] - 0.10) < 0.005
    for ip in ("10.244.0.1", "10.244.0.2", "10.244.0.3"):
        assert abs(shares[ip] - 0.30) < 0.005
    assert syncer.model.holders()[-1] == OWNER
    assert syncer.planner.records().meta[svc.svc_id] == "Gateway demo/gw:tcp"
    assert syncer.full_sync(PERIODIC).writes == 0


def test_an_endpoint_change_of_a_routed_service_replans_it_and_the_gateway_only():
    syncer = start(canary(), STABLE, CANARY, service("other", endpoints=["10.244.2.1"]))
    before = syncer.model.gateways
    syncer.take(changes(service("other", endpoints=["10.244.2.1", "10.244.2.2"])))
    assert syncer.model.gateways is before  # a Service no route names: Gateways not recomputed
    assert syncer.sync().services == 1
    syncer.take(changes(service("canary", endpoints=["10.244.1.1", "10.244.1.2", "10.244.1.3"])))
    outcome = syncer.sync()
    assert outcome.applied and outcome.services == 2  # the Service and the Gateway
    assert abs(sum(v for k, v in slot_shares(syncer).items() if k.startswith("10.244.1."))
               - 0.10) < 0.005


def test_moving_weight_rewrites_only_the_slots_that_move():
    """90/10 -> 50/50: about the 40% of slots the change implies are written, not the table."""
    syncer = start(canary(), STABLE, CANARY)
    syncer.take(changes(canary(50, 50)))
    outcome = syncer.sync()
    written = outcome.plan.counts().get(f"{SLOTS} upsert", 0)
    assert 0.40 * 16381 <= written < 0.50 * 16381, outcome.plan.counts()
    shares = slot_shares(syncer)
    assert abs(shares["10.244.1.1"] + shares["10.244.1.2"] - 0.50) < 0.005


def test_weight_zero_drains_a_service():
    syncer = start(canary(100, 0), STABLE, CANARY)
    shares = slot_shares(syncer)
    assert "10.244.1.1" not in shares and "10.244.1.2" not in shares
    gw_id = syncer.writer.maps[SERVICES][GW_KEY].svc_id  # type: ignore[attr-defined]
    drained = [b for b in syncer.planner.records().backends.values()
               if b.svc_id == gw_id and b.addr.startswith("10.244.1.")]
    assert len(drained) == 2 and all(b.flags for b in drained)  # BE_F_NO_NEW: present, no new flow


def test_an_unresolved_backend_ref_keeps_its_share_as_rejects():
    syncer = start(canary(), STABLE)  # the canary Service does not exist
    assert abs(slot_shares(syncer)["reject"] - 0.10) < 0.005
    syncer.take(changes(CANARY))  # it appears: its share goes to its endpoints
    assert syncer.sync().applied
    assert "reject" not in slot_shares(syncer)


def test_a_service_holding_the_address_and_port_wins_it_and_gives_it_back():
    syncer = start(canary(), STABLE, CANARY)
    squatter = service("squatter", port=9000, endpoints=["10.244.3.1"],
                       externalIPs=["192.0.2.10"])
    syncer.take(changes(squatter))
    outcome = syncer.sync()
    assert outcome.applied, outcome.error
    meta = syncer.planner.records().meta
    assert meta[syncer.writer.maps[SERVICES][GW_KEY].svc_id].startswith("demo/squatter")  # type: ignore[attr-defined]
    li = syncer.model.gateways.gateway("demo", "gw").listeners[0]
    assert (condition(li.conditions, "Accepted").reason) == "PortUnavailable"
    assert "Service demo/squatter" in condition(li.conditions, "Accepted").message
    syncer.take(changes(squatter, delete=True))
    assert syncer.sync().applied
    assert meta[syncer.writer.maps[SERVICES][GW_KEY].svc_id] != "Gateway demo/gw:tcp"  # type: ignore[attr-defined]
    assert syncer.planner.records().meta[syncer.writer.maps[SERVICES][GW_KEY].svc_id] == "Gateway demo/gw:tcp"  # type: ignore[attr-defined]
    assert syncer.full_sync(PERIODIC).writes == 0


def test_deleting_the_gateway_removes_its_frontend():
    syncer = start(canary(), STABLE, CANARY)
    syncer.take(changes(gateway(), delete=True))
    assert syncer.sync().applied
    # A removed TCP frontend drains: its record stays, flagged, with no slot, until its flows end.
    gone = syncer.writer.maps[SERVICES][GW_KEY]  # type: ignore[attr-defined]
    assert gone.flags & SVC_F_DRAINING and gone.count == 0
    assert OWNER not in syncer.model.holders()


def test_a_gateway_of_another_class_is_not_served():
    syncer = Syncer(DictWriter())
    syncer.take(changes(gclass("other", controller="example.com/x"),
                        gateway(cls="other"), canary(), STABLE, CANARY))
    assert syncer.sync().applied
    assert GW_KEY not in syncer.writer.maps[SERVICES]  # type: ignore[attr-defined]


def test_udp_listener_and_route():
    syncer = Syncer(DictWriter(), ctx=ALLOW)
    syncer.take(changes(gclass(), gateway(listeners=[listener("dns", 53, "UDP")]),
                        route(kind="UDPRoute", backends=[{"name": "dns", "port": 53}]),
                        service("dns", port=53, protocol="UDP", endpoints=["10.244.4.1"],
                                target=5353)))
    assert syncer.sync().applied
    svc = syncer.writer.maps[SERVICES][SvcKey("192.0.2.10", 53, 17, 0)]  # type: ignore[attr-defined]
    backends = [b for b in syncer.planner.records().backends.values() if b.svc_id == svc.svc_id]
    assert [(b.addr, b.port) for b in backends] == [("10.244.4.1", 5353)]


def test_an_address_outside_the_allow_list_is_not_usable_until_allowed():
    """Whoever may create a Gateway names its addresses: as for externalIPs (CVE-2020-8554),
    only addresses inside --external-ip-allow are served."""
    syncer = Syncer(DictWriter(), ctx=ModelContext(external_ip_allow=("198.51.100.0/24",)))
    syncer.take(changes(gclass(), gateway()))  # no route, no Service at all
    assert syncer.sync().applied
    assert GW_KEY not in syncer.writer.maps[SERVICES]  # type: ignore[attr-defined]
    programmed = condition(syncer.model.gateways.gateway("demo", "gw").conditions, "Programmed")
    assert (programmed.status, programmed.reason) == ("False", "AddressNotUsable")
    assert "192.0.2.10" in programmed.message and "--external-ip-allow" in programmed.message
    syncer.set_context(ALLOW)
    assert syncer.sync().applied
    assert GW_KEY in syncer.writer.maps[SERVICES]  # type: ignore[attr-defined]


def test_an_ipv6_address_gets_the_ipv6_endpoints():
    syncer = Syncer(DictWriter(), ctx=ModelContext(external_ip_allow=("2001:db8::/64",)))
    syncer.take(changes(gclass(), gateway(addresses=("2001:db8::10",)), canary(),
                        service("stable", endpoints=["fd00:10:244::1", "fd00:10:244::2"],
                                family="IPv6", ipFamilies=["IPv6"], clusterIP="fd00:10:96::1"),
                        service("canary", endpoints=["fd00:10:244::3"], family="IPv6",
                                ipFamilies=["IPv6"], clusterIP="fd00:10:96::2")))
    assert syncer.sync().applied
    key = SvcKey("2001:db8::10", 9000, 6, 0)
    svc = syncer.writer.maps[SERVICES6][key]  # type: ignore[attr-defined]
    backends = {b.addr for b in syncer.planner.records().backends.values() if b.svc_id == svc.svc_id}
    assert backends == {"fd00:10:244::1", "fd00:10:244::2", "fd00:10:244::3"}


def test_the_one_shot_commands_program_gateways_too():
    """`ebpflb sync` and `takeover --manifests` compute desired_state from the manifests: the
    example's Gateway listener is among its frontends (with the address allowed), and listed as
    skipped, saying why, without it."""
    from pathlib import Path

    from ebpflb.manifests import load_manifests
    from ebpflb.model import desired_state

    m = load_manifests(Path(__file__).resolve().parents[2] / "examples" / "gateway-tcp.yaml")
    served = desired_state(m.services, m.slices, external_ip_allow=("192.168.77.10/32",),
                           gateway=m.gateway)
    (fe,) = [fe for fe in served.frontends if fe.vip == "192.168.77.10"]
    assert (fe.port, fe.service, len(served.frontends[fe])) == (8443, "Gateway demo/edge", 5)
    refused = desired_state(m.services, m.slices, gateway=m.gateway)
    assert not [fe for fe in refused.frontends if fe.vip == "192.168.77.10"]
    assert [(s.ref, s.reason.split(":")[0]) for s in refused.skipped] == [
        ("Gateway demo/edge", "AddressNotUsable")]
