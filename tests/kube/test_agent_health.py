"""The health endpoints (/healthz, /readyz) over real HTTP on loopback; no API server involved."""
import urllib.error
import urllib.request

from ebpflb.agent_health import HealthServer


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode().strip()


def test_healthz_always_readyz_follows_the_check():
    state = {"ready": False}
    server = HealthServer("127.0.0.1:0", lambda: (state["ready"], "initial sync not programmed"))
    server.start()
    try:
        assert get(server.port, "/healthz") == (200, "ok")
        assert get(server.port, "/readyz") == (503, "not ready: initial sync not programmed")
        state["ready"] = True
        assert get(server.port, "/readyz") == (200, "ready")
        assert get(server.port, "/nope")[0] == 404
    finally:
        server.close()


def test_a_failing_check_is_not_ready_not_a_hang():
    def broken():
        raise RuntimeError("boom")

    server = HealthServer("127.0.0.1:0", broken).start()
    try:
        code, text = get(server.port, "/readyz")
        assert code == 503 and "boom" in text
    finally:
        server.close()


def test_an_ipv6_address_in_brackets_is_served():
    """`--health-address [::1]:PORT` passes the flag's checks, so it must bind: the stdlib server
    is IPv4 unless told (on 7f55b41 the agent failed at start, found by review)."""
    server = HealthServer("[::1]:0", lambda: (True, ""))
    server.start()
    try:
        with urllib.request.urlopen(f"http://[::1]:{server.port}/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        server.close()
