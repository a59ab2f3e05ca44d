"""Data-path defects found by review (issue 14), each reproduced on the real programs with
BPF_PROG_TEST_RUN and each failing on the code before its fix:

- a datagram in fragments is translated whole: the first fragment through the normal path, the
  later ones (which carry no ports) to the same addresses, in both directions, on pod and node
  devices; a later fragment that comes before its first is counted and left alone;
- a SNAT port is aged over both entries of its flow, so one-way UDP keeps its port; a SNAT flow
  whose port went to another flow is not continued with that port;
- pods cannot act on other pods' flows: a pod device with known addresses refuses other sources,
  a flow is bound to the device it came in on, and a new flow never takes over the reply tuple of
  a live flow;
- a SYN retransmitted to a removed backend is sent to a live one;
- a flow whose half-open forward entry was evicted is rebuilt from its reply entry on the ACK;
- a packet too big for the device towards a remote backend is answered with ICMP fragmentation
  needed, and the flow stays remote;
- smaller ones: non-SYN TCP from a bad source, ICMP errors quoting IP options, a frontend record
  read with more slots than remain.

Programs run inside a namespace the module creates (bpf_fib_lookup and skb->ifindex resolve
there): the node device and routes of tests/bpf/test_northsouth.py, plus a second pod device.
The namespace, the node-device entries and the pod-address entries are removed at the end.
"""
import json
import socket
import subprocess
import sys
import time
from typing import Dict

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, fragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import checksum

from ebpflb.dataplane import testrun
from ebpflb.dataplane.bcc_maps import ip_to_be32, port_to_be16
from ebpflb.lab.nsops import create_netns, in_netns, remove_netns, write_sysctls
from ebpflb.model import DesiredState
from ebpflb.reconcile import reconcile

from ..conftest import unique
from .northsouth_env import (CLIENT, CLIENT_MAC, LB_IP, LOCAL_BE, NETNS_SETUP, NODE_DEV,
                              NODE_IP, NODE_MAC, NODE2_DEV, NODE2_IP, POD_CLIENT, POD_DEV,
                              REMOTE_BE, Node, delta, rebuilt, rewritten, set_node_devices, tcp,
                              udp)

pytestmark = pytest.mark.bpf

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
POD2_DEV = "pod1"
POD_MAC = ("02:bb:00:00:00:02", "02:bb:00:00:00:01")  # a pod's frame: pod -> host side
CLUSTER_IP = "10.96.0.10"  # the LoadBalancer Service of test_northsouth.manifest
EXTRA_SETUP = f"""\
link add {POD2_DEV} type veth peer name {POD2_DEV}p
link set {POD2_DEV} up
link set {POD2_DEV}p up
"""


@pytest.fixture(scope="module")
def node(dataplane):
    ns = unique("ebpflb-ns-hard-")
    create_netns(ns)
    entered: Dict[int, str] = {}
    try:
        write_sysctls(ns, {"net.ipv4.ip_forward": "1"})
        subprocess.run(["ip", "-n", ns, "-batch", "-"], input=NETNS_SETUP + EXTRA_SETUP, text=True,
                       check=True, capture_output=True)
        with in_netns(ns):
            ifindexes = {dev: socket.if_nametoindex(dev)
                         for dev in (NODE_DEV, NODE2_DEV, POD_DEV, POD2_DEV)}
        entered = {ifindexes[NODE_DEV]: NODE_IP, ifindexes[NODE2_DEV]: NODE2_IP}
        set_node_devices(dataplane, entered, entered)
        yield Node(dataplane, ns, ifindexes)
    finally:
        set_node_devices(dataplane, {}, entered)
        dataplane.progs.bpf[b"lb4_pod_addrs"].clear()
        dataplane.clear_conntrack()  # first: frontends with flows would drain
        reconcile(DesiredState(frontends={}, skipped=()), dataplane.writer,
                  dataplane.config.map_limits)
        remove_netns(ns)


@pytest.fixture(autouse=True)
def fresh(dataplane):
    dataplane.clear_conntrack()
    dataplane.progs.bpf[b"lb4_pod_addrs"].clear()
    yield
    dataplane.progs.bpf[b"lb4_pod_addrs"].clear()


