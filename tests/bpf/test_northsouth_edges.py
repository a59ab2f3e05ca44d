"""North-south data path, its edges (the bench: tests/bpf/northsouth_env.py): traffic that is
not ours and malformed frames on every node hook, XDP without a neighbour entry (left untouched to
TC, which resolves it), generic XDP (local flows left to TC), and the edges of the remote path: a
second node device (XDP redirect instead of TX), IP options, a UDP checksum that must become
0xffff, TTL exhausted, TCP without state, spoofed sources, strangers on a SNAT port, a lost route,
ExternalIP frontends. Outputs are compared byte for byte with packets built independently by
scapy, and every checksum is verified by recomputing it."""
import subprocess
import sys

import pytest
from scapy.layers.inet import ICMP, IP, IPOption_EOL, IPOption_NOP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from ebpflb.dataplane.bcc_maps import read_conntrack
from ebpflb.manifests import parse_documents
from ebpflb.maps import SERVICES, SVC_F_DRAINING, SvcKey
from ebpflb.model import DesiredState, desired_state
from ebpflb.reconcile import reconcile

from .northsouth_env import (assert_checksums_valid, CLIENT, CLIENT2, CLIENT2_MAC, CLIENT_MAC,
                             CLIENT_NO_NEIGH, CLUSTER_IP, CT_F_EXTERNAL, CT_F_SNAT, delta, DROP,
                             FORWARD, GW, GW_MAC, HOOKS, LB_IP, LOCAL_BE, manifest, NODE2_DEV,
                             NODE2_MAC, NODE_DEV, NODE_IP, NODE_MAC, NODEPORT, PASS, REMOTE_BE,
                             REMOTE_BE_NO_NEIGH, rewritten, TC_ACT_OK, TC_ACT_REDIRECT, tcp, udp,
                             UDP_NODEPORT, v, XDP_PASS, XDP_REDIRECT, XDP_TX)
# The bench's fixtures, used as test arguments.
from .northsouth_env import fresh_conntrack, node  # noqa: F401

pytestmark = pytest.mark.bpf


# ---------------------------------------------------------------- 7. not ours, malformed

def _bad_ip(**fields):
    return bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=NODE_IP, **fields)
                 / TCP(sport=40000, dport=30080))


_SYN = bytes(tcp(CLIENT, 40000, *NODEPORT))
_E = Ether(src=CLIENT_MAC, dst=NODE_MAC)

# (description, frame, the verdict each hook counts [+ an event lb4_node_in counts])
PASS_CASES = [
    ("TCP to the node address on a port that is no frontend", tcp(CLIENT, 40000, NODE_IP, 22), "pass"),
    ("UDP to a TCP node port", udp(CLIENT, 40000, NODE_IP, 30080), "pass"),
    ("TCP to the LB address on a port that is no frontend", tcp(CLIENT, 40000, LB_IP, 443), "pass"),
    ("TCP to a pod address (already DNATed by XDP)", tcp(CLIENT, 40000, LOCAL_BE, 8080), "pass"),
    ("TCP into the SNAT range without a conntrack entry",
     tcp(REMOTE_BE, 8080, NODE_IP, 12000, "SA", mac=(GW_MAC, NODE_MAC)), "pass"),
    ("TCP from a client into the SNAT range", tcp(CLIENT, 40000, NODE_IP, 1024), "pass"),
    ("UDP to the top of the SNAT range without a conntrack entry",
     udp(REMOTE_BE, 5353, NODE_IP, 29999, mac=(GW_MAC, NODE_MAC)), "pass"),
    ("TCP just below the SNAT range", tcp(REMOTE_BE, 8080, NODE_IP, 1023, "SA"), "pass"),
    ("TCP just above the SNAT range", tcp(REMOTE_BE, 8080, NODE_IP, 30000, "SA"), "pass"),
    ("ICMP echo to the node port address", _E / IP(src=CLIENT, dst=NODE_IP) / ICMP(), "pass"),
    ("ARP for the LB address", _E / ARP(psrc=CLIENT, pdst=LB_IP), "pass"),
    ("IPv6", _E / IPv6(dst="fd00::1") / TCP(dport=30080), "pass"),
    ("non-first fragment to a frontend, its first never seen",
     _E / IP(src=CLIENT, dst=NODE_IP, frag=10, proto=6) / Raw(b"x" * 16), "pass+frag_miss"),
    ("IPv4 header only, no L4 header", _SYN[:14 + 20], "malformed"),
    ("TCP header cut after 10 bytes", _SYN[:14 + 20 + 10], "malformed"),
    ("IPv4 options past the end of the frame",
     bytes(_E / IP(src=CLIENT, dst=NODE_IP, ihl=15, proto=6))[:14 + 20] + b"\0" * 4, "malformed"),
    ("IHL below 5", _bad_ip(ihl=4), "malformed"),
    ("total length larger than the frame", _bad_ip(len=400), "malformed"),
    ("IPv4 version 6 in an IPv4 frame", _bad_ip(version=6), "malformed"),
    ("TCP data offset below 5",
     _E / IP(src=CLIENT, dst=NODE_IP) / TCP(sport=40000, dport=30080, dataofs=4), "malformed"),
    ("UDP length below 8", _E / IP(src=CLIENT, dst=NODE_IP) / UDP(sport=40000, dport=30053, len=4),
     "malformed"),
]


