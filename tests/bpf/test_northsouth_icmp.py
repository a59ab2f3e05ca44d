"""North-south data path, ICMP errors and the rest (the bench: tests/bpf/northsouth_env.py):
ICMP errors about flows from outside, both directions, local and remote backends; the
per-frontend and per-backend counters and `ebpflb stats --verdicts`; SNAT port probing,
exhaustion and reuse; Ethernet padding; the TTL decrement's checksum carry; and a seeded sweep of
varied flows through SNAT and back. Outputs are compared byte for byte with packets built
independently by scapy, and every checksum is verified by recomputing it."""
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ebpflb.dataplane import testrun
from ebpflb.dataplane.bcc_maps import ip_to_be32
from ebpflb.maps import SERVICES, SvcKey

from .northsouth_env import (CLIENT, CLIENT_MAC, CLIENT_NO_NEIGH, CLUSTER_IP, CT_F_EXTERNAL,
                             CT_F_SNAT, delta, DROP, FORWARD, FRONTENDS, GW_MAC, HOOKS, LB_IP,
                             LOADBALANCER, LOCAL_BE, NODE_IP, NODE_MAC, NODEPORT, PASS,
                             POD_CLIENT, rebuilt, REMOTE_BE, rewritten, TC_ACT_OK,
                             TC_ACT_REDIRECT, tcp, udp, UDP_NODEPORT, v, XDP_PASS, XDP_TX)
# The bench's fixtures, used as test arguments.
from .northsouth_env import fresh_conntrack, node  # noqa: F401

pytestmark = pytest.mark.bpf


# ---------------------------------------------------------------- ICMP errors on node devices

ROUTER = "192.168.200.1"  # a router on the client's side
POD_ROUTER = "10.244.1.1"  # a router on the way to node-1's pods


def quoted(src, sport, dst, dport, proto):
    """The first 28 bytes of a packet as an ICMP error quotes it: its IP header (checksum
    computed for these addresses) and 8 bytes of TCP/UDP header. The quoted UDP checksum is a
    constant: nobody can check it from 8 bytes, and translation leaves it alone."""
    l4 = (TCP(sport=sport, dport=dport, seq=1000) if proto == 6
          else UDP(sport=sport, dport=dport, chksum=0x1234))
    return bytes(IP(src=src, dst=dst, ttl=63, id=77) / l4 / Raw(b"hello"))[:28]


def icmp_error(src, dst, inner, icmp_type=3, code=3, ttl=64, mac=(CLIENT_MAC, NODE_MAC)):
    """An ICMP error frame, every checksum (outer IP, ICMP) computed by scapy."""
    return Ether(rebuilt(Ether(src=mac[0], dst=mac[1]) / IP(src=src, dst=dst, ttl=ttl, id=9)
                         / ICMP(type=icmp_type, code=code) / Raw(inner)))


def assert_icmp_checksums_valid(data: bytes):
    """Outer IP, ICMP and quoted IP header checksums, each recomputed by scapy."""
    assert rebuilt(data) == data
    inner = bytes(Ether(data)[ICMP].payload)[:20]
    fresh = IP(inner)
    del fresh.chksum
    assert bytes(fresh)[:20] == inner


@pytest.mark.parametrize("sender", ["backend", "router"])
def test_icmp_error_from_a_local_backend_reaches_the_client_from_the_frontend(node, sender):
    """node_out: a local backend's port unreachable about the client's datagram (or a router's
    between them) leaves the node quoting the frontend, and from it when the backend sent it."""
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    fe_ip, fe_port = UDP_NODEPORT
    assert node.run("tc", udp(CLIENT, 40001, fe_ip, fe_port)).retval == TC_ACT_OK
    src = LOCAL_BE if sender == "backend" else "10.244.0.1"
    err = icmp_error(src, CLIENT, quoted(CLIENT, 40001, LOCAL_BE, 5353, 17),
                     mac=(NODE_MAC, CLIENT_MAC))
    before = node.stats()
    res = node.run("out", err)
    assert res.retval == TC_ACT_OK
    exp = icmp_error(fe_ip if sender == "backend" else src, CLIENT,
                     quoted(CLIENT, 40001, fe_ip, fe_port, 17), mac=(NODE_MAC, CLIENT_MAC))
    assert res.data == bytes(exp), Ether(res.data).show2(dump=True)
    assert_icmp_checksums_valid(res.data)
    assert delta(before, node.stats()) == {"node_out/icmp_error": 1}