def run_pod(node, prog: str, pkt, dev: str = POD_DEV) -> testrun.TestRunCtxResult:
    """lb4_from_pod ("in") or lb4_to_pod ("out") as on pod device `dev` of the node."""
    fd = {"in": node.dp.progs.from_pod, "out": node.dp.progs.to_pod}[prog].fd
    with in_netns(node.ns):
        return testrun.test_run_ctx(fd, bytes(pkt), testrun.skb_ctx(ifindex=node.ifindexes[dev]))


def pod_udp(src, sport, dst, dport, payload=b"q", **ip):
    return (Ether(src=POD_MAC[0], dst=POD_MAC[1]) / IP(src=src, dst=dst, **ip)
            / UDP(sport=sport, dport=dport) / Raw(payload))


def pod_tcp(src, sport, dst, dport, flags="S", seq=1000, ack=0):
    return (Ether(src=POD_MAC[0], dst=POD_MAC[1]) / IP(src=src, dst=dst, id=3)
            / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack))


def ct_table_entry(node, table: str, src, sport, dst, dport, proto, reply=False):
    t = node.bpf[table.encode()]
    key = t.Key(saddr=ip_to_be32(src), daddr=ip_to_be32(dst), sport=port_to_be16(sport),
                dport=port_to_be16(dport), proto=proto, dir=1 if reply else 0, pad=0)
    return t, key


def age(node, src, sport, dst, dport, proto, seconds, reply=False):
    """Moves an entry's last packet `seconds` into the past (bpf_ktime_get_ns is CLOCK_MONOTONIC)."""
    for table in ("ct4", "ct4_syn"):
        t, key = ct_table_entry(node, table, src, sport, dst, dport, proto, reply)
        try:
            v = t[key]
        except KeyError:
            continue
        v.last_seen_ns = time.monotonic_ns() - int(seconds * 1e9)
        t[key] = v
        return
    raise AssertionError(f"no conntrack entry {src}:{sport} -> {dst}:{dport}")


def fragments_of(pkt, size=600):
    frags = fragment(pkt[IP], fragsize=size)
    assert len(frags) >= 3
    return [Ether(src=pkt[Ether].src, dst=pkt[Ether].dst) / f for f in frags]


def reassembled_ok(frames, src, dst, sport, dport):
    """The translated fragments reassemble into one valid datagram between the given ends."""
    from scapy.layers.inet import defragment

    pkts = [Ether(f)[IP] for f in frames]
    for p in pkts:
        assert (p.src, p.dst) == (src, dst)
        q = p.copy()
        del q.chksum
        assert IP(bytes(q)).chksum == p.chksum, "IP checksum of a fragment"
    whole = defragment(pkts)
    assert len(whole) == 1
    datagram = IP(bytes(whole[0]))
    assert (datagram[UDP].sport, datagram[UDP].dport) == (sport, dport)
    check = datagram.copy()
    del check[UDP].chksum
    assert IP(bytes(check))[UDP].chksum == datagram[UDP].chksum, "UDP checksum of the datagram"


# ---------------------------------------------------------------- 1. fragments

def test_a_fragmented_datagram_to_a_cluster_ip_and_its_fragmented_answer(node):
    """A 3,000-byte UDP datagram from a pod to a ClusterIP leaves in fragments: all of them reach
    the backend, and the backend's fragmented answer reaches the pod from the ClusterIP."""
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    query = pod_udp(POD_CLIENT, 40000, CLUSTER_IP, 53, payload=b"q" * 3000, id=4242)
    before = node.stats()
    out = []
    for frame in fragments_of(query):
        res = run_pod(node, "in", frame)
        assert res.retval == TC_ACT_OK
        out.append(res.data)
    reassembled_ok(out, POD_CLIENT, LOCAL_BE, 40000, 5353)
    assert delta(before, node.stats()) == {"from_pod/new": 1, "from_pod/fragment": len(out) - 1,
                                           "conntrack_insert": 1}

    answer = pod_udp(LOCAL_BE, 5353, POD_CLIENT, 40000, payload=b"a" * 3000, id=777)
    back = [run_pod(node, "out", f).data for f in fragments_of(answer)]
    reassembled_ok(back, CLUSTER_IP, POD_CLIENT, 53, 40000)


