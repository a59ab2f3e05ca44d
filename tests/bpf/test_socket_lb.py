"""The cgroup socket hooks (bpf/lb4_sock.c) with real sockets: a client process in a cgroup of
this test's own connects and sends to frontends, in a network namespace of this test's own whose
backends are addresses on its loopback, served by real pod servers. BPF_PROG_TEST_RUN does not
run cgroup sock_addr programs, so the real hooks run on real connect(), sendmsg(), recvmsg() and
getpeername() calls. The hooks are attached to the test's cgroup only, never the machine's root
one, and the cgroup, namespace and servers are removed afterwards, also on failure."""
import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from ebpflb.dataplane.bcc_maps import BccMapWriter
from ebpflb.dataplane.cleanup import strict_owner
from ebpflb.dataplane.sock_attach import (
    attach_sock_hooks,
    cgroup2_root,
    detach_sock_hooks,
    hooks_attached,
    netns_cookie,
    read_mode,
    write_settings,
)
from ebpflb.dataplane.loader import load_programs
from ebpflb.dataplane.testrun import test_run as bpf_run
from ebpflb.lab.nsops import (cgroup_pids, create_netns, in_cgroup, in_netns, kill_pids, netns_path,
                              netns_pids, remove_netns)
from ebpflb.lab.agent_runner import wait_until
from ebpflb.maps import SVC_F_DRAINING

from ..conftest import unique
from .test_lb4_packets import ETH

pytestmark = pytest.mark.bpf
# The socket hooks count verdicts of their own: only the drop check of conftest's
# one_verdict_per_run applies.
REAL_TRAFFIC = True

BACKENDS = ("10.244.90.1", "10.244.90.2", "10.244.90.3")
VIP = "10.96.90.10"
EMPTY_VIP = "10.96.90.11"
LB_IP = "10.96.91.1"


def manifest(annotations: str = "{}", affinity: bool = False, ranges: bool = False) -> str:
    extra = ("  sessionAffinity: ClientIP\n" if affinity else "") + (
        "  type: LoadBalancer\n  loadBalancerSourceRanges: [10.244.0.0/16]\n" if ranges else "")
    status = f"status: {{loadBalancer: {{ingress: [{{ip: {LB_IP}}}]}}}}\n" if ranges else ""
    endpoints = "".join(f"- {{addresses: [{a}], conditions: {{ready: true}}}}\n" for a in BACKENDS)
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: sock, annotations: {annotations}}}
spec:
  clusterIP: {VIP}
{extra}  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: 8080}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: 9053}}
{status}---
apiVersion: v1
kind: Service
metadata: {{name: empty, namespace: sock}}
spec:
  clusterIP: {EMPTY_VIP}
  ports:
  - {{name: http, port: 80, protocol: TCP}}
  - {{name: dns, port: 53, protocol: UDP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-a, namespace: sock, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 9053, protocol: UDP}}]
