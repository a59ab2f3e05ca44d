"""`service list` views from a map snapshot: grouping slots into backends, table and JSON."""
import json

import pytest

from ebpflb.inspect import render_table, service_views, to_json
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