@pytest.mark.parametrize("backend,node_name", [(LOCAL_BE, "node-0"), (REMOTE_BE, "node-1")],
                         ids=["local backend", "remote backend"])
def test_a_fragmented_datagram_through_a_node_port(node, backend, node_name):
    """From outside, through the NodePort: to a local backend the fragments go on to the stack
    DNATed; to a remote one every fragment is DNATed, SNATed and sent on like the first."""
    node.program(endpoints=[(backend, node_name)])
    query = udp(CLIENT, 40000, NODE_IP, 30053, payload=b"q" * 2500)
    query[IP].id = 999
    out = []
    for frame in fragments_of(query):
        res = node.run("tc", frame)
        out.append(res)
    verdicts = {r.retval for r in out}
    if backend == LOCAL_BE:
        assert verdicts == {TC_ACT_OK}
        reassembled_ok([r.data for r in out], CLIENT, LOCAL_BE, 40000, 5353)
    else:
        assert verdicts == {TC_ACT_REDIRECT}
        port = node.snat_port(CLIENT, 40000, NODE_IP, 30053, 17)
        reassembled_ok([r.data for r in out], NODE_IP, REMOTE_BE, port, 5353)
        assert all(Ether(r.data)[IP].ttl == 63 for r in out)


def test_a_later_fragment_before_its_first_is_counted_and_left_alone(node):
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    frames = fragments_of(pod_udp(POD_CLIENT, 40000, CLUSTER_IP, 53, payload=b"q" * 2000, id=31))
    before = node.stats()
    res = run_pod(node, "in", frames[1])
    assert (res.retval, res.data) == (TC_ACT_OK, bytes(frames[1]))
    assert delta(before, node.stats()) == {"from_pod/pass": 1, "frag_miss": 1}


# ---------------------------------------------------------------- 2. SNAT port aging

def _client_on_same_first_port(node, port):
    for sport in range(41000, 61000):
        if node.snat_port("192.168.200.4", sport, NODE_IP, 30053, 17) == port:
            return sport
    raise AssertionError("no client port hashes to the same SNAT port")


def test_one_way_udp_keeps_its_snat_port(node):
    """A client sends UDP through the NodePort to a remote backend that never answers: only the
    forward entry is refreshed. After the reply entry's idle time passes the UDP timeout, a new
    flow hashed to the same port must get another one: the port still carries the first flow."""
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    first = udp(CLIENT, 40000, NODE_IP, 30053)
    assert node.run("tc", first).retval == TC_ACT_REDIRECT
    port = node.snat_port(CLIENT, 40000, NODE_IP, 30053, 17)
    age(node, REMOTE_BE, 5353, NODE_IP, port, 17, 61, reply=True)  # the reply entry looks idle
    res = node.run("tc", first)  # ...while the client keeps sending
    assert Ether(res.data)[UDP].sport == port

    sport = _client_on_same_first_port(node, port)
    other = udp("192.168.200.4", sport, NODE_IP, 30053)
    res = node.run("tc", other)
    assert res.retval == TC_ACT_REDIRECT
    assert Ether(res.data)[UDP].sport != port, "a live flow's SNAT port was given to another client"
    rev = node.ct(REMOTE_BE, 5353, NODE_IP, port, 17, reply=True)
    assert (rev.nat2_addr, rev.nat2_port) == (CLIENT, 40000)


def test_a_snat_flow_whose_port_was_taken_does_not_go_on_with_it(node):
    """The reply entry under a flow's SNAT port names another client (the port was reassigned
    after an eviction): the flow's next datagram starts a new flow on a new port instead of
    sending with a tuple whose replies go to someone else."""
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    first = udp(CLIENT, 40000, NODE_IP, 30053)
    node.run("tc", first)
    port = node.snat_port(CLIENT, 40000, NODE_IP, 30053, 17)
    t, key = ct_table_entry(node, "ct4", REMOTE_BE, 5353, NODE_IP, port, 17, reply=True)
    v = t[key]
    v.nat2_addr, v.nat2_port = ip_to_be32("192.168.200.5"), port_to_be16(45555)
    t[key] = v
    res = node.run("tc", first)
    assert res.retval == TC_ACT_REDIRECT
    assert Ether(res.data)[UDP].sport != port


