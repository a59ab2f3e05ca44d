"""netfilter's conntrack through ebpflb/takeover/nf_conntrack.py, on a real kernel: dump sees
the flows kube-proxy-like DNAT rules made, delete removes exactly one entry, and add_dnat makes
netfilter translate a flow that no rule chose (the hand-back), for UDP, for an open TCP
connection (bulk both ways, no segment INVALID), and for IPv6; it refuses, rather than move the
client port, while netfilter still holds the flow as the data path rewrote it.

It also pins down, as tests, how netfilter behaves around a takeover and a hand-back:
- a packet of a DNATed flow that arrives already rewritten to the backend makes a second entry
  whose reply tuple clashes with the first, and NAT gives it another source port (UDP, a TCP
  SYN, and a TCP segment mid-stream, which the backend then resets);
- an entry is translated only while the namespace has both a NAT hook (some nat chain or table
  of the family) and the conntrack hook (some rule that needs conntrack: a DNAT, a ct match):
  deleting the only nft nat table, or flushing a legacy nat table whose DNAT rules were the only
  conntrack users, stops the translation of the flows already there; the entries stay;
- add_dnat is accepted with no nat table at all, and translates nothing until both hooks exist.

Topology: one lab node routing between a "client" pod (10.244.0.2) and a "web-1" pod, the
backend (10.244.0.11), the VIP range blackholed in the node; the nat rules and the conntrack
table are the node's. Test sockets (not the pod server) play client and backend, so the
backend's view of the source port is the test's own.

Tier: lab (root, real namespaces and traffic). Fixtures are in tests/lab/conftest.py.
"""
from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from ebpflb.lab import lab as lablib
from ebpflb.lab.nsops import in_netns, netns_path
from ebpflb.lab.topology import PodSpec
from ebpflb.takeover import nf_conntrack as nfct
from ebpflb.takeover.nf_conntrack import NfFlow

pytestmark = pytest.mark.lab

TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP
PODS = [PodSpec("client", "10.244.0.2"), PodSpec("web-1", "10.244.0.11")]
VIP = {4: "10.96.0.10", 6: "fd00:10:96::a"}
OTHER_VIP = {4: "10.96.0.99", 6: "fd00:10:96::63"}  # a Service no test flow goes to
SVC_UDP, SVC_TCP = 53, 80  # the frontend ports
BACKEND_UDP, BACKEND_TCP = 7000, 7001  # where the test's backend sockets listen
WAIT = 1.0  # how long a datagram that should not arrive is waited for
ETH_P_IP = 0x0800


# ------------------------------------------------------------------ the lab

@dataclass
class Net:
    lab: lablib.Lab
    family: int  # 4 or 6
    sockets: contextlib.ExitStack  # the test's sockets, closed before the lab goes

    @property
    def node(self) -> str:
        return self.lab.node_ns

    @property
    def client_ns(self) -> str:
        return self.lab.pod_ns("client")

    @property
    def backend_ns(self) -> str:
        return self.lab.pod_ns("web-1")

    @property
    def client(self) -> str:
        return self.lab.ip4("client") if self.family == 4 else self.lab.ip6("client")

    @property
    def backend(self) -> str:
        return self.lab.ip4("web-1") if self.family == 4 else self.lab.ip6("web-1")

    @property
    def vip(self) -> str:
        return VIP[self.family]


@pytest.fixture
def make_net(lab_names) -> Iterator:
    """make_net(family=4): a client/backend lab (dual-stack for 6), removed after the test;
    every socket the test opened through net_socket is closed first."""
    made: List[str] = []
    with contextlib.ExitStack() as sockets:

        def _make(family: int = 4) -> Net:
            name = lab_names.new()
            made.append(name)
            return Net(lablib.lab_up(name, PODS, ip_family="ipv4" if family == 4 else "dual"),
                       family, sockets)

        try:
            yield _make
        finally:
            sockets.close()
            for name in made:
                lablib.lab_down(name)


@pytest.fixture
def net(make_net) -> Net:
    return make_net(4)


def net_socket(net: Net, ns: str, kind: int, proto: int = 0,
               af: Optional[int] = None) -> socket.socket:
    """A socket made in namespace `ns` (it stays bound to it), closed at the end of the test;
    of the lab's family unless `af` says otherwise."""
    if af is None:
        af = socket.AF_INET if net.family == 4 else socket.AF_INET6
    with in_netns(ns):
        sock = socket.socket(af, kind, proto)
    return net.sockets.enter_context(sock)