@pytest.mark.parametrize("desc,pkt,counter", PASS_CASES, ids=[c[0] for c in PASS_CASES])
@pytest.mark.parametrize("hook", HOOKS)
def test_not_ours_and_malformed_pass_untouched(node, hook, desc, pkt, counter):
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    raw = bytes(pkt)
    verdict, _, event = counter.partition("+")
    before = node.stats()
    res = node.run(hook, raw)
    assert (res.retval, res.data) == (PASS[hook], raw)
    events = {event: 1} if event and hook == "tc" else {}
    assert delta(before, node.stats()) == {v(hook, verdict): 1, **events}
    before = node.stats()
    res = node.run("out", raw)
    assert (res.retval, res.data) == (TC_ACT_OK, raw)
    assert delta(before, node.stats()) == {v("out", verdict): 1}
    assert node.ct_count() == 0


@pytest.mark.parametrize("raw", [_SYN[:14], _SYN[:14 + 10], _SYN[:14 + 19]],
                         ids=["Ethernet header only", "10 bytes of IPv4", "19 bytes of IPv4"])
def test_xdp_short_frames_pass_untouched(node, raw):
    # TC cannot be fed these (the kernel refuses an IPv4 skb shorter than its header); XDP can.
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    res = node.run("xdp", raw)
    assert (res.retval, res.data) == (XDP_PASS, raw)


# ---------------------------------------------------------------- 8. no neighbour entry

def test_xdp_without_a_neighbour_leaves_the_flow_to_tc(node):
    node.program(endpoints=[(REMOTE_BE_NO_NEIGH, "node-2")])
    syn = tcp(CLIENT, 40000, *NODEPORT)
    before = node.stats()
    res = node.run("xdp", syn)
    assert (res.retval, res.data) == (XDP_PASS, bytes(syn))
    assert delta(before, node.stats()) == {"node_xdp/to_tc": 1}
    assert node.ct_count() == 0  # TC creates the flow, once

    port = node.snat_port(CLIENT, 40000, *NODEPORT, 6)
    res = node.run("tc", syn)
    assert res.retval == TC_ACT_REDIRECT  # redirect_neigh resolves the next hop
    assert res.data == rewritten(syn, src=NODE_IP, sport=port, dst=REMOTE_BE_NO_NEIGH,
                                 dport=8080, ttl_dec=1)
    assert_checksums_valid(res.data)
    assert node.ct(CLIENT, 40000, *NODEPORT, 6).nat2_port == port

    # Later packets of the flow: still no neighbour for XDP, untouched and not tracked there.
    ack = tcp(CLIENT, 40000, *NODEPORT, "A", seq=1001, ack=5001)
    res = node.run("xdp", ack)
    assert (res.retval, res.data) == (XDP_PASS, bytes(ack))
    assert node.ct(CLIENT, 40000, *NODEPORT, 6).flags == CT_F_EXTERNAL | CT_F_SNAT
    res = node.run("tc", ack)
    assert res.retval == TC_ACT_REDIRECT
    assert res.data == rewritten(ack, src=NODE_IP, sport=port, dst=REMOTE_BE_NO_NEIGH,
                                 dport=8080, ttl_dec=1)