# ---------------------------------------------------------------- 3. spoofing

def allow(node, dev, *addrs):
    t = node.bpf[b"lb4_pod_addrs"]
    ifindex = node.ifindexes[dev]
    for addr in ("0.0.0.0",) + addrs:
        t[t.Key(ifindex=ifindex, addr=ip_to_be32(addr))] = t.Leaf(1)


def test_a_pod_device_refuses_sources_that_are_not_its_pods(node):
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    allow(node, POD2_DEV, "10.244.0.3")
    spoofed = pod_tcp(POD_CLIENT, 40000, CLUSTER_IP, 80)
    before = node.stats()
    assert run_pod(node, "in", spoofed, dev=POD2_DEV).retval == TC_ACT_SHOT
    assert delta(before, node.stats()) == {"from_pod/drop": 1, "spoofed": 1}
    own = pod_tcp("10.244.0.3", 40000, CLUSTER_IP, 80)
    assert Ether(run_pod(node, "in", own, dev=POD2_DEV).data)[IP].dst == LOCAL_BE


def test_another_pod_cannot_close_a_flow(node):
    """Pod 2 sends a RST claiming pod 1's flow: it is refused, and the flow stays open."""
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    allow(node, POD_DEV, POD_CLIENT)
    allow(node, POD2_DEV, "10.244.0.3")
    for flags in ("S", "A"):
        assert run_pod(node, "in", pod_tcp(POD_CLIENT, 40000, CLUSTER_IP, 80, flags)).retval == TC_ACT_OK
    before = node.stats()
    res = run_pod(node, "in", pod_tcp(POD_CLIENT, 40000, CLUSTER_IP, 80, "R"), dev=POD2_DEV)
    assert res.retval == TC_ACT_SHOT
    assert delta(before, node.stats()) == {"from_pod/drop": 1, "spoofed": 1}
    fwd = node.ct(POD_CLIENT, 40000, CLUSTER_IP, 80, 6)
    assert not fwd.flags & 0x2, "the flow was marked closing"


def test_a_new_flow_does_not_take_over_a_live_reply_tuple(node):
    """A live flow client:port -> NodePort -> backend; a SYN from the same client and port to the
    ClusterIP of the same backend would need the same reply tuple. It does not take it over: it
    gets a source port of its own (8. below), and the live flow's replies still come from the
    address it asked for. Failed on 5461d2f (the second flow took the tuple)."""
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    for flags in ("S", "A"):
        node.run("tc", tcp(CLIENT, 40000, NODE_IP, 30080, flags))
    before = node.stats()
    res = run_pod(node, "in", tcp(CLIENT, 40000, CLUSTER_IP, 80, mac=POD_MAC))
    assert res.retval == TC_ACT_OK and Ether(res.data)[TCP].sport != 40000
    assert delta(before, node.stats())["port_nat"] == 1
    reply = tcp(LOCAL_BE, 8080, CLIENT, 40000, "A", mac=(NODE_MAC, CLIENT_MAC))
    assert Ether(node.run("out", reply).data)[IP].src == NODE_IP


# ---------------------------------------------------------------- 8. one client port, two frontends

