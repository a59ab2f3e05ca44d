"""`service list` views from a map snapshot: grouping slots into backends, table and JSON."""
import dataclasses
import json

import pytest

from ebpflb.service_view import render_table, service_views, to_json
from ebpflb.maps import empty_snapshot
from ebpflb.model import Backend, DesiredState, Frontend
from ebpflb.plan import apply_to, compute_plan

pytestmark = pytest.mark.unit


def programmed(frontends):
    snap = empty_snapshot()
    return apply_to(snap, compute_plan(DesiredState(frontends=frontends, skipped=()), snap))


def test_views_follow_the_maps():
    snap = programmed({
        Frontend("10.96.0.10", 80, "TCP", "demo/web", "http"):
            (Backend("10.244.0.12", 8080), Backend("10.244.0.9", 8080)),
        Frontend("10.96.0.2", 53, "UDP", "kube-system/dns", "dns"): (),
    })
    views = service_views(snap)
    assert [v.frontend for v in views] == ["10.96.0.2:53/UDP", "10.96.0.10:80/TCP"]
    web = views[1]
    assert web.service == "demo/web:http"
    assert [(b.address, b.port, b.slots) for b in web.backends] == [
        ("10.244.0.9", 8080, 1), ("10.244.0.12", 8080, 1)]
    assert views[0].backends == () and views[0].problems == ()
    table = render_table(views)
    assert "(no usable endpoint: new flows rejected)" in table
    assert table.splitlines()[0].split() == ["ID", "FRONTEND", "TYPE", "SERVICE", "BACKENDS"]
    wide = render_table(views, wide=True)
    assert wide.splitlines()[0].split() == ["ID", "FRONTEND", "TYPE", "SERVICE", "ALGORITHM",
                                            "SLOTS", "SCOPE", "BACKENDS"]
    assert "random     1      all    1 => 10.244.0.9:8080" in wide or "random" in wide
    assert views[1].kind == "ClusterIP"
    data = json.loads(json.dumps(to_json(views)))
    assert data[1]["backends"][0]["address"] == "10.244.0.9"


def test_inconsistent_maps_are_reported_not_hidden():
    snap = programmed({Frontend("10.96.0.10", 80, "TCP", "demo/web"): (Backend("10.244.0.1", 80),)})
    snap["lb4_slots"].clear()
    (view,) = service_views(snap)
    assert view.problems == ("slot 0 missing",)
    assert "! slot 0 missing" in render_table([view])


def test_a_draining_frontend_says_so():
    before = programmed({Frontend("10.96.0.10", 80, "TCP", "demo/web", "http"):
                         (Backend("10.244.0.12", 8080),)})
    after = apply_to(before, compute_plan(DesiredState(frontends={}, skipped=()), before))
    (view,) = service_views(after)
    assert (view.frontend, view.service, view.draining, view.backends) == (
        "10.96.0.10:80/TCP", "demo/web:http", True, ())
    assert "kept for its open connections" in render_table([view])


def test_service_references_name_a_port_or_every_port():
    from ebpflb.service_view import frontends_named, service_filter, service_matches

    assert service_matches("demo/web:http", "demo/web")
    assert service_matches("demo/web:http", "demo/web:http")
    assert not service_matches("demo/web:http", "demo/web:https")
    assert not service_matches("demo/webby:http", "demo/web")  # a name is whole, not a prefix
    assert service_filter(None)("anything")
    with pytest.raises(ValueError, match="is not NS/NAME"):
        service_filter("web")
    names = {1: "demo/web:http", 2: "demo/web:https", 3: "kube-system/dns:dns"}
    assert frontends_named(names, ["demo/web", "nope/x"]) == ([1, 2], ["nope/x"])


def test_ct_list_rows_and_table():
    """`ebpflb ct list`: one row per flow in its JSON shape, and the table people read."""
    from ebpflb.dataplane.bcc_maps import CtEntry
    from ebpflb.views import flow_row, render_flows

    e = CtEntry("forward", "192.168.200.2", 40000, "192.168.200.10", 30080, "TCP",
                "10.244.1.11", 8080, 7, 3, created_ns=1_000_000_000, last_seen_ns=4_000_000_000,
                flags=0x1 | 0x8 | 0x10, nat2_addr="192.168.200.10", nat2_port=1500)
    row = flow_row(e, {7: "demo/web:http"}, now_ns=6_000_000_000)
    assert row == {"protocol": "TCP", "state": "established", "client": "192.168.200.2:40000",
                   "frontend": "192.168.200.10:30080", "backend": "10.244.1.11:8080",
                   "service": "demo/web:http", "snat": "192.168.200.10:1500", "external": True,
                   "age_seconds": 5.0, "idle_seconds": 2.0}
    gone = flow_row(dataclasses.replace(e, svc_id=9, flags=0x3), {}, 6_000_000_000)
    assert (gone["service"], gone["state"], gone["snat"]) == ("(gone, svc 9)", "closing", None)
    lines = render_flows([row, gone]).splitlines()
    assert lines[0].split() == ["PROTO", "STATE", "CLIENT", "FRONTEND", "BACKEND", "SNAT",
                                "SERVICE", "AGE", "IDLE"]
    assert lines[1].split()[-2:] == ["5s", "2s"] and lines[-1] == "2 flows"


def test_a_dual_stack_service_lists_both_families_ipv4_first():
    """`service list` on maps holding both families: IPv6 frontends and backends as [addr]:port,
    after the IPv4 ones, each family in numeric order (it sorted by IPv4Address before)."""
    snap = programmed({
        Frontend("fd00:96::10", 80, "TCP", "demo/web", "http"):
            (Backend("fd00:10:244::12", 8080), Backend("fd00:10:244::9", 8080)),
        Frontend("10.96.0.10", 80, "TCP", "demo/web", "http"): (Backend("10.244.0.9", 8080),),
        Frontend("fd00:96::2", 53, "UDP", "kube-system/dns", "dns"): (),
    })
    views = service_views(snap)
    assert [v.frontend for v in views] == ["10.96.0.10:80/TCP", "[fd00:96::2]:53/UDP",
                                           "[fd00:96::10]:80/TCP"]
    assert [b.address for b in views[2].backends] == ["fd00:10:244::9", "fd00:10:244::12"]
    table = render_table(views)
    assert "=> [fd00:10:244::9]:8080" in table and "[fd00:96::10]:80/TCP" in table
    assert json.loads(json.dumps(to_json(views)))[2]["frontend"] == "[fd00:96::10]:80/TCP"