def test_xdp_without_a_neighbour_for_the_client_leaves_the_reply_to_tc(node):
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    syn = tcp(CLIENT_NO_NEIGH, 40000, *NODEPORT)
    port = node.snat_port(CLIENT_NO_NEIGH, 40000, *NODEPORT, 6)
    res = node.run("xdp", syn)  # towards the backend the neighbour is known
    assert res.retval == XDP_TX
    assert Ether(res.data)[TCP].sport == port
    synack = tcp(REMOTE_BE, 8080, NODE_IP, port, "SA", seq=5000, ack=1001, ttl=63,
                 mac=(GW_MAC, NODE_MAC))
    before = node.stats()
    res = node.run("xdp", synack)
    assert (res.retval, res.data) == (XDP_PASS, bytes(synack))
    assert delta(before, node.stats()) == {"node_xdp/to_tc": 1}
    res = node.run("tc", synack)
    assert res.retval == TC_ACT_REDIRECT
    assert res.data == rewritten(synack, src=NODE_IP, sport=30080, dst=CLIENT_NO_NEIGH,
                                 dport=40000, ttl_dec=1)
    assert_checksums_valid(res.data)


# ---------------------------------------------------------------- 9. generic XDP

def test_generic_xdp_leaves_local_flows_to_tc(node):
    """Generic XDP cannot update skb->csum, so a packet it rewrote and passed up would reach a
    CHECKSUM_COMPLETE device's stack with a stale sum. Its build of the program (lb4_xdp_generic)
    leaves flows to local backends untouched to TC (new ones before conntrack, known ones before
    tracking), and TC translates them once, with its csum helpers."""
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    syn = tcp(CLIENT, 40000, *NODEPORT)
    before = node.stats()
    res = node.run("xdp-generic", syn)
    assert (res.retval, res.data) == (XDP_PASS, bytes(syn))
    assert delta(before, node.stats()) == {"node_xdp/to_tc": 1}
    assert node.ct_count() == 0
    res = node.run("tc", syn)
    assert (res.retval, res.data) == (TC_ACT_OK, rewritten(syn, dst=LOCAL_BE, dport=8080))
    assert node.ct_count() == 2

    ack = tcp(CLIENT, 40000, *NODEPORT, "A", seq=1001, ack=5001)
    res = node.run("xdp-generic", ack)
    assert (res.retval, res.data) == (XDP_PASS, bytes(ack))
    assert node.ct(CLIENT, 40000, *NODEPORT, 6).half_open  # not tracked by XDP
    res = node.run("tc", ack)
    assert (res.retval, res.data) == (TC_ACT_OK, rewritten(ack, dst=LOCAL_BE, dport=8080))
    assert not node.ct(CLIENT, 40000, *NODEPORT, 6).half_open


def test_generic_xdp_still_finishes_remote_flows(node):
    """A flow XDP sends back out (XDP_TX) never goes up the stack, so generic XDP keeps it."""
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    syn = tcp(CLIENT, 40000, *NODEPORT)
    port = node.snat_port(CLIENT, 40000, *NODEPORT, 6)
    res = node.run("xdp-generic", syn)
    assert res.retval == XDP_TX
    assert res.data == rewritten(syn, src=NODE_IP, sport=port, dst=REMOTE_BE, dport=8080,
                                 ttl_dec=1, macs=(NODE_MAC, GW_MAC))


@pytest.mark.parametrize("hook", HOOKS)
def test_a_removed_node_port_drains(node, hook):
    """The Service goes while a connection from outside is open: the NodePort drains, so the
    connection goes on at XDP and TC, and a new one passes untouched (the node's own stack
    answers it, as for any port without a frontend). Fails on 8c0200c."""
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    syn = tcp(CLIENT, 40000, *NODEPORT)
    assert node.run(hook, syn).retval == PASS[hook]
    reconcile(DesiredState(frontends={}, skipped=()), node.dp.writer, node.dp.config.map_limits)
    draining = {k for k, v in node.dp.writer.dump(SERVICES).items() if v.flags & SVC_F_DRAINING}
    assert draining == {SvcKey(*NODEPORT, 6)}  # the only frontend with a flow
    ack = tcp(CLIENT, 40000, *NODEPORT, "A", seq=1001, ack=5001)
    res = node.run(hook, ack)
    assert (res.retval, res.data) == (PASS[hook], rewritten(ack, dst=LOCAL_BE, dport=8080))
    other = tcp(CLIENT, 40001, *NODEPORT)
    res = node.run(hook, other)
    assert (res.retval, res.data) == (PASS[hook], bytes(other))