def test_one_client_port_to_two_frontends_of_one_backend(node):
    """A pod's UDP socket (one port) asks the ClusterIP and the LoadBalancer IP of one Service,
    whose only backend is on this node: both flows would have the reply tuple backend ->
    client:port. The second gets a source port of its own from the SNAT range (the first one
    probed is its flow hash), as conntrack would; each reply comes back from the frontend its
    request went to, to the client's own port, and ICMP errors about the second flow are
    translated with the port too. Failed on 8c0200c (the second flow was dropped)."""
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    first = pod_udp(POD_CLIENT, 5000, CLUSTER_IP, 53)
    second = pod_udp(POD_CLIENT, 5000, LB_IP, 53)
    res = run_pod(node, "in", first)
    assert (res.retval, res.data) == (TC_ACT_OK, rewritten(first, dst=LOCAL_BE, dport=5353))
    port = node.snat_port(POD_CLIENT, 5000, LB_IP, 53, 17)
    before = node.stats()
    res = run_pod(node, "in", second)
    assert (res.retval, res.data) == (TC_ACT_OK, rewritten(second, dst=LOCAL_BE, dport=5353,
                                                           sport=port))
    assert delta(before, node.stats()) == {"port_nat": 1, "conntrack_insert": 1, "from_pod/new": 1}
    fwd = node.ct(POD_CLIENT, 5000, LB_IP, 53, 17)
    assert (fwd.nat_addr, fwd.nat_port, fwd.flags & 0x20) == (LOCAL_BE, 5353, 0x20)

    # Replies: each from its own frontend, to the client's own port.
    for sport_seen, frontend in ((5000, CLUSTER_IP), (port, LB_IP)):
        reply = pod_udp(LOCAL_BE, 5353, POD_CLIENT, sport_seen, b"answer")
        res = run_pod(node, "out", reply)
        assert (res.retval, res.data) == (TC_ACT_OK, rewritten(reply, src=frontend, sport=53,
                                                               dport=5000)), frontend
    # A later datagram of the second flow keeps its port.
    res = run_pod(node, "in", second)
    assert Ether(res.data)[UDP].sport == port

    # The backend's port unreachable about the second flow reaches the client about what it
    # sent: POD_CLIENT:5000 -> LB_IP:53, from LB_IP.
    quoted = IP(src=POD_CLIENT, dst=LOCAL_BE, ttl=63) / UDP(sport=port, dport=5353)
    err = (Ether(src=POD_MAC[1], dst=POD_MAC[0]) / IP(src=LOCAL_BE, dst=POD_CLIENT)
           / ICMP(type=3, code=3) / bytes(quoted))
    res = run_pod(node, "out", err)
    out = Ether(res.data)
    inner = IP(bytes(out[ICMP].payload))
    assert (out[IP].src, inner.src, inner.dst, inner[UDP].sport, inner[UDP].dport) == (
        LB_IP, POD_CLIENT, LB_IP, 5000, 53)
    assert checksum(bytes(out[ICMP])) == 0 and checksum(bytes(inner)[:20]) == 0

    # `ebpflb explain` reads the flow's entry as the program does: the same backend, and the
    # port of its own.
    r = subprocess.run([sys.executable, "-m", "ebpflb.cli", "explain", f"{POD_CLIENT}:5000",
                        f"{LB_IP}:53", "udp", "-o", "json", "--pin-dir", node.dp.config.pin_dir],
                       capture_output=True, text=True, timeout=60, check=True)
    e = json.loads(r.stdout)
    assert (e["verdict"], e["backend"], e["source"]) == ("dnat", f"{LOCAL_BE}:5353",
                                                          f"{POD_CLIENT}:{port}"), e["reason"]


def test_a_port_reused_after_the_backends_rst_connects_through_the_frontend(node):
    """The backend reset a flow (only its reply entry is closing); the client reuses the port
    through the ClusterIP: the flow goes on (its forward entry is live) and the backend's SYN-ACK
    is translated, as it always was. (A review caught this regressing in d28b204.)"""
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    for flags in ("S", "A"):
        run_pod(node, "in", pod_tcp(POD_CLIENT, 40000, CLUSTER_IP, 80, flags))
    rst = (Ether(src=POD_MAC[1], dst=POD_MAC[0]) / IP(src=LOCAL_BE, dst=POD_CLIENT)
           / TCP(sport=8080, dport=40000, flags="R"))
    run_pod(node, "out", rst)
    assert Ether(run_pod(node, "in", pod_tcp(POD_CLIENT, 40000, CLUSTER_IP, 80)).data)[IP].dst == LOCAL_BE
    synack = (Ether(src=POD_MAC[1], dst=POD_MAC[0]) / IP(src=LOCAL_BE, dst=POD_CLIENT)
              / TCP(sport=8080, dport=40000, flags="SA", seq=9000, ack=1001))
    assert Ether(run_pod(node, "out", synack).data)[IP].src == CLUSTER_IP