def test_icmp_error_about_a_reply_reaches_the_local_backend(node):
    """node_in: a router on the client's side answers the frontend's reply with "fragmentation
    needed"; the backend must hear of it about its own packet."""
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    assert node.run("tc", tcp(CLIENT, 40000, *NODEPORT)).retval == TC_ACT_OK
    err = icmp_error(ROUTER, NODE_IP, quoted(NODE_IP, 30080, CLIENT, 40000, 6), code=4)
    res = node.run("tc", err)
    assert res.retval == TC_ACT_OK  # to the stack, routed to the pod
    exp = icmp_error(ROUTER, LOCAL_BE, quoted(LOCAL_BE, 8080, CLIENT, 40000, 6), code=4)
    assert res.data == bytes(exp), Ether(res.data).show2(dump=True)
    assert_icmp_checksums_valid(res.data)


@pytest.mark.parametrize("frontend", FRONTENDS, ids=list(FRONTENDS))
def test_icmp_error_about_a_reply_reaches_the_remote_backend(node, frontend):
    """node_in, SNAT flow: the error about the frontend's reply to the client becomes an error
    from this node about what the backend sent (backend -> SNAT port), sent on to the backend."""
    fe_ip, fe_port = FRONTENDS[frontend]
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    assert node.run("tc", tcp(CLIENT, 40000, fe_ip, fe_port)).retval == TC_ACT_REDIRECT
    port = node.ct(CLIENT, 40000, fe_ip, fe_port, 6).nat2_port
    err = icmp_error(ROUTER, fe_ip, quoted(fe_ip, fe_port, CLIENT, 40000, 6), code=4)
    before = node.stats()
    res = node.run("tc", err)
    assert res.retval == TC_ACT_REDIRECT
    exp = icmp_error(NODE_IP, REMOTE_BE, quoted(REMOTE_BE, 8080, NODE_IP, port, 6), code=4, ttl=63)
    assert res.data == bytes(exp), Ether(res.data).show2(dump=True)
    assert_icmp_checksums_valid(res.data)
    assert delta(before, node.stats()) == {"node_in/icmp_error": 1}


@pytest.mark.parametrize("sender", ["backend", "router"])
@pytest.mark.parametrize("frontend", FRONTENDS, ids=list(FRONTENDS))
def test_icmp_error_from_the_remote_side_reaches_the_client(node, frontend, sender):
    """node_in, SNAT flow: the backend's port unreachable (or a router's error on the way to it)
    about the node's packet becomes an error about the client's own datagram to the frontend,
    from the frontend when the backend sent it, sent on to the client."""
    fe_ip, fe_port = {"nodeport": UDP_NODEPORT, "loadbalancer": (LB_IP, 53)}[frontend]
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    assert node.run("tc", udp(CLIENT, 40001, fe_ip, fe_port)).retval == TC_ACT_REDIRECT
    port = node.ct(CLIENT, 40001, fe_ip, fe_port, 17).nat2_port
    src = REMOTE_BE if sender == "backend" else POD_ROUTER
    err = icmp_error(src, NODE_IP, quoted(NODE_IP, port, REMOTE_BE, 5353, 17),
                     mac=(GW_MAC, NODE_MAC))
    res = node.run("tc", err)
    assert res.retval == TC_ACT_REDIRECT
    exp = icmp_error(fe_ip if sender == "backend" else src, CLIENT,
                     quoted(CLIENT, 40001, fe_ip, fe_port, 17), ttl=63, mac=(GW_MAC, NODE_MAC))
    assert res.data == bytes(exp), Ether(res.data).show2(dump=True)
    assert_icmp_checksums_valid(res.data)