def test_no_route_to_the_backend_is_not_remote(node):
    """The FIB decides: a backend the node has no route for is not behind a node device, so it
    is DNATed (no SNAT) and handed to the stack, like a local one."""
    node.program(endpoints=[("10.244.9.11", "node-9")])
    pkt = tcp(CLIENT, 40000, *NODEPORT)
    for hook in HOOKS:
        node.dp.clear_conntrack()
        res = node.run(hook, pkt)
        assert res.retval == PASS[hook]
        assert res.data == rewritten(pkt, dst="10.244.9.11", dport=8080)
        assert node.ct(CLIENT, 40000, *NODEPORT, 6).flags == CT_F_EXTERNAL


def test_conntrack_view_of_a_snat_flow(node):
    """read_conntrack (what `ebpflb conntrack` shows) lists both entries of a SNAT flow."""
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    node.run("tc", tcp(CLIENT, 40000, *NODEPORT))
    port = node.snat_port(CLIENT, 40000, *NODEPORT, 6)
    entries = {(e.direction, e.saddr, e.sport, e.daddr, e.dport, e.nat_addr, e.nat_port,
                e.nat2_addr, e.nat2_port) for e in read_conntrack(node.bpf)}
    assert entries == {
        ("forward", CLIENT, 40000, NODE_IP, 30080, REMOTE_BE, 8080, NODE_IP, port),
        ("reply", REMOTE_BE, 8080, NODE_IP, port, NODE_IP, 30080, CLIENT, 40000),
    }