endpoints:
{endpoints}"""


class SockLab:
    """A namespace whose loopback holds the backends' addresses, their servers, and a cgroup
    with the data plane's socket hooks attached."""

    def __init__(self, dataplane, backends=BACKENDS):
        root = cgroup2_root()
        if root is None:
            pytest.skip("the socket hooks need cgroup v2, which is not mounted")
        self.dp = dataplane
        self.backends = backends
        self.ns = unique("ebpflb-sk-")
        self.cgroup = os.path.join(root, unique("ebpflb-test-"))
        self.owns = strict_owner(dataplane.config)
        self.servers = []

    def up(self) -> None:
        create_netns(self.ns)
        subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True)
        for addr in self.backends:
            six = ":" in addr  # an IPv6 backend: usable at once (no duplicate address detection)
            subprocess.run(["ip", "-n", self.ns, "addr", "add", f"{addr}/{128 if six else 32}",
                            "dev", "lo", *(["nodad"] if six else [])], check=True)
        for addr in self.backends:
            r, w = os.pipe()
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, "-m", "ebpflb.lab.podserver",
                 "--name", addr, "--bind", addr, "--ready-fd", str(w)],
                pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            os.close(w)
            self.servers.append(proc)
            with os.fdopen(r) as ready:
                assert ready.readline().startswith("ready"), f"pod server {addr} did not start"
        with in_netns(self.ns):
            self.cookie = netns_cookie()
        os.mkdir(self.cgroup)
        attach_sock_hooks(self.cgroup, self.dp.progs.sock, self.owns)
        write_settings(BccMapWriter(self.dp.progs.bpf), "all")

    def down(self) -> None:
        """Every step runs whatever the others did, so one failure leaves nothing else behind."""
        problems = []
        for step in (self._stop_clients, self._remove_cgroup, self._stop_servers,
                     lambda: remove_netns(self.ns),
                     lambda: write_settings(BccMapWriter(self.dp.progs.bpf), "off")):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - reported after every step ran
                problems.append(repr(exc))
        assert not problems, problems

    def _stop_clients(self) -> None:
        if os.path.isdir(self.cgroup):
            kill_pids(cgroup_pids(self.cgroup))

    def _remove_cgroup(self) -> None:
        if os.path.isdir(self.cgroup):
            detach_sock_hooks(self.cgroup, self.owns)
            os.rmdir(self.cgroup)

    def _stop_servers(self) -> None:
        for proc in self.servers:
            proc.terminate()
            proc.wait(5)
        kill_pids(netns_pids(self.ns))

    def client_argv(self, ops) -> list:
        """sockclient in the namespace and, from its start, in the test's cgroup."""
        return in_cgroup(self.cgroup, ["nsenter", f"--net={netns_path(self.ns)}", sys.executable,
                                       "-m", "ebpflb.lab.sockclient", json.dumps(list(ops))])

    def run(self, *ops: dict) -> list:
        """Runs the operations in a client process inside the cgroup and the namespace."""
        out = subprocess.run(self.client_argv(ops), capture_output=True, text=True, timeout=60,
                             check=True)
        return json.loads(out.stdout)

    def http(self, addr: str = VIP, port: int = 80, n: int = 1) -> list:
        return self.run(*[{"op": "http", "addr": addr, "port": port}] * n)


@pytest.fixture(scope="module")
def socklab(dataplane):
    lab = SockLab(dataplane)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
    assert not os.path.exists(lab.cgroup)


@pytest.fixture
def sl(socklab):
    socklab.dp.program(manifest())
    write_settings(BccMapWriter(socklab.dp.progs.bpf), "all")
    yield socklab
    socklab.dp.progs.bpf[b"lb4_sock_affinity"].clear()


def test_tcp_connect_goes_to_a_backend_and_getpeername_says_the_frontend(sl):
    before = sl.dp.stats()
    results = sl.http(n=30)
    assert all(r["errno"] is None for r in results), results
    assert {r["peer"] for r in results} == {f"{VIP}:80"}
    served = Counter(r["body"] for r in results)
    assert set(served) == set(BACKENDS)  # the socket cookie spreads them
    after = sl.dp.stats()
    assert after["socket/new"] - before["socket/new"] == 30
    # Nothing went through a TC program as a flow of a frontend.
    assert all(after[k] == before[k] for k in after if k.endswith(("/new", "/established"))
               and not k.startswith("socket/"))


def test_udp_replies_come_from_the_frontend(sl):
    unconnected, connected = sl.run({"op": "udp", "addr": VIP, "port": 53, "payload": "a"},
                                    {"op": "udp", "addr": VIP, "port": 53, "payload": "b",
                                     "connect": True})
    for r, payload in ((unconnected, "a"), (connected, "b")):
        assert r["errno"] is None, r
        assert r["source"] == f"{VIP}:53"
        name, echoed = r["reply"].split()
        assert name in BACKENDS and echoed == payload
    assert connected["peer"] == f"{VIP}:53"


def test_no_endpoints_refuses_at_once(sl):
    before = sl.dp.stats()
    tcp, udp_send, udp_connect = sl.run(
        {"op": "http", "addr": EMPTY_VIP, "port": 80},
        {"op": "udp", "addr": EMPTY_VIP, "port": 53},
        {"op": "udp", "addr": EMPTY_VIP, "port": 53, "connect": True})
    assert tcp["errno"] == "ECONNREFUSED"
    assert udp_send["errno"] == "ECONNREFUSED"
    assert udp_connect["errno"] == "ECONNREFUSED"
    assert sl.dp.stats()["socket/reject"] - before["socket/reject"] == 3


def test_backends_only_on_other_nodes_are_left_to_the_packet_path(sl):
    """internalTrafficPolicy Local with no endpoint on this node (the test's model knows no node):
    kube-proxy drops such traffic; the hook leaves the socket untranslated (here: unroutable) so
    the packet path drops it, instead of refusing as for a Service with no endpoint at all."""
    sl.dp.program(manifest().replace(f"  clusterIP: {VIP}\n",
                                     f"  clusterIP: {VIP}\n  internalTrafficPolicy: Local\n", 1))
    before = sl.dp.stats()
    (r,) = sl.http()
    assert r["errno"] == "ENETUNREACH"
    after = sl.dp.stats()
    assert after["socket/reject"] == before["socket/reject"]
    assert after["socket/pass"] > before["socket/pass"]