def run_in(ns: str, argv: List[str], stdin: Optional[str] = None) -> str:
    """A command in namespace `ns` only (no new mount namespace); its stdout. Raises naming the
    command and its stderr."""
    proc = subprocess.run(["nsenter", f"--net={netns_path(ns)}", *argv], input=stdin,
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} in {ns}: {proc.stderr.strip()}")
    return proc.stdout


# ------------------------------------------------------------------ rules

def nft(ns: str, script: str) -> None:
    run_in(ns, ["nft", "-f", "-"], stdin=script)


def nat_table(family: int, name: str, rules: List[str]) -> str:
    """An nft table with one nat chain at prerouting (what registers NAT on the hooks)."""
    fam = "ip" if family == 4 else "ip6"
    body = "".join(f"    {rule}\n" for rule in rules)
    return (f"table {fam} {name} {{\n  chain pre {{\n"
            f"    type nat hook prerouting priority dstnat; policy accept;\n{body}  }}\n}}\n")


def ct_filter_table(family: int) -> str:
    """An nft table whose only rule needs conntrack (and no NAT), as a firewall's would."""
    fam = "ip" if family == 4 else "ip6"
    return (f"table {fam} ctonly {{\n  chain fw {{\n"
            f"    type filter hook forward priority 0; policy accept;\n"
            f"    ct state established counter\n  }}\n}}\n")


def dnat_rule(net: Net, vip: str, proto: str, port: int, backend_port: int) -> str:
    """A kube-proxy-like DNAT: VIP:port -> the backend."""
    fam = "ip" if net.family == 4 else "ip6"
    to = f"{net.backend}:{backend_port}" if net.family == 4 else f"[{net.backend}]:{backend_port}"
    return f"{fam} daddr {vip} {proto} dport {port} dnat to {to}"


def service_rules(net: Net) -> List[str]:
    return [dnat_rule(net, net.vip, "udp", SVC_UDP, BACKEND_UDP),
            dnat_rule(net, net.vip, "tcp", SVC_TCP, BACKEND_TCP)]


def other_service_rule(net: Net) -> str:
    """A DNAT no test flow matches: kube-proxy's rules for other Services, which keep NAT and
    conntrack on the hooks."""
    return dnat_rule(net, OTHER_VIP[net.family], "udp", SVC_UDP, BACKEND_UDP)


def iptables_legacy(ns: str, *args: str) -> str:
    return run_in(ns, ["iptables-legacy", *args])


# ------------------------------------------------------------------ traffic

def udp_pair(net: Net, client_port: int) -> Tuple[socket.socket, socket.socket]:
    """(client socket bound to client_port, backend socket bound to BACKEND_UDP)."""
    cli = net_socket(net, net.client_ns, socket.SOCK_DGRAM)
    cli.bind((net.client, client_port))
    srv = net_socket(net, net.backend_ns, socket.SOCK_DGRAM)
    srv.bind((net.backend, BACKEND_UDP))
    for sock in (cli, srv):
        sock.settimeout(WAIT)
    return cli, srv


def recv_or_none(sock: socket.socket) -> Optional[Tuple[bytes, Tuple[str, int]]]:
    try:
        data, peer = sock.recvfrom(2048)
    except socket.timeout:
        return None
    return data, (peer[0], peer[1])


def udp_round(cli: socket.socket, srv: socket.socket, dst: Tuple[str, int], payload: bytes
              ) -> Tuple[Optional[Tuple[str, int]], Optional[Tuple[str, int]]]:
    """Send `payload` to dst; the backend answers whoever it saw. Returns (source the backend
    saw, source the client's answer came from); None where nothing arrived."""
    cli.sendto(payload, dst)
    got = recv_or_none(srv)
    if got is None:
        return None, None
    data, seen = got
    assert data == payload
    srv.sendto(b"re:" + data, seen)
    answer = recv_or_none(cli)
    if answer is None:
        return seen, None
    assert answer[0] == b"re:" + payload
    return seen, answer[1]


