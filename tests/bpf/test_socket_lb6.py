"""The IPv6 cgroup socket hooks (lb6_connect, lb6_sendmsg, lb6_recvmsg, lb6_getpeername, the
IPv6 instance of bpf/sock.tmpl.h) with real sockets, in the setting of test_socket_lb.py: a
namespace whose loopback holds IPv6 backends and their servers, the hooks attached to a cgroup of
the test's own (never the machine's root one). A host-network process, which no TC program ever
sees, reaches an IPv6 frontend only through these hooks."""
import json
import time
from collections import Counter

import pytest

from ebpflb.dataplane.bcc_maps import BccMapWriter, _ip_of
from ebpflb.dataplane.sock_attach import write_settings
from ebpflb.lab.agent_runner import wait_until

from .test_socket_lb import BACKENDS, VIP, SockLab, manifest, start_client

pytestmark = pytest.mark.bpf
REAL_TRAFFIC = True  # real sockets: only the drop check of conftest's one_verdict_per_run

BACKENDS6 = ("fd00:10:244:90::1", "fd00:10:244:90::2", "fd00:10:244:90::3")
VIP6 = "fd00:10:96:90::10"
EMPTY6 = "fd00:10:96:90::11"


def manifest6(backends=BACKENDS6) -> str:
    endpoints = "".join(f'- {{addresses: ["{a}"], conditions: {{ready: true}}}}\n' for a in backends)
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: web6, namespace: sock}}
spec:
  clusterIP: "{VIP6}"
  clusterIPs: ["{VIP6}"]
  ipFamilies: [IPv6]
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: 8080}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: 9053}}
---
apiVersion: v1
kind: Service
metadata: {{name: empty6, namespace: sock}}
spec:
  clusterIP: "{EMPTY6}"
  clusterIPs: ["{EMPTY6}"]
  ipFamilies: [IPv6]
  ports: [{{name: http, port: 80, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web6-a, namespace: sock, labels: {{kubernetes.io/service-name: web6}}}}
addressType: IPv6
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 9053, protocol: UDP}}]
endpoints:
{endpoints}"""


def both(backends6=BACKENDS6) -> str:
    """test_socket_lb's IPv4 Services (for IPv6 sockets naming IPv4 addresses) and the IPv6 ones."""
    return manifest() + "---" + manifest6(backends6)


@pytest.fixture(scope="module")
def sl6(dataplane):
    lab = SockLab(dataplane, backends=BACKENDS + BACKENDS6)
    try:
        lab.up()
        dataplane.program(both())
        yield lab
    finally:
        lab.down()


@pytest.fixture
def sl(sl6):
    sl6.dp.program(both())
    write_settings(BccMapWriter(sl6.dp.progs.bpf), "all")
    yield sl6
    sl6.dp.progs.bpf[b"lb6_sock_nat"].clear()


def test_ipv6_connect_goes_to_a_backend_and_getpeername_says_the_frontend(sl):
    before = sl.dp.stats()
    results = sl.http(addr=VIP6, n=30)
    assert all(r["errno"] is None for r in results), results
    assert {r["peer"] for r in results} == {f"[{VIP6}]:80"}
    assert set(Counter(r["body"] for r in results)) == set(BACKENDS6)
    after = sl.dp.stats()
    assert after["socket/new"] - before["socket/new"] == 30
    # Nothing went through a TC program as a flow of a frontend.
    assert all(after[k] == before[k] for k in after if k.endswith(("/new", "/established"))
               and not k.startswith("socket/"))


def test_ipv6_udp_replies_come_from_the_frontend(sl):
    unconnected, connected = sl.run({"op": "udp", "addr": VIP6, "port": 53, "payload": "a"},
                                    {"op": "udp", "addr": VIP6, "port": 53, "payload": "b",
                                     "connect": True})
    for r, payload in ((unconnected, "a"), (connected, "b")):
        assert r["errno"] is None, r
        assert r["source"] == f"[{VIP6}]:53"
        assert r["reply"].split()[0] in BACKENDS6 and r["reply"].endswith(payload)
    assert connected["peer"] == f"[{VIP6}]:53"