def test_not_a_frontend_is_left_alone(sl):
    # Port 81 of the VIP is no frontend: the socket goes where routing says (nowhere here).
    (r,) = sl.http(port=81)
    assert r["errno"] == "ENETUNREACH"
    # A backend reached directly is not rewritten either, and its peer stays its own.
    (r,) = sl.http(addr=BACKENDS[1], port=8080)
    assert r["body"] == BACKENDS[1] and r["peer"] == f"{BACKENDS[1]}:8080"


def test_maglev_and_weights_choose_as_the_slots_say(sl):
    sl.dp.program(manifest('{lb.ebpflb.io/algorithm: maglev, '
                           f'lb.ebpflb.io/backend-weights: "{BACKENDS[0]}=0"}}'))
    served = Counter(r["body"] for r in sl.http(n=30))
    assert set(served) == set(BACKENDS[1:])


def test_session_affinity_keeps_the_client_on_one_backend(sl):
    sl.dp.program(manifest(affinity=True))
    served = {r["body"] for r in sl.http(n=12)}
    assert len(served) == 1
    # The client is its network namespace: the binding is keyed by its cookie.
    keys = [k for k in sl.dp.progs.bpf[b"lb4_sock_affinity"].keys()]
    assert [k.netns_cookie for k in keys] == [sl.cookie]


def test_source_ranges_and_draining_frontends_are_left_to_the_packet_path(sl):
    sl.dp.program(manifest(ranges=True))
    # The client's address is not chosen yet at connect(): the ranges are the packet path's.
    (r,) = sl.http(addr=LB_IP)
    assert r["errno"] == "ENETUNREACH"
    assert sl.http()[0]["body"] in BACKENDS  # its ClusterIP has no ranges
    # A removed TCP frontend drains for the flows the packet path has through it (one made up
    # here with BPF_PROG_TEST_RUN), and takes no new socket.
    sl.dp.program(manifest())
    sl.dp.clear_conntrack()
    syn = Ether(**ETH) / IP(src="10.244.0.5", dst=VIP) / TCP(sport=7400, dport=80, flags="S")
    bpf_run(sl.dp.progs.from_pod.fd, bytes(syn))
    try:
        sl.dp.program(manifest().split("---", 1)[1])
        assert any(v.flags & SVC_F_DRAINING for v in sl.dp.progs.bpf[b"lb4_services"].values())
        (r,) = sl.http()
        assert r["errno"] == "ENETUNREACH"
    finally:
        sl.dp.clear_conntrack()


def test_modes(sl):
    bpf = sl.dp.progs.bpf
    write_settings(BccMapWriter(bpf), "off")
    assert read_mode(bpf) == "off"
    assert sl.http()[0]["errno"] == "ENETUNREACH"
    # host-only: the test's namespace is not the node's ...
    write_settings(BccMapWriter(bpf), "host-only")
    assert sl.http()[0]["errno"] == "ENETUNREACH"
    # ... until the settings say it is.
    write_settings(BccMapWriter(bpf), "host-only", host_cookie=sl.cookie)
    assert sl.http()[0]["body"] in BACKENDS


def test_restart_replaces_the_hooks_and_detach_removes_them(sl):
    before = hooks_attached(sl.cgroup, sl.owns)
    assert set(before) == set(sl.dp.progs.sock)
    # The same programs again: nothing to replace (the kernel refuses one program twice).
    assert attach_sock_hooks(sl.cgroup, sl.dp.progs.sock, sl.owns) == 0
    assert hooks_attached(sl.cgroup, sl.owns) == before
    # A restarted agent's programs (a new object on the same pins) replace the old ones: one
    # program per hook afterwards, the new one, and sockets still translated.
    restarted = load_programs(sl.dp.config)
    try:
        assert attach_sock_hooks(sl.cgroup, restarted.sock, sl.owns) == len(before)
        now = hooks_attached(sl.cgroup, sl.owns)
        assert set(now) == set(before) and not set(now.values()) & set(before.values())
        assert sl.http()[0]["body"] in BACKENDS
        assert attach_sock_hooks(sl.cgroup, sl.dp.progs.sock, sl.owns) == len(before)
        assert hooks_attached(sl.cgroup, sl.owns) == before
    finally:
        restarted.bpf.cleanup()
    assert detach_sock_hooks(sl.cgroup, sl.owns) == len(before)
    try:
        assert hooks_attached(sl.cgroup, sl.owns) == {}
        assert sl.http()[0]["errno"] == "ENETUNREACH"
    finally:
        attach_sock_hooks(sl.cgroup, sl.dp.progs.sock, sl.owns)