def test_icmp_errors_pass_xdp_untouched_and_unknown_ones_tc_too(node):
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    assert node.run("tc", udp(CLIENT, 40001, *UDP_NODEPORT)).retval == TC_ACT_REDIRECT
    port = node.ct(CLIENT, 40001, *UDP_NODEPORT, 17).nat2_port
    known = icmp_error(REMOTE_BE, NODE_IP, quoted(NODE_IP, port, REMOTE_BE, 5353, 17))
    res = node.run("xdp", known)  # XDP leaves every ICMP error to TC
    assert (res.retval, res.data) == (XDP_PASS, bytes(known))
    for unknown in (icmp_error(REMOTE_BE, NODE_IP, quoted(NODE_IP, port + 1, REMOTE_BE, 5353, 17)),
                    icmp_error(ROUTER, NODE_IP, quoted(NODE_IP, 30080, CLIENT, 40999, 6), code=4),
                    icmp_error(ROUTER, CLIENT, quoted(CLIENT, 40001, NODE_IP, 30053, 17))):
        for hook in ("xdp", "tc", "out"):
            res = node.run(hook, unknown)
            assert (res.retval, res.data) == ({"xdp": XDP_PASS, "tc": TC_ACT_OK, "out": TC_ACT_OK}[hook],
                                              bytes(unknown))


# ---------------------------------------------------------------- counters, and a sweep

def test_frontend_and_backend_counters_of_flows_from_outside(node):
    from ebpflb.dataplane.percpu import read_flow_stats

    def counters():
        return (read_flow_stats(node.bpf, "lb4_svc_stats").get(svc_id),
                read_flow_stats(node.bpf, "lb4_backend_stats").get(backend_id))

    snap = node.program(endpoints=[(REMOTE_BE, "node-1")])
    svc_id = snap[SERVICES][SvcKey(*NODEPORT, 6)].svc_id
    syn = tcp(CLIENT, 40000, *NODEPORT, payload=b"x" * 10)
    assert node.run("xdp", syn).retval == XDP_TX
    backend_id = node.ct(CLIENT, 40000, *NODEPORT, 6).backend_id
    port = node.ct(CLIENT, 40000, *NODEPORT, 6).nat2_port
    before = counters()
    synack = tcp(REMOTE_BE, 8080, NODE_IP, port, "SA", ack=1011, payload=b"y" * 30,
                 mac=(GW_MAC, NODE_MAC))
    assert node.run("xdp", synack).retval == XDP_TX
    ack = tcp(CLIENT, 40000, *NODEPORT, "A", seq=1011, ack=5001)
    assert node.run("tc", ack).retval == TC_ACT_REDIRECT
    after = counters()
    for b, a in zip(before, after):
        assert (a.packets_in - b.packets_in, a.bytes_in - b.bytes_in, a.packets_out - b.packets_out,
                a.bytes_out - b.bytes_out, a.conns - b.conns) == (1, len(ack), 1, len(synack), 0)
    assert before[0].conns >= 1 and before[0].bytes_in >= len(syn)