def test_ipv6_no_endpoints_refuses_at_once(sl):
    (r,) = sl.http(addr=EMPTY6)
    assert r["errno"] == "ECONNREFUSED"


def test_a_connected_ipv6_udp_socket_is_closed_when_its_backend_leaves(sl):
    """As test_socket_lb's IPv4 test: the agent's purge finds the socket in lb6_sock_nat and
    closes it (sock_diag over AF_INET6); the client's next socket gets a live backend."""
    from ebpflb.dataplane.stale_sockets import close_stale_sockets
    from ebpflb.plan import conntrack_purge

    table = sl.dp.progs.bpf[b"lb6_sock_nat"]
    table.clear()
    loop = {"op": "udp-loop", "addr": VIP6, "port": 53, "count": 40, "interval": 0.05,
            "reconnect": True}
    client = start_client(sl, loop)
    try:
        wait_until(lambda: {_ip_of(k.addr) for k, _ in table.items() if k.proto == 17}, 10,
                   "the client's socket")
        (pinned,) = {_ip_of(k.addr) for k, _ in table.items() if k.proto == 17}
        time.sleep(0.3)
        stale = conntrack_purge(sl.dp.program(both(
            [b for b in BACKENDS6 if b != pinned])).plan)
        assert close_stale_sockets(sl.dp.progs.bpf, sl.cgroup, stale.svc_ids, stale.udp_backends,
                                   stale.tcp_backends) == 1
        (result,) = json.loads(client.communicate(timeout=30)[0])
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    answers = result["answers"]
    aborted = [i for i, (_, a) in enumerate(answers) if a in ("ECONNABORTED", "EDESTADDRREQ")]
    assert len(aborted) == 1, " ".join(str(a) for _, a in answers)
    assert all(a.split()[0] == pinned for _, a in answers[:aborted[0]])
    after = answers[aborted[0] + 1:]
    assert after and all(a is not None and a.split()[0] in set(BACKENDS6) - {pinned}
                         for _, a in after), after


def test_explain_predicts_the_ipv6_hooks(sl):
    """`explain --socket`'s prediction for an IPv6 frontend (the cookie hash over the folded
    address) is the backend the real hook sent each socket to."""
    from ebpflb.apply import read_snapshot
    from ebpflb.explain_socket import REFUSED, TRANSLATED, explain_socket

    snapshot = read_snapshot(sl.dp.writer)
    for r in sl.http(addr=VIP6, n=20):
        e = explain_socket(snapshot, VIP6, 80, 6, "all", host=False, cookie=r["cookie"])
        assert e.verdict == TRANSLATED
        assert e.backend == f"[{r['body']}]:8080", (r, e)
    assert explain_socket(snapshot, EMPTY6, 80, 6, "all", False).verdict == REFUSED


def test_an_ipv6_socket_naming_an_ipv4_frontend_is_balanced_over_it(sl):
    """A dual-stack socket (Java's and Go's default) connecting or sending to ::ffff:VIP: the
    IPv6 hooks balance it over the IPv4 frontend (its packets are IPv4, which no TC program of a
    host-network process would ever see), and getpeername() and the UDP reply's source show the
    frontend, as the socket named it."""
    mapped = f"::ffff:{VIP}"
    before = sl.dp.stats()
    results = sl.http(addr=mapped, n=20)
    assert all(r["errno"] is None for r in results), results
    assert {r["peer"] for r in results} == {f"[{mapped}]:80"}
    assert set(r["body"] for r in results) == set(BACKENDS)
    assert sl.dp.stats()["socket/new"] - before["socket/new"] == 20
    unconnected, connected = sl.run({"op": "udp", "addr": mapped, "port": 53, "payload": "a"},
                                    {"op": "udp", "addr": mapped, "port": 53, "payload": "b",
                                     "connect": True})
    for r, payload in ((unconnected, "a"), (connected, "b")):
        assert r["errno"] is None, r
        assert r["source"] == f"[{mapped}]:53"
        assert r["reply"].split()[0] in BACKENDS and r["reply"].endswith(payload)