# ---- stale sockets: the agent's purge step closes what the hooks sent to a removed backend

UNANSWERED = "10.244.90.9"  # routed out of a veth whose peer never answers ARP: SYN_SENT for ~3 s
SLOW_VIP = "10.96.90.12"


def slow_service(backend: str) -> str:
    return f"""
---
apiVersion: v1
kind: Service
metadata: {{name: slow, namespace: sock}}
spec:
  clusterIP: {SLOW_VIP}
  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: slow-a, namespace: sock, labels: {{kubernetes.io/service-name: slow}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: [{backend}], conditions: {{ready: true}}}}
"""


def without(addr: str) -> str:
    return manifest().replace(f"- {{addresses: [{addr}], conditions: {{ready: true}}}}\n", "")


def purge_after(sl, text: str) -> int:
    """Programs `text` and runs the agent's purge step on the plan, as the agent does."""
    from ebpflb.dataplane.stale_sockets import close_stale_sockets
    from ebpflb.plan import conntrack_purge

    stale = conntrack_purge(sl.dp.program(text).plan)
    return close_stale_sockets(sl.dp.progs.bpf, sl.cgroup, stale.svc_ids, stale.udp_backends,
                               stale.tcp_backends)


def start_client(sl, *ops: dict) -> subprocess.Popen:
    """The client in the background (its output read when it ends)."""
    return subprocess.Popen(sl.client_argv(ops), stdout=subprocess.PIPE, text=True)


def udp_backends_of_sockets(sl) -> set:
    """The backends lb4_sock_nat says UDP sockets were sent to."""
    from ebpflb.dataplane.bcc_maps import be32_to_ip

    return {be32_to_ip(k.addr) for k, _ in sl.dp.progs.bpf[b"lb4_sock_nat"].items() if k.proto == 17}


def test_a_connected_udp_socket_is_closed_when_its_backend_leaves(sl):
    """A DNS client with one connected socket: its backend leaves the Service (its pod still
    answers, as a pod being replaced would); the agent's purge closes the socket, the client
    opens a new one and gets a live backend. A socket connected to that pod directly (not
    through the frontend) is left alone. Fails without close_stale_sockets: the old socket
    keeps asking the removed backend."""
    sl.dp.progs.bpf[b"lb4_sock_nat"].clear()
    loop = {"op": "udp-loop", "addr": VIP, "port": 53, "count": 40, "interval": 0.05,
            "reconnect": True}
    client = direct = start_client(sl, loop)  # `direct` replaced once it starts
    try:
        wait_until(lambda: udp_backends_of_sockets(sl), 10, "the client's socket")
        (pinned,) = udp_backends_of_sockets(sl)
        direct = start_client(sl, dict(loop, addr=pinned, port=9053, reconnect=False))
        time.sleep(0.5)
        changed = time.monotonic()
        assert purge_after(sl, without(pinned)) == 1  # the VIP's socket, not the direct one
        purged_in = time.monotonic() - changed
        (through_vip,) = json.loads(client.communicate(timeout=30)[0])
        (direct_result,) = json.loads(direct.communicate(timeout=30)[0])
    finally:
        for proc in (client, direct):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    answers = through_vip["answers"]
    # ECONNABORTED when the socket is closed while the client waits in recv(); EDESTADDRREQ when
    # it is closed between two queries (the next send() finds it disconnected).
    aborted = [i for i, (_, a) in enumerate(answers) if a in ("ECONNABORTED", "EDESTADDRREQ")]
    assert len(aborted) == 1, " ".join(str(a) for _, a in answers)
    before, after = answers[:aborted[0]], answers[aborted[0] + 1:]
    assert before and all(a.split()[0] == pinned for _, a in before)
    assert after and all(a is not None and a.split()[0] in set(BACKENDS) - {pinned}
                         for _, a in after), after
    assert purged_in < 1.0
    assert all(a is not None and a.split()[0] == pinned for _, a in direct_result["answers"])