@pytest.mark.parametrize("hook", HOOKS)
def test_sweep_of_remote_flows_keeps_every_checksum_right(node, hook):
    """Many flows with varied addresses, ports, IP ids, TTLs, TOS and payloads (so the checksums
    take many values, carries included) through SNAT and back: exact bytes every time."""
    import random

    rnd = random.Random(5)
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    for _ in range(150):
        node.dp.clear_conntrack()
        fe_ip, fe_port, proto = rnd.choice([(*NODEPORT, 6), (*LOADBALANCER, 6), (*UDP_NODEPORT, 17),
                                            (LB_IP, 53, 17)])
        client = CLIENT if rnd.random() < 0.5 else CLIENT_NO_NEIGH
        sport = rnd.randrange(1, 65536)
        payload = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 41)))
        ip = dict(ttl=rnd.randrange(2, 256), id=rnd.randrange(65536), tos=rnd.randrange(256))
        if proto == 6:
            l4 = TCP(sport=sport, dport=fe_port, flags="S", seq=rnd.randrange(1 << 32))
        else:
            l4 = UDP(sport=sport, dport=fe_port, chksum=0 if rnd.random() < 0.2 else None)
        fwd = Ether(bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=client, dst=fe_ip, **ip)
                          / l4 / Raw(payload)))
        port = node.snat_port(client, sport, fe_ip, fe_port, proto)
        res = node.run(hook, fwd)
        assert res.retval == FORWARD[hook]
        assert res.data == rewritten(fwd, src=NODE_IP, sport=port, dst=REMOTE_BE, ttl_dec=1,
                                     dport=8080 if proto == 6 else 5353,
                                     macs=(NODE_MAC, GW_MAC) if hook == "xdp" else None)
        # The reply, to a client with no neighbour at XDP: TC finishes it.
        ip = dict(ttl=rnd.randrange(2, 256), id=rnd.randrange(65536), tos=rnd.randrange(256))
        back = l4.copy()
        back.sport, back.dport = (8080 if proto == 6 else 5353), port
        if proto == 6:
            back.flags, back.ack = "SA", l4.seq + 1
        reply = Ether(bytes(Ether(src=GW_MAC, dst=NODE_MAC) / IP(src=REMOTE_BE, dst=NODE_IP, **ip)
                            / back / Raw(payload[::-1])))
        res = node.run(hook, reply)
        if hook == "xdp" and client == CLIENT_NO_NEIGH:
            assert (res.retval, res.data) == (XDP_PASS, bytes(reply))
            continue
        assert res.retval == FORWARD[hook]
        assert res.data == rewritten(reply, src=fe_ip, sport=fe_port, dst=client, dport=sport,
                                     ttl_dec=1, macs=(NODE_MAC, CLIENT_MAC) if hook == "xdp" else None)


def _id_for_output_ip_checksum(want, src, dst, ttl, tot_len, proto):
    """The IP id that gives the rewritten header (these addresses, this TTL) checksum `want`:
    the checksum is ~(S + id) in one's complement, S the sum of the header with id 0."""
    from scapy.utils import checksum

    def header(ident):
        return bytes(IP(src=src, dst=dst, ttl=ttl, id=ident, len=tot_len, proto=proto, chksum=0))

    s0 = 0xffff ^ checksum(header(0))
    target = 0xffff ^ want
    ident = target - s0 if target >= s0 else target - s0 + 0xffff
    assert checksum(header(ident)) == want
    return ident


@pytest.mark.parametrize("want", [0x0000, 0x0001, 0x0080, 0x0100], ids=lambda w: f"{w:#06x}")
@pytest.mark.parametrize("hook", HOOKS)
def test_ttl_decrement_where_the_ip_checksum_carries(node, hook, want):
    """The TTL decrement adds 0x0100 to the header checksum; for checksums from 0xfeff up the
    addition wraps and needs the end-around carry (RFC 1141). The ids are chosen so the output's
    checksum lands on each side of that edge."""
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    tot_len = 20 + 20
    ident = _id_for_output_ip_checksum(want, NODE_IP, REMOTE_BE, 63, tot_len, 6)
    syn = tcp(CLIENT, 40000, *NODEPORT)
    syn[IP].id = ident
    port = node.snat_port(CLIENT, 40000, *NODEPORT, 6)
    res = node.run(hook, syn)
    assert res.retval == FORWARD[hook]
    assert Ether(res.data)[IP].chksum == want
    assert res.data == rewritten(syn, src=NODE_IP, sport=port, dst=REMOTE_BE, dport=8080, ttl_dec=1,
                                 macs=(NODE_MAC, GW_MAC) if hook == "xdp" else None)