def test_a_flow_with_a_port_of_its_own_that_lost_its_state_is_not_sent_on_anothers_tuple(node):
    """Two TCP flows from one client port to two frontends of one backend, the second with a
    port of its own; its forward entry is then lost (an eviction). Its next packet cannot be
    rebuilt, and forwarded by hash with the client's own port it would land in the first flow's
    connection at the backend: it is dropped (conntrack_collision). Failed on 0bedb50."""
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    for flags in ("S", "A"):
        run_pod(node, "in", pod_tcp(POD_CLIENT, 40000, CLUSTER_IP, 80, flags))
    run_pod(node, "in", pod_tcp(POD_CLIENT, 40000, LB_IP, 80))
    for table in ("ct4", "ct4_syn"):
        t, key = ct_table_entry(node, table, POD_CLIENT, 40000, LB_IP, 80, 6)
        t.pop(key, None)
    before = node.stats()
    res = run_pod(node, "in", pod_tcp(POD_CLIENT, 40000, LB_IP, 80, "A", seq=1001, ack=5001))
    assert res.retval == TC_ACT_SHOT
    assert delta(before, node.stats()) == {"from_pod/drop": 1, "conntrack_collision": 1}


def test_a_direct_connection_on_a_closed_flows_tuple_is_not_translated(node):
    """A pod's connection through the ClusterIP closed (FIN both ways); the pod then connects to
    the backend directly from the same port. The backend's SYN-ACK matches the closed flow's
    reply entry, but it answers the direct connection: it reaches the pod untouched, from the
    backend itself. On 0bedb50 it came from the ClusterIP and the connect hung. (Found by the
    reordering investigation of issue 14, #10.)"""
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    for flags in ("S", "A", "FA"):
        run_pod(node, "in", pod_tcp(POD_CLIENT, 40000, CLUSTER_IP, 80, flags))
    fin = (Ether(src=POD_MAC[1], dst=POD_MAC[0]) / IP(src=LOCAL_BE, dst=POD_CLIENT)
           / TCP(sport=8080, dport=40000, flags="FA"))
    assert Ether(run_pod(node, "out", fin).data)[IP].src == CLUSTER_IP
    synack = (Ether(src=POD_MAC[1], dst=POD_MAC[0]) / IP(src=LOCAL_BE, dst=POD_CLIENT)
              / TCP(sport=8080, dport=40000, flags="SA", seq=9000, ack=2001))
    res = run_pod(node, "out", synack)
    assert (res.retval, res.data) == (TC_ACT_OK, bytes(synack))
    # A live flow's SYN-ACK is still translated.
    run_pod(node, "in", pod_tcp(POD_CLIENT, 40001, CLUSTER_IP, 80))
    synack[TCP].dport = 40001
    assert Ether(run_pod(node, "out", synack).data)[IP].src == CLUSTER_IP


# ---------------------------------------------------------------- 4. SYN to a removed backend

def test_a_syn_retransmitted_after_its_backend_was_removed_goes_to_a_live_one(node):
    node.program(endpoints=[(REMOTE_BE, "node-1"), (LOCAL_BE, "node-0")])
    syn = pod_tcp(POD_CLIENT, 40000, CLUSTER_IP, 80)
    first = Ether(run_pod(node, "in", syn).data)[IP].dst
    other = LOCAL_BE if first == REMOTE_BE else REMOTE_BE
    node.program(endpoints=[(other, "node-0" if other == LOCAL_BE else "node-1")])
    before = node.stats()
    again = Ether(run_pod(node, "in", syn).data)
    assert again[IP].dst == other, "the retransmitted SYN went to the removed backend"
    assert delta(before, node.stats()) == {"backend_gone": 1, "from_pod/new": 1,
                                           "conntrack_insert": 1}


# ---------------------------------------------------------------- 7. lost half-open entry

@pytest.mark.parametrize("backend,node_name", [(LOCAL_BE, "node-0"), (REMOTE_BE, "node-1")],
                         ids=["local backend", "remote backend"])
