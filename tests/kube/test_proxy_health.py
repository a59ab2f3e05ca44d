"""kube-proxy's health server (ebpflb.proxy_health) over real HTTP on loopback: kube-proxy's rules
(a change late by more than the timeout; a Node being deleted or tainted for deletion), its paths,
headers and JSON body. No API server involved: the Node is given as the API returns it."""
import json
import urllib.error
import urllib.request

import pytest

from ebpflb.proxy_health import (HEALTH_TIMEOUT, ProxyHealth, ProxyHealthServer, body, go_time,
                                 node_eligible, proxy_health)


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


NODE = {"metadata": {"name": "node-1"}, "spec": {}}
DELETED = {"metadata": {"name": "node-1", "deletionTimestamp": "2026-12-05T06:00:00Z"}}
TAINTED = {"metadata": {"name": "node-1"}, "spec": {"taints": [
    {"key": "ToBeDeletedByClusterAutoscaler", "value": "1765000000", "effect": "NoSchedule"}]}}
OTHER_TAINT = {"metadata": {"name": "node-1"}, "spec": {"taints": [
    {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}}


@pytest.mark.parametrize("node,eligible", [(None, True), (NODE, True), (DELETED, False),
                                           (TAINTED, False), (OTHER_TAINT, True)])
def test_node_eligibility(node, eligible):
    assert node_eligible(node) is eligible


def test_late_changes_make_it_unhealthy():
    now = 1000.0
    assert proxy_health(now, None, 900.0, NODE).healthy
    assert proxy_health(now, now - HEALTH_TIMEOUT + 1, 900.0, NODE).healthy
    assert not proxy_health(now, now - HEALTH_TIMEOUT, 900.0, NODE).healthy


def test_bodies_as_kube_proxy_writes_them():
    now = 1796450000.25
    code, text = body("/healthz", ProxyHealth(True, 1.0, True), now)
    assert code == 200 and json.loads(text) == {
        "lastUpdated": go_time(now), "currentTime": go_time(now), "nodeEligible": True}
    assert go_time(now) == "2026-12-05 05:53:20.250000000 +0000 UTC"
    code, text = body("/healthz", ProxyHealth(True, 1.0, False), now)
    assert code == 503 and json.loads(text)["nodeEligible"] is False
    assert json.loads(text)["lastUpdated"] == go_time(1.0)
    code, text = body("/livez", ProxyHealth(True, 1.0, False), now)  # the node does not count
    assert code == 200 and set(json.loads(text)) == {"lastUpdated", "currentTime"}
    assert body("/livez", ProxyHealth(False, 1.0, True), now)[0] == 503


def test_the_server_answers_and_counts():
    state = {"health": ProxyHealth(True, 1.0, True)}
    counted = []
    server = ProxyHealthServer("127.0.0.1:0", lambda: state["health"],
                               lambda path, code: counted.append((path, code))).start()
    try:
        code, headers, text = get(server.port, "/healthz")
        assert code == 200 and headers["Content-Type"] == "application/json"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert json.loads(text)["nodeEligible"] is True
        state["health"] = ProxyHealth(True, 1.0, False)
        assert get(server.port, "/healthz")[0] == 503
        assert get(server.port, "/livez")[0] == 200
        assert get(server.port, "/readyz")[0] == 404
        assert counted == [("/healthz", 200), ("/healthz", 503), ("/livez", 200)]
    finally:
        server.close()


def test_a_taken_port_is_named_with_its_option():
    from ebpflb.agent_health import HealthServer
    from ebpflb.metrics import ListenError

    first = ProxyHealthServer("127.0.0.1:0", lambda: ProxyHealth(True, 1.0, True)).start()
    try:
        with pytest.raises(ListenError) as err:
            ProxyHealthServer(f"127.0.0.1:{first.port}", lambda: ProxyHealth(True, 1.0, True)).start()
        assert str(err.value).startswith(f"--healthz-bind-address 127.0.0.1:{first.port}: "
                                         "address already in use")
        with pytest.raises(ListenError) as err:
            HealthServer(f"127.0.0.1:{first.port}", lambda: (True, "")).start()
        assert str(err.value).startswith(f"--health-address 127.0.0.1:{first.port}: address")
    finally:
        first.close()