def test_snat_ports_in_use_are_skipped_up_to_the_probe_limit(node):
    """Sixteen probes from the flow's hash: all taken by live flows to the same backend -> the
    flow is dropped (snat_exhausted); once the first one has expired, its port is taken again."""
    import time

    from ebpflb.dataplane.bcc_maps import port_to_be16

    node.program(endpoints=[(REMOTE_BE, "node-1")])
    ct4 = node.bpf[b"ct4"]
    start = node.snat_port(CLIENT, 40001, *UDP_NODEPORT, 17)
    span = node.snat_max - node.snat_min + 1
    ports = [node.snat_min + (start - node.snat_min + i) % span for i in range(16)]

    def occupy(port, last_seen_ns):
        # The reply entry of another client's flow through this port (what ct4_create_snat writes).
        key = ct4.Key(saddr=ip_to_be32(REMOTE_BE), daddr=ip_to_be32(NODE_IP), sport=port_to_be16(5353),
                      dport=port_to_be16(port), proto=17, dir=1, pad=0)
        ct4[key] = ct4.Leaf(created_ns=last_seen_ns, last_seen_ns=last_seen_ns,
                            nat_addr=ip_to_be32(NODE_IP), nat_port=port_to_be16(30053),
                            flags=CT_F_EXTERNAL | CT_F_SNAT, nat2_addr=ip_to_be32("192.168.200.99"),
                            nat2_port=port_to_be16(port))

    now = time.monotonic_ns()  # bpf_ktime_get_ns is CLOCK_MONOTONIC
    for port in ports:
        occupy(port, now)
    dgram = udp(CLIENT, 40001, *UDP_NODEPORT)
    for hook in HOOKS:
        before = node.stats()
        res = node.run(hook, dgram)
        assert res.retval == DROP[hook]
        assert delta(before, node.stats()) == {v(hook, "drop"): 1, "snat_exhausted": 1}
        assert node.ct(CLIENT, 40001, *UDP_NODEPORT, 17) is None
    occupy(ports[0], 1)  # idle since boot: expired
    res = node.run("tc", dgram)
    assert res.retval == TC_ACT_REDIRECT
    assert Ether(res.data)[UDP].sport == ports[0]
    assert node.ct(REMOTE_BE, 5353, NODE_IP, ports[0], 17, reply=True).nat2_addr == CLIENT



@pytest.mark.parametrize("frontend", FRONTENDS, ids=list(FRONTENDS))
def test_pods_reach_a_local_policy_frontend_as_a_cluster_one(node, frontend):
    """kube-proxy: a pod's traffic to the NodePort or load balancer IP of an
    externalTrafficPolicy Local Service goes to every endpoint ("pod traffic for ... external
    destinations" -> the cluster chain); only traffic from outside stays on the node."""
    node.program(endpoints=[(REMOTE_BE, "node-1")], etp="Local")
    pkt = tcp(POD_CLIENT, 40000, *FRONTENDS[frontend])
    res = testrun.test_run(node.dp.progs.from_pod.fd, bytes(pkt))
    assert res.retval == TC_ACT_OK, Ether(res.data).summary()
    assert res.data == rewritten(pkt, dst=REMOTE_BE, dport=8080)


@pytest.mark.parametrize("where", ["local", "remote"])
@pytest.mark.parametrize("hook", HOOKS)
def test_ethernet_padding_is_kept_and_ignored(node, hook, where):
    """A minimum-size frame carries padding after the IP packet: it is no part of the packet, so
    the rewrite leaves it as it was and the checksums stay those of the packet alone."""
    backend = LOCAL_BE if where == "local" else REMOTE_BE
    node.program(endpoints=[(backend, "node-0" if where == "local" else "node-1")])
    dgram = udp(CLIENT, 40001, *UDP_NODEPORT, payload=b"q")
    padding = b"\xaa" * (60 - len(dgram))
    res = node.run(hook, bytes(dgram) + padding)
    if where == "local":
        exp = rewritten(dgram, dst=LOCAL_BE, dport=5353)
        assert res.retval == PASS[hook]
    else:
        port = node.snat_port(CLIENT, 40001, *UDP_NODEPORT, 17)
        exp = rewritten(dgram, src=NODE_IP, sport=port, dst=REMOTE_BE, dport=5353, ttl_dec=1,
                        macs=(NODE_MAC, GW_MAC) if hook == "xdp" else None)
        assert res.retval == FORWARD[hook]
    assert res.data == exp + padding