def test_a_handshake_whose_forward_entry_was_evicted_completes(node, backend, node_name):
    """A SYN flood evicted the half-open forward entry; the backend's SYN-ACK still got through
    (its reply entry survived). The client's ACK rebuilds the forward entry, and the flow is
    established in ct4 with both entries."""
    node.program(endpoints=[(backend, node_name)])
    syn = tcp(CLIENT, 40000, NODE_IP, 30080)
    node.run("tc", syn)
    t, key = ct_table_entry(node, "ct4_syn", CLIENT, 40000, NODE_IP, 30080, 6)
    del t[key]
    before = node.stats()
    ack = tcp(CLIENT, 40000, NODE_IP, 30080, "A", seq=1001, ack=5001)
    res = node.run("tc", ack)
    assert res.retval in (TC_ACT_OK, TC_ACT_REDIRECT)
    assert Ether(res.data)[IP].dst == backend
    assert delta(before, node.stats()).get("conntrack_rebuilt") == 1
    fwd = node.ct(CLIENT, 40000, NODE_IP, 30080, 6)
    assert fwd is not None and not fwd.half_open and fwd.flags & 0x1


# ---------------------------------------------------------------- 6. too big for the device

def test_a_packet_too_big_for_the_remote_path_gets_fragmentation_needed(node):
    """The node device towards the remote backend has MTU 1200; a 1400-byte datagram with DF set
    comes in. It was taken for a local flow (DNAT, no SNAT, handed to the stack); now the flow is
    recorded as remote and the client hears "fragmentation needed" with MTU 1200, from the
    frontend, quoting its own packet."""
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    subprocess.run(["ip", "-n", node.ns, "link", "set", NODE_DEV, "mtu", "1200"], check=True)
    try:
        big = udp(CLIENT, 40000, NODE_IP, 30053, payload=b"x" * 1400)
        big[IP].flags = "DF"
        big = Ether(rebuilt(big))
        res = node.run("tc", big)
        assert res.retval == TC_ACT_REDIRECT
        out = Ether(res.data)
        assert ICMP in out and (out[ICMP].type, out[ICMP].code, out[ICMP].nexthopmtu) == (3, 4, 1200)
        assert (out[IP].src, out[IP].dst) == (NODE_IP, CLIENT)
        assert IP(bytes(out[ICMP].payload)).dst == NODE_IP  # the client's own packet, as it sent it
        fwd = node.ct(CLIENT, 40000, NODE_IP, 30053, 17)
        assert fwd is not None and fwd.flags & 0x10, "the flow was not recorded as remote (SNAT)"
    finally:
        subprocess.run(["ip", "-n", node.ns, "link", "set", NODE_DEV, "mtu", "1500"], check=True)


@pytest.mark.parametrize("hook", ["xdp", "xdp-generic"])
def test_xdp_leaves_a_packet_too_big_for_the_remote_path_to_tc(node, hook):
    """The same datagram at XDP: the kernel checks no MTU for a frame XDP sends out itself, so
    XDP gives the route lookup the packet's length and leaves a packet too big for the way to
    the backend to TC, untouched and untracked (before, it went out and was lost at the
    device)."""
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    subprocess.run(["ip", "-n", node.ns, "link", "set", NODE_DEV, "mtu", "1200"], check=True)
    try:
        big = udp(CLIENT, 40001, NODE_IP, 30053, payload=b"x" * 1400)
        big[IP].flags = "DF"
        raw = rebuilt(big)
        before = node.stats()
        res = node.run(hook, Ether(raw))
        assert (res.retval, res.data) == (2, raw)  # XDP_PASS, untouched
        assert delta(before, node.stats()) == {"node_xdp/to_tc": 1}
        assert node.ct(CLIENT, 40001, NODE_IP, 30053, 17) is None
        res = node.run("tc", Ether(raw))
        assert res.retval == TC_ACT_REDIRECT and ICMP in Ether(res.data)
    finally:
        subprocess.run(["ip", "-n", node.ns, "link", "set", NODE_DEV, "mtu", "1500"], check=True)


# ---------------------------------------------------------------- 9. smaller ones