def explain_cli(node, *args):
    """`ebpflb explain ... -o json` in the node's namespace (its routes and devices)."""
    import json

    r = subprocess.run([sys.executable, "-m", "ebpflb.cli", "explain", *args, "-o", "json",
                        "--netns", node.ns, "--pin-dir", node.dp.config.pin_dir],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_explain_cli_follows_the_program_on_a_node_device(node):
    """`ebpflb explain --from-outside` looks up the route to each backend as the program does: a
    backend on another node is shown SNATed to the node device's address and forwarded, with the
    port the program will take; `--tcp-flags A` explains a packet without state (dropped: no
    SNAT port for the replies); an existing flow is shown as the program will treat it."""
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    port = node.snat_port(CLIENT, 40000, *NODEPORT, 6)
    flow = (f"{CLIENT}:40000", f"{NODE_IP}:30080", "tcp", "--from-outside", "--device", NODE_DEV)
    e = explain_cli(node, *flow)
    assert (e["verdict"], e["backend"], e["source"]) == ("forward", f"{REMOTE_BE}:8080",
                                                         f"{NODE_IP}:{port}"), e["reason"]
    assert explain_cli(node, *flow, "--tcp-flags", "A")["verdict"] == "drop"
    node.run("tc", tcp(CLIENT, 40000, *NODEPORT))
    e = explain_cli(node, *flow, "--tcp-flags", "A")
    assert (e["verdict"], e["source"]) == ("forward", f"{NODE_IP}:{port}"), e["reason"]
    r = subprocess.run([sys.executable, "-m", "ebpflb.cli", "explain", *flow[:3], "--device",
                        "nosuch0", "--netns", node.ns, "--pin-dir", node.dp.config.pin_dir],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--device" in r.stderr and "nosuch0" in r.stderr, r.stderr


# ---------------------------------------------------------------- more edges of the remote path

@pytest.mark.parametrize("hook", HOOKS)
def test_backend_behind_another_node_device_leaves_through_it(node, hook):
    """Client behind node1, backend routed through node0: SNAT to node0's address, out of node0
    (XDP: redirect, not TX); the reply goes back out of node1 with node1's MAC."""
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    syn = tcp(CLIENT2, 40000, *NODEPORT, mac=(CLIENT2_MAC, NODE2_MAC))
    port = node.snat_port(CLIENT2, 40000, *NODEPORT, 6)
    res = node.run(hook, syn, dev=NODE2_DEV)
    assert res.retval == (XDP_REDIRECT if hook == "xdp" else TC_ACT_REDIRECT)
    assert res.data == rewritten(syn, src=NODE_IP, sport=port, dst=REMOTE_BE, dport=8080, ttl_dec=1,
                                 macs=(NODE_MAC, GW_MAC) if hook == "xdp" else None)
    synack = tcp(REMOTE_BE, 8080, NODE_IP, port, "SA", ack=1001, mac=(GW_MAC, NODE_MAC))
    res = node.run(hook, synack)
    assert res.retval == (XDP_REDIRECT if hook == "xdp" else TC_ACT_REDIRECT)
    assert res.data == rewritten(synack, src=NODE_IP, sport=30080, dst=CLIENT2, dport=40000,
                                 ttl_dec=1, macs=(NODE2_MAC, CLIENT2_MAC) if hook == "xdp" else None)
    assert_checksums_valid(res.data)


@pytest.mark.parametrize("where", ["local", "remote"])
@pytest.mark.parametrize("hook", HOOKS)
def test_ip_options_are_kept_and_checksums_stay_valid(node, hook, where):
    backend = LOCAL_BE if where == "local" else REMOTE_BE
    node.program(endpoints=[(backend, "node-0" if where == "local" else "node-1")])
    syn = (Ether(src=CLIENT_MAC, dst=NODE_MAC)
           / IP(src=CLIENT, dst=NODE_IP, ttl=64, id=7,
                options=[IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_EOL()])
           / TCP(sport=40000, dport=30080, flags="S", seq=1000) / Raw(b"data"))
    syn = Ether(bytes(syn))
    assert syn[IP].ihl == 6
    res = node.run(hook, syn)
    if where == "local":
        assert res.retval == PASS[hook]
        assert res.data == rewritten(syn, dst=LOCAL_BE, dport=8080)
    else:
        port = node.snat_port(CLIENT, 40000, *NODEPORT, 6)
        assert res.retval == FORWARD[hook]
        assert res.data == rewritten(syn, src=NODE_IP, sport=port, dst=REMOTE_BE, dport=8080,
                                     ttl_dec=1, macs=(NODE_MAC, GW_MAC) if hook == "xdp" else None)
    assert_checksums_valid(res.data)


def _udp_summing_to_zero(src, sport, dst, dport, out_src, out_sport, out_dst, out_dport, mac):
    """A datagram whose checksum, once rewritten to the out_* addresses and ports, computes to 0
    and must be sent as 0xffff (0 would mean "no checksum"). Its first payload word is the
    checksum the rewritten datagram has with that word 0: adding ~sum to sum makes 0xffff."""
    def out(word):
        return IP(bytes(IP(src=out_src, dst=out_dst) / UDP(sport=out_sport, dport=out_dport)
                        / Raw(word.to_bytes(2, "big") + b"zero")))[UDP].chksum
    word = out(0)
    assert out(word) == 0xffff  # scapy sends a computed 0 as 0xffff
    return udp(src, sport, dst, dport, payload=word.to_bytes(2, "big") + b"zero", mac=mac)


@pytest.mark.parametrize("where", ["local", "remote"])
@pytest.mark.parametrize("hook", HOOKS)
def test_udp_checksum_that_becomes_zero_is_sent_as_ffff(node, hook, where):
    fe_ip, fe_port = UDP_NODEPORT
    if where == "local":
        node.program(endpoints=[(LOCAL_BE, "node-0")])
        dgram = _udp_summing_to_zero(CLIENT, 40002, fe_ip, fe_port, CLIENT, 40002, LOCAL_BE, 5353,
                                     (CLIENT_MAC, NODE_MAC))
    else:
        node.program(endpoints=[(REMOTE_BE, "node-1")])
        port = node.snat_port(CLIENT, 40002, fe_ip, fe_port, 17)
        dgram = _udp_summing_to_zero(CLIENT, 40002, fe_ip, fe_port, NODE_IP, port, REMOTE_BE, 5353,
                                     (CLIENT_MAC, NODE_MAC))
    assert dgram[UDP].chksum is None and Ether(bytes(dgram))[UDP].chksum not in (0, 0xffff)
    res = node.run(hook, dgram)
    assert res.retval == (PASS if where == "local" else FORWARD)[hook]
    assert Ether(res.data)[UDP].chksum == 0xffff
    assert_checksums_valid(res.data)


@pytest.mark.parametrize("hook", HOOKS)
def test_ttl_exhausted_on_the_way_to_another_node_is_dropped(node, hook):
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    before = node.stats()
    res = node.run(hook, tcp(CLIENT, 40000, *NODEPORT, ttl=1))
    assert res.retval == DROP[hook]
    assert delta(before, node.stats()) == {v(hook, "drop"): 1, "forward_fail": 1,
                                           "conntrack_insert": 1}


@pytest.mark.parametrize("hook", HOOKS)
def test_tcp_without_state_local_is_forwarded_remote_is_dropped(node, hook):
    ack = tcp(CLIENT, 40000, *NODEPORT, "A", seq=1001, ack=5001)
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    before = node.stats()
    res = node.run(hook, ack)
    assert res.retval == PASS[hook]
    assert res.data == rewritten(ack, dst=LOCAL_BE, dport=8080)
    assert delta(before, node.stats()) == {v(hook, "stateless"): 1}
    assert node.ct_count() == 0
    # Towards another node there is no SNAT port without state: dropped.
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    before = node.stats()
    res = node.run(hook, ack)
    assert res.retval == DROP[hook]
    assert delta(before, node.stats()) == {v(hook, "drop"): 1, "tcp_no_state": 1}
    assert node.ct_count() == 0


@pytest.mark.parametrize("src", ["127.0.0.1", CLUSTER_IP, NODE_IP],
                         ids=["loopback", "a VIP", "the frontend itself"])
@pytest.mark.parametrize("hook", HOOKS)
def test_new_flows_from_bad_sources_are_dropped(node, hook, src):
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    before = node.stats()
    res = node.run(hook, tcp(src, 40000, *NODEPORT))
    assert res.retval == DROP[hook]
    assert delta(before, node.stats()) == {v(hook, "drop"): 1, "bad_source": 1}
    assert node.ct_count() == 0


@pytest.mark.parametrize("hook", HOOKS)
def test_only_the_backend_reaches_a_snat_port(node, hook):
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    node.run(hook, tcp(CLIENT, 40000, *NODEPORT))
    port = node.ct(CLIENT, 40000, *NODEPORT, 6).nat2_port
    for stranger in (tcp(CLIENT, 8080, NODE_IP, port, "SA"),  # someone else, same ports
                     tcp(REMOTE_BE, 8081, NODE_IP, port, "SA", mac=(GW_MAC, NODE_MAC)),
                     udp(REMOTE_BE, 8080, NODE_IP, port, mac=(GW_MAC, NODE_MAC))):
        res = node.run(hook, stranger)
        assert (res.retval, res.data) == (PASS[hook], bytes(stranger))


@pytest.mark.parametrize("hook", HOOKS)
def test_established_snat_flow_without_a_route_is_dropped(node, hook):
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    assert node.run(hook, tcp(CLIENT, 40000, *NODEPORT)).retval == FORWARD[hook]
    route = ["route", "10.244.1.0/24", "via", GW, "dev", NODE_DEV]
    subprocess.run(["ip", "-n", node.ns, *route[:1], "del", *route[1:]], check=True)
    try:
        before = node.stats()
        res = node.run(hook, tcp(CLIENT, 40000, *NODEPORT, "A", seq=1001, ack=5001))
        assert res.retval == DROP[hook]
        assert delta(before, node.stats()) == {v(hook, "drop"): 1, "forward_fail": 1}
    finally:
        subprocess.run(["ip", "-n", node.ns, *route[:1], "add", *route[1:]], check=True)


@pytest.mark.parametrize("hook", HOOKS)
def test_external_ip_frontend_is_reachable_from_outside(node, hook):
    text = manifest(endpoints=[(REMOTE_BE, "node-1")]).replace(
        "  externalTrafficPolicy:", "  externalIPs: [192.168.200.201]\n  externalTrafficPolicy:")
    m = parse_documents(text, "<test>")
    state = desired_state(m.services, m.slices, node_name="node-0", node_addresses=[NODE_IP],
                          external_ip_allow=["192.168.200.192/26"])
    reconcile(state, node.dp.writer, node.dp.config.map_limits)
    syn = tcp(CLIENT, 40000, "192.168.200.201", 80)
    port = node.snat_port(CLIENT, 40000, "192.168.200.201", 80, 6)
    res = node.run(hook, syn)
    assert res.retval == FORWARD[hook]
    assert res.data == rewritten(syn, src=NODE_IP, sport=port, dst=REMOTE_BE, dport=8080,
                                 ttl_dec=1, macs=(NODE_MAC, GW_MAC) if hook == "xdp" else None)