def test_snat_ports_of_closed_flows_are_held_then_reused_when_nothing_else_is_free(node):
    """A closed TCP flow keeps its SNAT port through the backend's TIME_WAIT (tcp_time_wait),
    past tcp_close: a new flow probes on to a free port. Only when all sixteen probes find a
    taken port is the first port held by a closed flow past tcp_close reused (snat_reuse), rather
    than dropping the flow; a closed flow younger than tcp_close is never taken."""
    import time

    from ebpflb.dataplane.bcc_maps import port_to_be16

    node.program(endpoints=[(REMOTE_BE, "node-1")])
    ct4 = node.bpf[b"ct4"]
    start = node.snat_port(CLIENT, 40002, *NODEPORT, 6)
    span = node.snat_max - node.snat_min + 1
    ports = [node.snat_min + (start - node.snat_min + i) % span for i in range(16)]
    timeouts = node.dp.config.ct_timeouts

    def occupy(port, idle_s, closing):
        key = ct4.Key(saddr=ip_to_be32(REMOTE_BE), daddr=ip_to_be32(NODE_IP), sport=port_to_be16(8080),
                      dport=port_to_be16(port), proto=6, dir=1, pad=0)
        seen = time.monotonic_ns() - int(idle_s * 1e9)
        ct4[key] = ct4.Leaf(created_ns=seen, last_seen_ns=seen, nat_addr=ip_to_be32(NODE_IP),
                            nat_port=port_to_be16(30080),
                            flags=CT_F_EXTERNAL | CT_F_SNAT | 0x1 | (0x2 if closing else 0),
                            nat2_addr=ip_to_be32("192.168.200.99"), nat2_port=port_to_be16(port))

    in_time_wait = timeouts.tcp_close + 5  # past tcp_close, well within tcp_time_wait
    assert in_time_wait < timeouts.tcp_time_wait
    occupy(ports[0], in_time_wait, closing=True)
    syn = tcp(CLIENT, 40002, *NODEPORT)
    res = node.run("tc", syn)
    assert res.retval == FORWARD["tc"]
    assert Ether(res.data)[TCP].sport == ports[1], "the port in TIME_WAIT was not skipped"
    node.dp.clear_conntrack()
    occupy(ports[0], timeouts.tcp_close / 2, closing=True)  # too fresh to reuse
    occupy(ports[1], in_time_wait, closing=True)
    for port in ports[2:]:
        occupy(port, 0, closing=False)
    before = node.stats()
    res = node.run("tc", syn)
    assert res.retval == FORWARD["tc"]
    assert Ether(res.data)[TCP].sport == ports[1]
    assert delta(before, node.stats()) == {"snat_reuse": 1, "node_in/new": 1,
                                           "conntrack_insert": 1, "node_forward": 1}
    reply = node.ct(REMOTE_BE, 8080, NODE_IP, ports[1], 6, reply=True)
    assert reply.nat2_addr == CLIENT, "the old flow's reply entry was not replaced"


def test_stats_verdicts_shows_the_global_counters(node):
    """`ebpflb stats --verdicts` reads the same per-CPU verdict counters the programs bump."""
    import json
    import subprocess
    import sys

    node.program(endpoints=[(LOCAL_BE, "node-0")])
    node.run("tc", tcp(CLIENT, 40000, CLUSTER_IP, 80))  # a ClusterIP from outside: dropped
    out = subprocess.run([sys.executable, "-m", "ebpflb.cli", "stats", "--verdicts", "-o", "json",
                          "--pin-dir", node.dp.config.pin_dir], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    counters = json.loads(out)
    flat = {**counters["drops"], **counters["events"],
            **{f"{hook}/{verdict}": n for hook, verdicts in counters["verdicts"].items()
               for verdict, n in verdicts.items()}}
    assert flat == node.stats() and counters["drops"]["external_clusterip"] >= 1
    assert counters["verdicts"]["node_in"]["drop"] >= 1