def test_an_unanswered_tcp_connect_is_closed_when_its_backend_leaves(sl):
    """A connect() the backend never answers (here: no neighbour for it) fails with
    ECONNABORTED as soon as the backend leaves, instead of waiting out its timeout."""
    subprocess.run(["ip", "-n", sl.ns, "link", "add", "sk0", "type", "veth", "peer", "sk1"],
                   check=True)
    try:
        for dev in ("sk0", "sk1"):
            subprocess.run(["ip", "-n", sl.ns, "link", "set", dev, "up"], check=True)
        subprocess.run(["ip", "-n", sl.ns, "route", "add", f"{UNANSWERED}/32", "dev", "sk0"],
                       check=True)
        sl.dp.program(manifest() + slow_service(UNANSWERED))
        client = start_client(sl, {"op": "http", "addr": SLOW_VIP, "port": 80, "timeout": 10})
        try:
            time.sleep(0.5)
            t0 = time.monotonic()
            assert purge_after(sl, manifest() + slow_service(BACKENDS[0])) == 1
            (r,) = json.loads(client.communicate(timeout=30)[0])
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        assert r["errno"] == "ECONNABORTED"
        assert time.monotonic() - t0 < 2.0  # not the 3 s of failed neighbour resolution
        # The next connect() goes to the live backend.
        assert sl.http(SLOW_VIP)[0]["body"] == BACKENDS[0]
    finally:
        subprocess.run(["ip", "-n", sl.ns, "link", "del", "sk0"], check=False)


def test_explain_predicts_the_hooks(sl):
    """`ebpflb explain --socket`'s prediction (pure, from the maps and the socket's cookie) is
    the backend the real hook sent each socket to, for hash-mod and Maglev slots alike."""
    from ebpflb.apply import read_snapshot
    from ebpflb.explain_socket import REFUSED, TRANSLATED, UNTOUCHED, explain_socket

    for text in (manifest(), manifest("{lb.ebpflb.io/algorithm: maglev}")):
        sl.dp.program(text)
        snapshot = read_snapshot(sl.dp.writer)
        for r in sl.http(n=20):
            e = explain_socket(snapshot, VIP, 80, 6, "all", host=False, cookie=r["cookie"])
            assert e.verdict == TRANSLATED
            assert e.backend == f"{r['body']}:8080", (r, e)
    # Session affinity: the namespace's binding decides, whatever the cookie says.
    sl.dp.program(manifest(affinity=True))
    served = {r["body"] for r in sl.http(n=5)}
    assert len(served) == 1
    from click.testing import CliRunner

    from ebpflb.cli import main

    out = CliRunner().invoke(main, ["explain", "10.244.0.5:1", f"{VIP}:80", "tcp", "--socket",
                                    "pod", "--cookie", "12345", "--netns-cookie", str(sl.cookie),
                                    "-o", "json", "--pin-dir", sl.dp.config.pin_dir])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["backend"] == f"{served.pop()}:8080"
    snapshot = read_snapshot(sl.dp.writer)
    assert explain_socket(snapshot, EMPTY_VIP, 80, 6, "all", False).verdict == REFUSED
    assert explain_socket(snapshot, VIP, 81, 6, "all", False).verdict == UNTOUCHED
    assert explain_socket(snapshot, VIP, 80, 6, "host-only", False).verdict == "packet path"


def test_explain_cli_socket(sl):
    from click.testing import CliRunner

    from ebpflb.cli import main

    (r,) = sl.http()
    pin = ["--pin-dir", sl.dp.config.pin_dir]
    out = CliRunner().invoke(main, ["explain", "10.244.0.5:40000", f"{VIP}:80", "tcp", "--socket",
                                    "pod", "--cookie", str(r["cookie"]), "-o", "json", *pin])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["verdict"] == "translated" and result["backend"] == f"{r['body']}:8080"
    assert result["mode"] == "all"
    text = CliRunner().invoke(main, ["explain", "10.244.0.5:40000", f"{VIP}:80", "tcp",
                                     "--socket", "host", *pin]).output
    assert "TRANSLATED to one of" in text and "socket LB  all" in text
    # The packet path's explanation says the hooks take a pod's sockets first.
    packet = CliRunner().invoke(main, ["explain", "10.244.0.5:40000", f"{VIP}:80", "tcp", *pin])
    assert packet.exit_code == 0 and "balanced at connect() (explain --socket pod)" in packet.output
    bad = CliRunner().invoke(main, ["explain", "10.244.0.5:40000", f"{VIP}:80", "tcp",
                                    "--cookie", "5", *pin])
    assert bad.exit_code == 2 and "--cookie and --netns-cookie go with --socket" in bad.output
