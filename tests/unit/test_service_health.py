"""healthCheckNodePort servers over real HTTP on 127.0.0.1: status follows the local endpoint
count, ports open and close with sync(), a busy port is reported and retried, never raised."""
import json
import logging
import socket
import urllib.error
import urllib.request

import pytest

from ebpflb.service_health import HealthCheckServers
from ebpflb.model import HealthCheck

pytestmark = pytest.mark.unit

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def probe(port: int, path: str = "/healthz"):
    """(status, headers, JSON body) of one GET."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=5) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read())


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((LOOPBACK, port)) == 0


@pytest.fixture
def servers():
    hc = HealthCheckServers((LOOPBACK,))
    yield hc
    hc.close()


def test_answers_like_kube_proxy(servers):
    up, down = free_port(), free_port()
    servers.sync([HealthCheck(up, "shop/web", 2), HealthCheck(down, "shop/api", 0)])
    status, headers, body = probe(up)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert body == {"service": {"namespace": "shop", "name": "web"}, "localEndpoints": 2,
                    "serviceProxyHealthy": True}
    status, _, body = probe(down, "/any/path")
    assert status == 503 and body["localEndpoints"] == 0
    assert servers.ports() == tuple(sorted((up, down)))


def test_count_follows_sync_without_reopening(servers):
    port = free_port()
    servers.sync([HealthCheck(port, "shop/web", 0)])
    assert probe(port)[0] == 503
    servers.sync([HealthCheck(port, "shop/web", 3)])
    status, _, body = probe(port)
    assert (status, body["localEndpoints"]) == (200, 3)
    servers.sync([HealthCheck(port, "shop/web", 0)])
    assert probe(port)[0] == 503


def test_a_port_no_longer_wanted_stops_listening(servers):
    keep, drop = free_port(), free_port()
    servers.sync([HealthCheck(keep, "a/keep", 1), HealthCheck(drop, "a/drop", 1)])
    assert listening(drop)
    servers.sync([HealthCheck(keep, "a/keep", 1)])
    assert not listening(drop)
    assert probe(keep)[0] == 200 and servers.ports() == (keep,)


def test_a_busy_port_is_reported_and_retried(servers, caplog):
    busy, ok = free_port(), free_port()
    blocker = socket.socket()
    blocker.bind((LOOPBACK, busy))
    blocker.listen()
    try:
        with caplog.at_level(logging.WARNING, logger="ebpflb.service_health"):
            servers.sync([HealthCheck(busy, "shop/web", 1), HealthCheck(ok, "shop/api", 1)])
        assert f"service shop/web: health check port {busy}" in caplog.text
        assert list(servers.failures()) == [(LOOPBACK, busy)]
        assert servers.ports() == (ok,) and probe(ok)[0] == 200
    finally:
        blocker.close()
    servers.sync([HealthCheck(busy, "shop/web", 1), HealthCheck(ok, "shop/api", 1)])
    assert servers.failures() == {} and probe(busy)[0] == 200


def test_close_frees_the_ports():
    hc = HealthCheckServers((LOOPBACK,))
    port = free_port()
    hc.sync([HealthCheck(port, "shop/web", 1)])
    assert listening(port)
    hc.close()
    assert not listening(port) and hc.ports() == ()
    with socket.socket() as s:
        # Free again for any server (which sets SO_REUSEADDR, as ours do): only a listening
        # socket still holding the port would refuse this bind. Without the option, the
        # connection the check above made could hold the port in TIME_WAIT for a minute.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((LOOPBACK, port))
        s.listen()


def test_an_unhealthy_proxy_fails_every_check():
    hc = HealthCheckServers((LOOPBACK,), proxy_healthy=lambda: False)
    port = free_port()
    try:
        hc.sync([HealthCheck(port, "shop/web", 4)])
        status, _, body = probe(port)
        assert status == 503 and body["serviceProxyHealthy"] is False
    finally:
        hc.close()


def test_a_bad_bind_address_fails_at_construction():
    with pytest.raises(ValueError):
        HealthCheckServers(("not-an-address",))


def test_by_default_one_listener_answers_both_families():
    """Without --healthcheck-address the servers listen as kube-proxy's ":port" does: one
    dual-stack socket, reached over IPv4 and IPv6 (it used to be 0.0.0.0, which a load balancer
    probing a node's IPv6 address never reached)."""
    port = free_port()
    hc = HealthCheckServers()
    try:
        hc.sync([HealthCheck(port, "shop/web", 1)])
        for host in ("127.0.0.1", "[::1]"):
            with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as resp:
                assert resp.status == 200 and json.loads(resp.read())["localEndpoints"] == 1
    finally:
        hc.close()