def test_non_syn_tcp_from_a_bad_source_is_dropped_on_pod_devices(node):
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    before = node.stats()
    res = run_pod(node, "in", pod_tcp("127.0.0.1", 40000, CLUSTER_IP, 80, "A"))
    assert res.retval == TC_ACT_SHOT
    assert delta(before, node.stats()) == {"from_pod/drop": 1, "bad_source": 1}


def test_an_icmp_error_quoting_ip_options_is_translated(node):
    """The pod's request carried IP options; a router's "fragmentation needed" quotes them. The
    quoted ports sit after the options, and the error reaches the pod about the ClusterIP."""
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    run_pod(node, "in", pod_udp(POD_CLIENT, 40000, CLUSTER_IP, 53))
    quoted = IP(src=POD_CLIENT, dst=LOCAL_BE, options=[IPOption_NOP()] * 4) / UDP(sport=40000, dport=5353)
    err = (Ether(src=POD_MAC[1], dst=POD_MAC[0]) / IP(src="10.244.0.1", dst=POD_CLIENT)
           / ICMP(type=3, code=4, nexthopmtu=1400) / Raw(bytes(quoted)[:32]))
    before = node.stats()
    res = run_pod(node, "out", err)
    assert res.retval == TC_ACT_OK
    assert delta(before, node.stats()) == {"to_pod/icmp_error": 1}
    inner = IP(bytes(Ether(res.data)[ICMP].payload))
    assert inner.dst == CLUSTER_IP and bytes(Ether(res.data)[ICMP].payload)[26:28] == (53).to_bytes(2, "big")
    assert rebuilt(res.data) == res.data


def test_a_frontend_read_with_more_slots_than_remain_is_served(node):
    """The frontend shrinks while a packet reads it: its record still says 8 slots, slots past
    the new count are gone. The packet is served from a live slot, not rejected."""
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    t = node.bpf[b"lb4_services"]
    key = t.Key(vip=ip_to_be32(CLUSTER_IP), port=port_to_be16(80), proto=6, scope=0)
    v = t[key]
    v.count = 8
    t[key] = v
    served = 0
    for sport in range(42000, 42032):
        res = run_pod(node, "in", pod_tcp(POD_CLIENT, sport, CLUSTER_IP, 80))
        assert res.retval == TC_ACT_OK and Ether(res.data)[IP].dst == LOCAL_BE
        served += 1
    assert served == 32


def test_a_half_closed_flow_keeps_its_reply_tuple(node):
    """The backend closed its side of a pod's flow through the ClusterIP (FIN), the pod has not:
    the flow is half-closed, still live. A new flow from the same client port to another
    frontend of that backend gets a port of its own instead of taking the tuple over (Linux NAT
    remaps too, while the old entry lives); once both sides closed, the tuple is free. (On
    764ba3b a closing reply entry gave the tuple up: the lab test of one client port to two
    frontends failed under load, when the backend answered and closed first.)"""
    node.program(endpoints=[(LOCAL_BE, "node-0")])

    def backend_fin(sport):
        fin = (Ether(src=POD_MAC[1], dst=POD_MAC[0]) / IP(src=LOCAL_BE, dst=POD_CLIENT)
               / TCP(sport=8080, dport=sport, flags="FA"))
        assert Ether(run_pod(node, "out", fin).data)[IP].src == CLUSTER_IP

    for sport, client_closes in ((40100, False), (40101, True)):
        for flags in ("S", "A"):
            run_pod(node, "in", pod_tcp(POD_CLIENT, sport, CLUSTER_IP, 80, flags))
        backend_fin(sport)
        if client_closes:
            run_pod(node, "in", pod_tcp(POD_CLIENT, sport, CLUSTER_IP, 80, "FA"))
        before = node.stats()
        res = run_pod(node, "in", pod_tcp(POD_CLIENT, sport, LB_IP, 80))
        moved = delta(before, node.stats())
        if client_closes:  # closed both ways: the new flow may take the tuple
            assert Ether(res.data)[TCP].sport == sport and "port_nat" not in moved, moved
        else:
            assert Ether(res.data)[TCP].sport != sport and moved["port_nat"] == 1, moved
