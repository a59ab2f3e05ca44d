"""Flows taken over from kube-proxy, in the real programs (BPF_PROG_TEST_RUN): a flow imported
from netfilter's conntrack passes untouched while netfilter translates it, is dropped while it is
handed over, and is then translated by the data path to the backend netfilter chose (not the one
the hash would pick); while a takeover is under way, a mid-stream TCP packet of an unknown flow
is left to netfilter. The imports come from ebpflb.takeover.flows over the real maps; netfilter's
side is a callable here (tests/lab/test_takeover.py runs the whole thing with real netfilter)."""
import dataclasses
import socket

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from ebpflb.apply import read_snapshot
from ebpflb.dataplane.takeover_maps import (NETFILTER_GRACE, NETFILTER_NEW, hand_over,
                                            netfilter_grace, set_netfilter_grace,
                                            set_netfilter_new, write_imports)
from ebpflb.dataplane.testrun import test_run as bpf_test_run
from ebpflb.explain import ConntrackView, CtKey, explain, parse_flow
from ebpflb.maps import CT_F_ESTABLISHED, CT_F_HANDOVER, CT_F_NETFILTER
from ebpflb.takeover.flows import SIDE_POD, NfFlow, plan_imports

from .conftest import TC_ACT_OK, TC_ACT_SHOT

pytestmark = pytest.mark.bpf

ETH = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
VIP, VIP6 = "10.96.41.1", "fd00:10:96::4101"
BACKENDS = ("10.244.0.41", "10.244.0.42", "10.244.0.43")
BACKENDS6 = ("fd00:10:244::41", "fd00:10:244::42", "fd00:10:244::43")
CLIENT, CLIENT6 = "10.244.0.2", "fd00:10:244::2"

MANIFEST = f"""
apiVersion: v1
kind: Service
metadata: {{name: kp, namespace: demo}}
spec:
  clusterIP: {VIP}
  clusterIPs: [{VIP}, "{VIP6}"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: 8080}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: kp-4, namespace: demo, labels: {{kubernetes.io/service-name: kp}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]
endpoints:
""" + "".join(f"- {{addresses: [{b}], conditions: {{ready: true}}}}\n" for b in BACKENDS) + f"""---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: kp-6, namespace: demo, labels: {{kubernetes.io/service-name: kp}}}}
addressType: IPv6
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]
endpoints:
""" + "".join(f"- {{addresses: [\"{b}\"], conditions: {{ready: true}}}}\n" for b in BACKENDS6)


@pytest.fixture
def dp(dataplane):
    dataplane.clear_conntrack()
    dataplane.program(MANIFEST)
    try:
        yield dataplane
    finally:
        set_netfilter_grace(dataplane.progs.bpf, False)
        set_netfilter_new(dataplane.progs.bpf, False)
        dataplane.program("")
        dataplane.clear_conntrack()


def packet(src, sport, dst, dport, flags="A", udp=False):
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    l4 = UDP(sport=sport, dport=dport) if udp else TCP(sport=sport, dport=dport, flags=flags)
    return bytes(Ether(**ETH) / ip / l4 / b"x")


def run(dp, prog, pkt):
    res = bpf_test_run(prog.fd, pkt)
    out = Ether(res.data) if res.data else None
    ip = out.getlayer(IPv6) or out.getlayer(IP) if out is not None else None
    return res.retval, ip


def hashed_backend(dp, client, sport, vip, proto="TCP"):
    """The backend the hash picks for this tuple (what a flow not imported would get)."""
    snap = read_snapshot(dp.writer)
    e = explain(snap, parse_flow(f"{client}:{sport}" if ":" not in client else f"[{client}]:{sport}",
                                 f"{vip}:80" if ":" not in vip else f"[{vip}]:80", proto, "S"))
    return e.backend.rpartition(":")[0].strip("[]")


def imported(dp, client, sport, vip, dport, backend, bport, proto=socket.IPPROTO_TCP):
    family = 6 if ":" in client else 4
    flow = NfFlow(family, proto, (client, sport, vip, dport), (backend, bport, client, sport),
                  tcp_state=3 if proto == socket.IPPROTO_TCP else None)
    plan = plan_imports([flow], read_snapshot(dp.writer), lambda _addr: SIDE_POD)
    assert len(plan.handed_over) == 1, plan
    assert write_imports(dp.progs.bpf, plan.imports) == 1
    return plan.imports[0]