def tcp_listener(net: Net) -> socket.socket:
    srv = net_socket(net, net.backend_ns, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((net.backend, BACKEND_TCP))
    srv.listen(8)
    srv.settimeout(5)
    return srv


def tcp_connect(net: Net, client_port: int, dst: Tuple[str, int],
                reuse: bool = False) -> socket.socket:
    cli = net_socket(net, net.client_ns, socket.SOCK_STREAM)
    if reuse:  # a second socket on the same client port, to another destination
        cli.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    cli.bind((net.client, client_port))
    cli.settimeout(5)
    cli.connect(dst)
    return cli


def tcp_accept(net: Net, listener: socket.socket) -> Tuple[socket.socket, Tuple[str, int]]:
    """The next connection and the client address the backend sees."""
    conn, peer = listener.accept()
    net.sockets.enter_context(conn)
    conn.settimeout(10)
    return conn, (peer[0], peer[1])


def tcp_bulk(sender: socket.socket, receiver: socket.socket, size: int) -> int:
    """Send `size` bytes one way (the receiver reads in a thread); the bytes received."""
    got: List[int] = []

    def drain() -> None:
        total = 0
        with contextlib.suppress(OSError):
            while total < size:
                chunk = receiver.recv(1 << 16)
                if not chunk:
                    break
                total += len(chunk)
        got.append(total)

    reader = threading.Thread(target=drain, name="tcp-bulk-reader")
    reader.start()
    sender.sendall(b"z" * size)
    reader.join(timeout=30)
    return got[0] if got else 0


def tcp_round(cli: socket.socket, conn: socket.socket, payload: bytes) -> None:
    """One request and answer over an open connection (both ends are test sockets)."""
    cli.sendall(payload)
    assert conn.recv(2048) == payload
    conn.sendall(b"re:" + payload)
    assert cli.recv(2048) == b"re:" + payload


# ------------------------------------------------------------------ conntrack

def flows(net: Net) -> List[NfFlow]:
    with in_netns(net.node):
        return nfct.dump(socket.AF_INET if net.family == 4 else socket.AF_INET6)


def flow_of(found: List[NfFlow], proto: int, orig: Tuple[str, int, str, int]
            ) -> Optional[NfFlow]:
    matches = [f for f in found if f.proto == proto and f.orig == orig]
    assert len(matches) <= 1, matches
    return matches[0] if matches else None


def invalid_packets(net: Net) -> int:
    """Packets conntrack found INVALID in the node (every CPU), from ctnetlink's statistics: a
    segment outside the window it tracks is one, and is then not translated."""
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTSocket

    with in_netns(net.node):
        sock = NFCTSocket()
    with contextlib.closing(sock):
        return sum(cpu.get_attr("CTA_STATS_INVALID") or 0 for cpu in sock.stat())


def add_dnat(net: Net, proto: int, client_port: int, frontend_port: int, backend_port: int,
             **kw) -> None:
    with in_netns(net.node):
        nfct.add_dnat(net.family, proto, net.client, client_port, net.vip, frontend_port,
                      net.backend, backend_port, **kw)


# ================================================================== dump and delete

@dataclass
class Served:
    """Two flows a kube-proxy-like rule set DNATed: a UDP one, and a TCP connection left open."""

    udp_port: int
    tcp_port: int
    tcp_client: socket.socket
    tcp_conn: socket.socket


def serve_through_rules(net: Net) -> Served:
    nft(net.node, nat_table(net.family, "kp", service_rules(net)))
    cli, srv = udp_pair(net, 40001)
    assert udp_round(cli, srv, (net.vip, SVC_UDP), b"u1") == (
        (net.client, 40001), (net.vip, SVC_UDP))
    listener = tcp_listener(net)
    tcp_client = tcp_connect(net, 41001, (net.vip, SVC_TCP))
    conn, _ = tcp_accept(net, listener)
    tcp_round(tcp_client, conn, b"t1")
    return Served(40001, 41001, tcp_client, conn)


def test_dump_sees_dnat_flows_with_the_backend_in_the_reply_tuple(net):
    served = serve_through_rules(net)
    found = flows(net)
    udp_flow = flow_of(found, UDP, (net.client, served.udp_port, net.vip, SVC_UDP))
    assert udp_flow is not None, found
    assert udp_flow.family == 4
    assert udp_flow.reply == (net.backend, BACKEND_UDP, net.client, served.udp_port)
    assert udp_flow.dnat and not udp_flow.snat and udp_flow.seen_reply
    assert udp_flow.tcp_state is None and 0 < udp_flow.timeout <= 180
    assert (udp_flow.mark, udp_flow.zone) == (0, 0)
    tcp_flow = flow_of(found, TCP, (net.client, served.tcp_port, net.vip, SVC_TCP))
    assert tcp_flow is not None, found
    assert tcp_flow.reply == (net.backend, BACKEND_TCP, net.client, served.tcp_port)
    assert tcp_flow.dnat and tcp_flow.assured and tcp_flow.seen_reply
    assert tcp_flow.tcp_state == nfct.TCP_CONNTRACK_ESTABLISHED
    # Both spellings of the family read the same table (the timeouts tick between two reads);
    # the other family's is another.
    ours = {udp_flow.orig, tcp_flow.orig}
    with in_netns(net.node):
        assert {f.orig for f in nfct.dump(4)} >= ours
        assert not {f.orig for f in nfct.dump(socket.AF_INET6)} & ours


def test_delete_removes_exactly_that_entry(net):
    served = serve_through_rules(net)
    before = flows(net)
    tcp_flow = flow_of(before, TCP, (net.client, served.tcp_port, net.vip, SVC_TCP))
    with in_netns(net.node):
        assert nfct.exists(4, TCP, tcp_flow.orig)
        assert nfct.delete(tcp_flow) is True
        assert nfct.delete(tcp_flow) is False  # already gone: not an error
        assert not nfct.exists(4, TCP, tcp_flow.orig)
    after = flows(net)
    assert {f.orig for f in after} == {f.orig for f in before} - {tcp_flow.orig}
    assert flow_of(after, UDP, (net.client, served.udp_port, net.vip, SVC_UDP)) is not None


# ================================================================== add_dnat: the hand-back

@pytest.mark.parametrize("family", [4, 6])
def test_add_dnat_sends_a_udp_flow_no_rule_matches_to_the_backend(make_net, family):
    net = make_net(family)
    nft(net.node, nat_table(family, "kp", [other_service_rule(net)]))
    cli, srv = udp_pair(net, 40002)
    add_dnat(net, UDP, 40002, SVC_UDP, BACKEND_UDP)
    entry = flow_of(flows(net), UDP, (net.client, 40002, net.vip, SVC_UDP))
    assert entry is not None
    assert entry.reply == (net.backend, BACKEND_UDP, net.client, 40002)
    assert entry.dnat and entry.assured and entry.seen_reply
    # The backend sees the client itself; the answer comes back from the frontend.
    assert udp_round(cli, srv, (net.vip, SVC_UDP), b"handed back") == (
        (net.client, 40002), (net.vip, SVC_UDP))


def test_add_dnat_keeps_an_open_tcp_connection_after_its_rule_and_entry_are_gone(net):
    """The hand-back of a TCP connection: its rule and its entry gone (as after a takeover),
    kube-proxy's rules for other Services in place, add_dnat alone carries it on, both ways."""
    nft(net.node, nat_table(4, "kp", [other_service_rule(net)]))
    nft(net.node, nat_table(4, "svc", service_rules(net)))
    listener = tcp_listener(net)
    cli = tcp_connect(net, 41002, (net.vip, SVC_TCP))
    conn, seen = tcp_accept(net, listener)
    assert seen[:2] == (net.client, 41002)
    tcp_round(cli, conn, b"before")
    time.sleep(0.3)  # let the delayed ACKs pass before the entry goes
    run_in(net.node, ["nft", "delete", "table", "ip", "svc"])
    entry = flow_of(flows(net), TCP, (net.client, 41002, net.vip, SVC_TCP))
    with in_netns(net.node):
        assert nfct.delete(entry)
    # No rule sends the VIP anywhere now: a new connection goes nowhere.
    probe = net_socket(net, net.client_ns, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    with pytest.raises(OSError):
        probe.connect((net.vip, SVC_TCP))
    probe.close()
    add_dnat(net, TCP, 41002, SVC_TCP, BACKEND_TCP)
    tcp_round(cli, conn, b"after the hand-back")
    # Bulk both ways: the window scale of the handshake is unknown to the new entry, so only
    # its liberal window tracking (the mid-stream flags) keeps every segment valid.
    invalid = invalid_packets(net)
    assert tcp_bulk(cli, conn, 8 << 20) == 8 << 20
    assert tcp_bulk(conn, cli, 8 << 20) == 8 << 20
    assert invalid_packets(net) == invalid
    tcp_round(cli, conn, b"and again")
    entry = flow_of(flows(net), TCP, (net.client, 41002, net.vip, SVC_TCP))
    assert entry.tcp_state == nfct.TCP_CONNTRACK_ESTABLISHED and entry.dnat
    assert entry.reply == (net.backend, BACKEND_TCP, net.client, 41002)


def test_add_dnat_refusal_names_the_flow(net):
    add_dnat(net, UDP, 40003, SVC_UDP, BACKEND_UDP, timeout=30)
    with pytest.raises(nfct.NfFlowError) as raised:
        add_dnat(net, UDP, 40003, SVC_UDP, BACKEND_UDP, timeout=30)
    assert raised.value.code == errno.EEXIST
    assert f"udp {net.client}:40003 -> {net.vip}:{SVC_UDP} DNAT to {net.backend}:" in str(
        raised.value)
    assert "File exists" in str(raised.value)


def test_add_dnat_timeout_defaults_to_the_namespace_sysctl(net):
    run_in(net.node, ["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_established=86400"])
    add_dnat(net, TCP, 41003, SVC_TCP, BACKEND_TCP)
    add_dnat(net, UDP, 40004, SVC_UDP, BACKEND_UDP, timeout=77)
    found = flows(net)
    assert 86390 <= flow_of(found, TCP, (net.client, 41003, net.vip, SVC_TCP)).timeout <= 86400
    assert 67 <= flow_of(found, UDP, (net.client, 40004, net.vip, SVC_UDP)).timeout <= 77


@pytest.mark.parametrize("args, why", [
    ((4, UDP, "fd00::1", 1, "10.96.0.1", 53, "10.244.0.11", 53), "not an IPv4 address"),
    ((4, UDP, "10.244.0.2", 0, "10.96.0.1", 53, "10.244.0.11", 53), "not a port"),
    ((4, socket.IPPROTO_SCTP, "10.244.0.2", 1, "10.96.0.1", 53, "10.244.0.11", 53),
     "TCP and UDP entries only"),
    ((5, UDP, "10.244.0.2", 1, "10.96.0.1", 53, "10.244.0.11", 53), "use 4 or 6"),
    ((4, UDP, "10.244.0.2", 1, "nowhere", 53, "10.244.0.11", 53), "not an IP address"),
])
def test_add_dnat_refuses_bad_arguments(args, why):
    with pytest.raises(ValueError, match=why):
        nfct.add_dnat(*args, timeout=30)


@pytest.mark.parametrize("proto, state, timeout, why", [
    (UDP, nfct.TCP_CONNTRACK_ESTABLISHED, 30, "tcp_state"),
    (TCP, 0, 30, "tcp_state"),
    (TCP, None, 0, "timeout"),
])
def test_add_dnat_refuses_a_bad_state_or_timeout(proto, state, timeout, why):
    with pytest.raises(ValueError, match=why):
        nfct.add_dnat(4, proto, "10.244.0.2", 1, "10.96.0.1", 53, "10.244.0.11", 53,
                      tcp_state=state, timeout=timeout)


# ================================================================== the table itself

def node_only(make_lab) -> lablib.Lab:
    return make_lab(pods=[])


def test_dump_skips_entries_without_ports_and_delete_keeps_to_its_zone(make_lab):
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple, NFCTSocket

    lab = node_only(make_lab)
    with in_netns(lab.node_ns):
        with contextlib.closing(NFCTSocket()) as sock:
            # An ICMP echo entry: nothing a frontend matches, so dump leaves it out.
            sock.entry("add", timeout=60,
                       tuple_orig=NFCTAttrTuple(saddr="10.244.0.2", daddr="10.244.0.11",
                                                proto=socket.IPPROTO_ICMP, icmp_id=7,
                                                icmp_type=8, icmp_code=0),
                       tuple_reply=NFCTAttrTuple(saddr="10.244.0.11", daddr="10.244.0.2",
                                                 proto=socket.IPPROTO_ICMP, icmp_id=7,
                                                 icmp_type=0, icmp_code=0))
            # The same UDP tuple in zone 0 and in zone 5 are two entries.
            for zone in (0, 5):
                sock.entry("add", timeout=60, zone=zone or None,
                           tuple_orig=NFCTAttrTuple(saddr="10.244.0.2", daddr="10.244.0.11",
                                                    proto=UDP, sport=5000, dport=5001),
                           tuple_reply=NFCTAttrTuple(saddr="10.244.0.11", daddr="10.244.0.2",
                                                     proto=UDP, sport=5001, dport=5000))
        found = nfct.dump(socket.AF_INET)
        assert sorted((f.proto, f.orig, f.zone) for f in found) == [
            (UDP, ("10.244.0.2", 5000, "10.244.0.11", 5001), 0),
            (UDP, ("10.244.0.2", 5000, "10.244.0.11", 5001), 5)]
        in_zone5 = next(f for f in found if f.zone == 5)
        assert not in_zone5.dnat  # a plain entry: no NAT
        assert nfct.delete(in_zone5) is True
        assert [f.zone for f in nfct.dump(socket.AF_INET)] == [0]


def test_add_dnat_refuses_rather_than_move_the_client_port(make_lab):
    """While the data path translates a flow, netfilter holds it as client -> backend, whose
    reply tuple is the one the hand-back's entry needs. add_dnat is refused then (rather than
    given another client port, which would move the flow off its socket) and takes once that
    entry is deleted."""
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple, NFCTSocket

    lab = node_only(make_lab)
    as_rewritten = ("10.244.0.2", 40009, "10.244.0.11", BACKEND_UDP)
    with in_netns(lab.node_ns):
        with contextlib.closing(NFCTSocket()) as sock:
            sock.entry("add", timeout=60,
                       tuple_orig=NFCTAttrTuple(saddr="10.244.0.2", daddr="10.244.0.11",
                                                proto=UDP, sport=40009, dport=BACKEND_UDP),
                       tuple_reply=NFCTAttrTuple(saddr="10.244.0.11", daddr="10.244.0.2",
                                                 proto=UDP, sport=BACKEND_UDP, dport=40009))
        hand_back = (4, UDP, "10.244.0.2", 40009, VIP[4], SVC_UDP, "10.244.0.11", BACKEND_UDP)
        with pytest.raises(nfct.NfFlowError, match="File exists") as raised:
            nfct.add_dnat(*hand_back, timeout=60)
        assert raised.value.code == errno.EEXIST
        found = nfct.dump(4)
        assert [f.orig for f in found] == [as_rewritten]
        assert nfct.delete(found[0])
        nfct.add_dnat(*hand_back, timeout=60)
        (entry,) = nfct.dump(4)
    assert entry.reply == ("10.244.0.11", BACKEND_UDP, "10.244.0.2", 40009)
    assert entry.dnat and not entry.snat


def _best_dump_seconds(runs: int = 3) -> Tuple[float, int]:
    best, count = float("inf"), 0
    for _ in range(runs):
        t0 = time.perf_counter()
        count = len(nfct.dump(socket.AF_INET))
        best = min(best, time.perf_counter() - t0)
    return best, count


def _fill(first: int, count: int) -> None:
    """`count` UDP DNAT entries, client 10.244.<i // 50000>.2:<port> (unique tuples)."""
    for i in range(first, first + count):
        client = str(ipaddress.IPv4Address("10.244.0.2") + 256 * (i // 50000))
        nfct.add_dnat(4, UDP, client, 1024 + i % 50000, "10.96.0.1", 53, "10.244.0.11", 5353,
                      timeout=600)


def test_dump_reads_ten_thousand_entries_in_linear_time(make_lab):
    lab = node_only(make_lab)
    small, large = 2_000, 10_000
    with in_netns(lab.node_ns):
        _fill(0, small)
        t_small, n_small = _best_dump_seconds()
        _fill(small, large - small)
        t_large, n_large = _best_dump_seconds()
        found = nfct.dump(socket.AF_INET)
    assert (n_small, n_large) == (small, large)
    assert len({f.orig for f in found}) == large
    assert all(f.dnat and f.reply[:2] == ("10.244.0.11", 5353) for f in found)
    # Per entry, the large dump costs no more than the small one (a quadratic one would cost
    # 5 times more); the margin absorbs a busy machine.
    per_small, per_large = t_small / small, t_large / large
    assert per_large < 2.5 * per_small, (t_small, t_large)


# ================================================================== errors

class _NoCtnetlink:
    """A socket whose kernel has nfnetlink but no conntrack subsystem."""

    marshal = None

    def __init__(self, *args, **kwargs) -> None:
        pass

    def nlm_request(self, *args, **kwargs):
        raise NetlinkError(errno.EOPNOTSUPP, "Operation not supported")
        yield  # a generator, as pyroute2's

    def request(self, *args, **kwargs):
        raise NetlinkError(errno.EOPNOTSUPP, "Operation not supported")

    def close(self) -> None:
        pass


def test_a_kernel_without_conntrack_netlink_gives_a_clear_error(monkeypatch):
    def no_nfnetlink(*args, **kwargs):
        raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")

    monkeypatch.setattr(nfct, "NFCTSocket", no_nfnetlink)
    with pytest.raises(nfct.NfConntrackUnavailable, match="nf_conntrack_netlink"):
        nfct.dump(socket.AF_INET)
    with pytest.raises(nfct.NfConntrackUnavailable, match="Protocol not supported"):
        nfct.delete(NfFlow(4, UDP, ("10.244.0.2", 1, "10.96.0.1", 53),
                           ("10.244.0.11", 53, "10.244.0.2", 1)))
    monkeypatch.setattr(nfct, "NFCTSocket", _NoCtnetlink)
    with pytest.raises(nfct.NfConntrackUnavailable, match="not available in this kernel"):
        nfct.dump(socket.AF_INET6)
    with pytest.raises(nfct.NfConntrackUnavailable, match="needs nf_conntrack_netlink and nf_nat"):
        nfct.add_dnat(4, UDP, "10.244.0.2", 1, "10.96.0.1", 53, "10.244.0.11", 53, timeout=30)


# ================================================================== facts: takeover

def test_fact_a_udp_datagram_already_rewritten_to_the_backend_gets_a_new_source_port(net):
    """The flow client:40005 -> VIP:53 has its entry (reply backend:7000 -> client:40005). The
    same client port sent straight to the backend makes a new entry whose reply tuple would be
    that same backend:7000 -> client:40005: NAT's null binding moves its source port."""
    nft(net.node, nat_table(4, "kp", service_rules(net)))
    cli, srv = udp_pair(net, 40005)
    assert udp_round(cli, srv, (net.vip, SVC_UDP), b"via vip") == (
        (net.client, 40005), (net.vip, SVC_UDP))
    seen, answered_from = udp_round(cli, srv, (net.backend, BACKEND_UDP), b"direct")
    assert seen[0] == net.client and seen[1] != 40005, seen
    assert answered_from == (net.backend, BACKEND_UDP)  # un-NATed back to port 40005
    found = flows(net)
    clash = flow_of(found, UDP, (net.client, 40005, net.backend, BACKEND_UDP))
    assert clash.reply == (net.backend, BACKEND_UDP, net.client, seen[1])
    assert clash.snat and not clash.dnat
    assert flow_of(found, UDP, (net.client, 40005, net.vip, SVC_UDP)).reply == (
        net.backend, BACKEND_UDP, net.client, 40005)


def test_fact_a_tcp_syn_already_rewritten_to_the_backend_gets_a_new_source_port(net):
    """As for UDP: a connection from the same client port straight to the backend, while the
    one through the VIP is open, reaches the backend from another port."""
    nft(net.node, nat_table(4, "kp", service_rules(net)))
    listener = tcp_listener(net)
    tcp_connect(net, 41004, (net.vip, SVC_TCP), reuse=True)
    tcp_accept(net, listener)
    tcp_connect(net, 41004, (net.backend, BACKEND_TCP), reuse=True)
    _, seen = tcp_accept(net, listener)
    assert seen[0] == net.client and seen[1] != 41004, seen


def _sniff_tcp_source_port(sniffer: socket.socket, dport: int, seq: int) -> Optional[int]:
    """The source port of the first IPv4 TCP segment to `dport` with sequence number `seq`."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            packet = sniffer.recv(65535)
        except socket.timeout:
            return None
        if len(packet) < 40 or packet[9] != TCP:
            continue
        ihl = (packet[0] & 0x0F) * 4
        sport, dst_port, got_seq = struct.unpack_from("!HHI", packet, ihl)
        if dst_port == dport and got_seq == seq:
            return sport
    return None


def test_fact_a_mid_stream_tcp_segment_already_rewritten_gets_a_new_source_port(net):
    """What the takeover must avoid: a segment of an open connection, its destination already
    rewritten to the backend while kube-proxy's entry is still there, reaches the backend from
    another source port (netfilter picks the segment up as a new flow, whose reply clashes)."""
    scapy = pytest.importorskip("scapy.all")
    nft(net.node, nat_table(4, "kp", service_rules(net)))
    listener = tcp_listener(net)
    cli = tcp_connect(net, 41005, (net.vip, SVC_TCP))
    conn, _ = tcp_accept(net, listener)
    tcp_round(cli, conn, b"open")
    # What reaches the backend's device, IP header first (a packet socket of its namespace).
    sniffer = net_socket(net, net.backend_ns, socket.SOCK_DGRAM, socket.htons(ETH_P_IP),
                         af=socket.AF_PACKET)
    sniffer.bind(("eth0", 0))
    sniffer.settimeout(3)
    raw = net_socket(net, net.client_ns, socket.SOCK_RAW, socket.IPPROTO_RAW)
    segment = scapy.IP(src=net.client, dst=net.backend) / scapy.TCP(
        sport=41005, dport=BACKEND_TCP, flags="A", seq=123456789, ack=1)
    raw.sendto(bytes(segment), (net.backend, 0))
    seen = _sniff_tcp_source_port(sniffer, BACKEND_TCP, 123456789)
    assert seen is not None and seen != 41005, seen


# ================================================================== facts: rules going away

def test_fact_deleting_the_only_nft_nat_table_stops_translating_existing_flows(net):
    """Conntrack stays on the hooks (a firewall's ct rule) while the nat table goes: the NAT
    hook is what is missing. (Without the ct rule the nat table's DNAT rules were also the
    only conntrack users, and the empty nat chain below would not bring it back.)"""
    nft(net.node, ct_filter_table(4))  # conntrack stays on the hooks throughout
    nft(net.node, nat_table(4, "kp", service_rules(net)))
    cli, srv = udp_pair(net, 40006)
    assert udp_round(cli, srv, (net.vip, SVC_UDP), b"1") == ((net.client, 40006),
                                                              (net.vip, SVC_UDP))
    run_in(net.node, ["nft", "delete", "table", "ip", "kp"])
    assert udp_round(cli, srv, (net.vip, SVC_UDP), b"2") == (None, None)
    # The entry is still there, DNAT and all; only no NAT hook applies it.
    entry = flow_of(flows(net), UDP, (net.client, 40006, net.vip, SVC_UDP))
    assert entry is not None and entry.dnat
    # Any nat chain of the family brings it back, rule or not.
    nft(net.node, nat_table(4, "again", []))
    assert udp_round(cli, srv, (net.vip, SVC_UDP), b"3") == ((net.client, 40006),
                                                              (net.vip, SVC_UDP))


@pytest.mark.parametrize("ct_rule_left", [False, True], ids=["dnat-only", "with-ct-match"])
def test_fact_flushing_the_legacy_nat_table_translates_existing_flows_only_while_conntrack_stays(
        net, ct_rule_left):
    """iptables-legacy's nat table stays registered when flushed (its NAT hook stays), but the
    DNAT rules were what held conntrack on the hooks: with them gone and nothing else using
    conntrack, packets are not tracked, so not translated. kube-proxy's filter rules
    (-m conntrack --ctstate) would keep it on."""
    if ct_rule_left:
        iptables_legacy(net.node, "-A", "FORWARD", "-m", "conntrack", "--ctstate",
                        "ESTABLISHED,RELATED", "-j", "ACCEPT")
    iptables_legacy(net.node, "-t", "nat", "-A", "PREROUTING", "-d", net.vip, "-p", "udp",
                    "--dport", str(SVC_UDP), "-j", "DNAT", "--to-destination",
                    f"{net.backend}:{BACKEND_UDP}")
    cli, srv = udp_pair(net, 40007)
    assert udp_round(cli, srv, (net.vip, SVC_UDP), b"1") == ((net.client, 40007),
                                                              (net.vip, SVC_UDP))
    iptables_legacy(net.node, "-t", "nat", "-F")
    assert "-A " not in iptables_legacy(net.node, "-t", "nat", "-S")
    expected = ((net.client, 40007), (net.vip, SVC_UDP)) if ct_rule_left else (None, None)
    assert udp_round(cli, srv, (net.vip, SVC_UDP), b"2") == expected
    assert flow_of(flows(net), UDP, (net.client, 40007, net.vip, SVC_UDP)) is not None


def test_fact_add_dnat_needs_no_nat_table_to_be_written_but_both_hooks_to_act(net):
    cli, srv = udp_pair(net, 40008)
    add_dnat(net, UDP, 40008, SVC_UDP, BACKEND_UDP)  # no table of any kind in the node
    assert flow_of(flows(net), UDP, (net.client, 40008, net.vip, SVC_UDP)).dnat
    assert udp_round(cli, srv, (net.vip, SVC_UDP), b"1") == (None, None)
    nft(net.node, nat_table(4, "empty", []))  # NAT on the hooks, conntrack not
    assert udp_round(cli, srv, (net.vip, SVC_UDP), b"2") == (None, None)
    nft(net.node, ct_filter_table(4))  # and now conntrack too
    assert udp_round(cli, srv, (net.vip, SVC_UDP), b"3") == ((net.client, 40008),
                                                              (net.vip, SVC_UDP))