@pytest.mark.parametrize("family", [4, 6])
def test_an_imported_flow_passes_then_is_held_then_goes_to_netfilters_backend(dp, family):
    client, vip, backends = (CLIENT, VIP, BACKENDS) if family == 4 else (CLIENT6, VIP6, BACKENDS6)
    sport = 41000
    hashed = hashed_backend(dp, client, sport, vip)
    chosen = next(b for b in backends if b != hashed)  # netfilter's pick, not the hash's
    imp = imported(dp, client, sport, vip, 80, chosen, 8080)
    before = dp.stats()

    # Netfilter translates it: the packet leaves the program as it came.
    pkt = packet(client, sport, vip, 80)
    rc, ip = run(dp, dp.progs.from_pod, pkt)
    assert rc == TC_ACT_OK and ip.dst == vip, "a flow netfilter translates was rewritten"
    assert dp.stats()["netfilter"] == before["netfilter"] + 1
    assert dp.stats()["from_pod/pass"] == before["from_pod/pass"] + 1

    # While its netfilter entry is being deleted, the client's packets are dropped.
    seen = []

    def delete_netfilter_entry():
        seen.append(run(dp, dp.progs.from_pod, pkt))

    assert hand_over(dp.progs.bpf, imp, delete_netfilter_entry)
    assert seen[0][0] == TC_ACT_SHOT, "a packet of a flow being handed over was not held"
    assert dp.stats()["handover"] == before["handover"] + 1

    # Then the data path translates it, to the backend netfilter chose.
    for flags in ("A", "PA"):
        rc, ip = run(dp, dp.progs.from_pod, packet(client, sport, vip, 80, flags))
        assert rc == TC_ACT_OK and ip.dst == chosen, (flags, ip.dst, chosen, hashed)
        assert ip[TCP].dport == 8080
    # And its replies come back from the frontend.
    rc, ip = run(dp, dp.progs.to_pod, packet(chosen, 8080, client, sport, "PA"))
    assert rc == TC_ACT_OK and ip.src == vip and ip[TCP].sport == 80


def test_an_imported_udp_flow_is_handed_over_to_its_backend(dp):
    sport = 41500
    chosen = BACKENDS[2]
    imp = imported(dp, CLIENT, sport, VIP, 53, chosen, 5353, socket.IPPROTO_UDP)
    pkt = packet(CLIENT, sport, VIP, 53, udp=True)
    rc, ip = run(dp, dp.progs.from_pod, pkt)
    assert rc == TC_ACT_OK and ip.dst == VIP
    assert hand_over(dp.progs.bpf, imp, lambda: None)
    rc, ip = run(dp, dp.progs.from_pod, pkt)
    assert rc == TC_ACT_OK and (ip.dst, ip[UDP].dport) == (chosen, 5353)


def test_a_failed_netfilter_delete_leaves_the_flow_with_netfilter(dp):
    sport = 41600
    imp = imported(dp, CLIENT, sport, VIP, 80, BACKENDS[0], 8080)

    def refuse():
        raise OSError(1, "Operation not permitted")

    with pytest.raises(OSError):
        hand_over(dp.progs.bpf, imp, refuse)
    rc, ip = run(dp, dp.progs.from_pod, packet(CLIENT, sport, VIP, 80))
    assert rc == TC_ACT_OK and ip.dst == VIP, "the flow was neither netfilter's nor held"


def test_during_a_takeover_unknown_mid_stream_tcp_is_left_to_netfilter(dp):
    bpf = dp.progs.bpf
    ack = packet(CLIENT, 42000, VIP, 80, "A")
    # No takeover: a mid-stream packet of a flow not known here is hashed to a backend.
    rc, ip = run(dp, dp.progs.from_pod, ack)
    assert ip.dst in BACKENDS
    set_netfilter_grace(bpf, True)
    assert netfilter_grace(bpf)
    before = dp.stats()
    rc, ip = run(dp, dp.progs.from_pod, packet(CLIENT, 42001, VIP, 80, "A"))
    assert rc == TC_ACT_OK and ip.dst == VIP, "an unknown mid-stream packet was not left alone"
    assert dp.stats()["netfilter"] == before["netfilter"] + 1
    # A SYN starts a flow of the data path's own, as always; and UDP is not held back.
    rc, ip = run(dp, dp.progs.from_pod, packet(CLIENT, 42002, VIP, 80, "S"))
    assert ip.dst in BACKENDS
    rc, ip = run(dp, dp.progs.from_pod, packet(CLIENT, 42003, VIP, 53, udp=True))
    assert ip.dst in BACKENDS
    set_netfilter_grace(bpf, False)
    rc, ip = run(dp, dp.progs.from_pod, packet(CLIENT, 42004, VIP, 80, "A"))
    assert ip.dst in BACKENDS


def test_explain_predicts_what_the_program_does_with_taken_over_flows(dp):
    """Parity: explain's verdict and counters for a netfilter flow, a held one and the grace."""
    snap = read_snapshot(dp.writer)
    flow = parse_flow(f"{CLIENT}:43000", f"{VIP}:80", "TCP", "A")
    fwd = CtKey(CLIENT, 43000, VIP, 80, socket.IPPROTO_TCP)
    netfilter = ConntrackView(f"{BACKENDS[1]}:8080", 0, 0.0, 0.0, None, CT_F_ESTABLISHED | CT_F_NETFILTER)
    held = dataclasses.replace(netfilter, flags=CT_F_ESTABLISHED | CT_F_NETFILTER | CT_F_HANDOVER)
    e = explain(snap, flow, ct_table={fwd: netfilter})
    assert (e.verdict, e.counted_as, e.counters) == ("pass", "from_pod/pass", ("netfilter",))
    e = explain(snap, flow, ct_table={fwd: held})
    assert (e.verdict, e.counted_as, e.counters) == ("drop", "from_pod/drop", ("handover",))
    e = explain(snap, flow, dp_flags=NETFILTER_GRACE)
    assert (e.verdict, e.counters) == ("pass", ("netfilter",))
    assert explain(snap, parse_flow(f"{CLIENT}:43001", f"{VIP}:80", "TCP", "S"),
                   dp_flags=NETFILTER_GRACE).verdict == "dnat"
    e = explain(snap, parse_flow(f"{CLIENT}:43001", f"{VIP}:80", "TCP", "S"), dp_flags=NETFILTER_NEW)
    assert (e.verdict, e.counters) == ("pass", ("netfilter",))
    assert explain(snap, flow).verdict == "dnat"
    # ... and the program agrees on the same three.
    imp = imported(dp, CLIENT, 43000, VIP, 80, BACKENDS[1], 8080)
    rc, ip = run(dp, dp.progs.from_pod, packet(CLIENT, 43000, VIP, 80))
    assert rc == TC_ACT_OK and ip.dst == VIP
    held_rc = []
    hand_over(dp.progs.bpf, imp, lambda: held_rc.append(
        run(dp, dp.progs.from_pod, packet(CLIENT, 43000, VIP, 80))[0]))
    assert held_rc == [TC_ACT_SHOT]


def test_during_a_hand_back_every_flow_not_known_here_is_left_to_netfilter(dp):
    bpf = dp.progs.bpf
    known = packet(CLIENT, 44000, VIP, 80, "S")
    rc, ip = run(dp, dp.progs.from_pod, known)
    backend = ip.dst
    assert backend in BACKENDS
    set_netfilter_new(bpf, True)
    for pkt in (packet(CLIENT, 44001, VIP, 80, "S"), packet(CLIENT, 44002, VIP, 80, "A"),
                packet(CLIENT, 44003, VIP, 53, udp=True)):
        rc, ip = run(dp, dp.progs.from_pod, pkt)
        assert rc == TC_ACT_OK and ip.dst == VIP, "a new flow was taken during a hand-back"
    # A flow the data path already has keeps going where it goes.
    rc, ip = run(dp, dp.progs.from_pod, packet(CLIENT, 44000, VIP, 80, "A"))
    assert ip.dst == backend


def test_a_flow_handed_back_is_held_then_left_to_netfilter(dp):
    from ebpflb.dataplane.bcc_maps import read_conntrack
    from ebpflb.dataplane.takeover_maps import hand_back
    from ebpflb.takeover.handback import plan_handback

    sport = 45000
    for flags in ("S", "A"):
        rc, ip = run(dp, dp.progs.from_pod, packet(CLIENT, sport, VIP, 80, flags))
    backend = ip.dst
    rc, ip = run(dp, dp.progs.to_pod, packet(backend, 8080, CLIENT, sport, "SA"))
    (flow,) = [f for f in plan_handback(read_conntrack(dp.progs.bpf)).flows
               if f.client == (CLIENT, sport)]
    assert (flow.frontend, flow.backend) == ((VIP, 80), (backend, 8080))
    held = []
    assert hand_back(dp.progs.bpf, flow, lambda: held.append(
        run(dp, dp.progs.from_pod, packet(CLIENT, sport, VIP, 80, "PA"))[0]))
    assert held == [TC_ACT_SHOT]
    rc, ip = run(dp, dp.progs.from_pod, packet(CLIENT, sport, VIP, 80, "PA"))
    assert rc == TC_ACT_OK and ip.dst == VIP, "a flow handed back was still translated"


def test_an_agent_starting_clears_what_a_takeover_or_hand_back_left_half_way(dp):
    from ebpflb.dataplane.takeover_maps import clear_dp_flags, dp_flags

    bpf = dp.progs.bpf
    set_netfilter_grace(bpf, True)
    set_netfilter_new(bpf, True)
    assert dp_flags(bpf) == NETFILTER_GRACE | NETFILTER_NEW
    clear_dp_flags(bpf)
    assert dp_flags(bpf) == 0
    rc, ip = run(dp, dp.progs.from_pod, packet(CLIENT, 46000, VIP, 80, "S"))
    assert ip.dst in BACKENDS


def test_a_flow_netfilter_keeps_lives_as_long_as_netfilters_entry(dp):
    """A flow left with netfilter (it SNATed it too) outlives ebpflb's own timeouts: idle for 7 h
    (ebpflb's established TCP lifetime is 6 h) it still passes untouched, and the GC forgets it
    only once netfilter's entry is gone."""
    import time

    from ebpflb.dataplane.ct_gc import ConntrackGc
    from ebpflb.takeover.flows import IPS_SRC_NAT, SNATED

    bpf = dp.progs.bpf
    sport = 47000
    flow = NfFlow(4, socket.IPPROTO_TCP, (CLIENT, sport, VIP, 80),
                  (BACKENDS[0], 8080, "10.244.0.1", 61000), tcp_state=3,
                  status=0x2 | 0x4 | 0x20 | IPS_SRC_NAT)
    plan = plan_imports([flow], read_snapshot(dp.writer), lambda _addr: SIDE_POD)
    assert [i.kept for i in plan.imports] == [SNATED]
    seven_hours_ago = time.monotonic_ns() - 7 * 3600 * 10**9
    write_imports(bpf, plan.imports, now_ns=seven_hours_ago)
    rc, ip = run(dp, dp.progs.from_pod, packet(CLIENT, sport, VIP, 80, "PA"))
    assert rc == TC_ACT_OK and ip.dst == VIP, "a flow netfilter translates was rewritten"
    asked = []

    def alive(family, proto, orig, answer=True):
        asked.append((family, proto, orig))
        return answer

    result = ConntrackGc(bpf, dp.config.ct_timeouts, alive).run(
        time.monotonic_ns() + 7 * 3600 * 10**9)
    assert result.netfilter == 1 and asked == [(4, socket.IPPROTO_TCP, flow.orig)]
    rc, ip = run(dp, dp.progs.from_pod, packet(CLIENT, sport, VIP, 80, "PA"))
    assert ip.dst == VIP
    result = ConntrackGc(bpf, dp.config.ct_timeouts, lambda *a: False).run(time.monotonic_ns())
    assert result.netfilter == 0 and result.deleted >= 1


def test_a_half_open_flow_is_handed_back_too(dp):
    from ebpflb.dataplane.bcc_maps import read_conntrack
    from ebpflb.dataplane.takeover_maps import hand_back
    from ebpflb.takeover.handback import plan_handback

    sport = 45100
    rc, ip = run(dp, dp.progs.from_pod, packet(CLIENT, sport, VIP, 80, "S"))  # ct4_syn only
    (flow,) = [f for f in plan_handback(read_conntrack(dp.progs.bpf)).flows
               if f.client == (CLIENT, sport)]
    assert flow.half_open and flow.tcp_state == 1  # SYN_SENT
    assert hand_back(dp.progs.bpf, flow, lambda: None)
    rc, ip = run(dp, dp.progs.from_pod, packet(CLIENT, sport, VIP, 80, "A"))
    assert rc == TC_ACT_OK and ip.dst == VIP, "a half-open flow handed back was still translated"
