"""`ebpflb explain` predicts what the IPv6 programs do (lb6_from_pod, tail-called from
lb4_from_pod), checked against them with BPF_PROG_TEST_RUN, maps programmed through the real
apply path:

- selection: random new IPv6 flows per algorithm (hash-mod, Maglev, weighted Maglev): explain
  names the backend the program picks (the IPv6 flow hash folds each address to one word);
- every other decision on a pod device whose addresses are not listed: named cases (a new flow,
  an established one, a TCP packet of no flow, a reject, a RST to a closed port, a hairpin, bad
  sources, a pass), each compared on the program's action, the addresses and ports it leaves
  with, and the counters that moved (its one verdict counter, its drop reason and events).

The node-device decisions of IPv6 (NodePort, SNAT) are not covered here yet: they need an IPv6
route table in a namespace of the test's own.
"""
import random
import socket

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ebpflb.apply import read_snapshot
from ebpflb.dataplane import testrun
from ebpflb.dataplane.bcc_maps import lookup_conntrack
from ebpflb.dataplane.explain_inputs import conntrack_view
from ebpflb.explain import POD, Device, Flow, explain, reply_key

pytestmark = pytest.mark.bpf

N_FLOWS = 2000
BACKENDS_7 = [f"fd00:10:244:1::{i}" for i in range(1, 8)]
ETH = dict(src="02:bb:00:00:00:02", dst="02:bb:00:00:00:01")
ACTIONS = {0: "ok", 2: "shot", 7: "redirect"}


def selection_manifest(algorithm: str, vip: str, weights: str = "") -> str:
    eps = "\n".join(f'- {{addresses: ["{ip}"], conditions: {{ready: true}}}}' for ip in BACKENDS_7)
    return f"""
apiVersion: v1
kind: Service
metadata:
  name: svc6-{algorithm}
  namespace: parity
  annotations:
    lb.ebpflb.io/algorithm: {algorithm}
    lb.ebpflb.io/maglev-table-size: "4099"
    lb.ebpflb.io/backend-weights: "{weights}"
spec:
  clusterIP: "{vip}"
  clusterIPs: ["{vip}"]
  ipFamilies: [IPv6]
  ports: [{{name: p, port: 443, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: svc6-{algorithm}-a, namespace: parity, labels: {{kubernetes.io/service-name: svc6-{algorithm}}}}}
addressType: IPv6
ports: [{{name: p, port: 8443, protocol: TCP}}]
endpoints:
{eps}
"""


def clear(dp) -> None:
    dp.clear_conntrack()
    for table in (b"ct6", b"ct6_syn", b"lb6_affinity"):
        dp.progs.bpf[table].clear()


def frame(flow: Flow) -> bytes:
    l4 = (TCP(sport=flow.sport, dport=flow.dport, flags=flow.tcp_flags, seq=1000,
              ack=1 if "A" in flow.tcp_flags else 0)
          if flow.protocol == "TCP" else UDP(sport=flow.sport, dport=flow.dport) / Raw(b"q"))
    return bytes(Ether(**ETH) / IPv6(src=flow.saddr, dst=flow.daddr) / l4)


def ep(addr: str, port: int) -> str:
    return f"[{addr}]:{port}"


@pytest.mark.parametrize("algorithm,weights", [
    ("random", ""), ("maglev", ""), ("maglev", "fd00:10:244:1::3=0,fd00:10:244:1::5=3")],
    ids=["random", "maglev", "maglev-weighted"])
def test_explain_predicts_the_ipv6_program(dataplane, algorithm, weights):
    vip = "fd00:96:7::1"
    dataplane.program(selection_manifest(algorithm, vip, weights))
    clear(dataplane)
    snapshot = read_snapshot(dataplane.writer)
    rng = random.Random(f"6{algorithm}{weights}")
    picks = {}
    try:
        for _ in range(N_FLOWS):
            src = f"fd00:{rng.randrange(1, 0xffff):x}::{rng.randrange(1, 0xffff):x}"
            flow = Flow(src, rng.randrange(1024, 65536), vip, 443, "TCP")
            out = Ether(testrun.test_run(dataplane.progs.from_pod.fd, frame(flow)).data)
            got = ep(out[IPv6].dst, out[TCP].dport)
            predicted = explain(snapshot, flow)
            assert predicted.verdict == "dnat" and got == predicted.backend, (flow, predicted)
            picks[got] = picks.get(got, 0) + 1
    finally:
        clear(dataplane)
    expected = {ep(ip, 8443) for ip in BACKENDS_7} - (
        {ep("fd00:10:244:1::3", 8443)} if weights else set())
    assert set(picks) == expected


WEB, EMPTY = "fd00:96:8::10", "fd00:96:8::30"
POD_CLIENT = "fd00:10:244::2"  # also a backend of web: it can reach itself (hairpin)
OTHER = "fd00:10:244::99"

DECISIONS = f"""
apiVersion: v1
kind: Service
metadata: {{name: web6, namespace: parity}}
spec:
  clusterIP: "{WEB}"
  clusterIPs: ["{WEB}"]
  ipFamilies: [IPv6]
  ports: [{{name: http, port: 80, protocol: TCP}}, {{name: dns, port: 53, protocol: UDP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: empty6, namespace: parity}}
spec:
  clusterIP: "{EMPTY}"
  clusterIPs: ["{EMPTY}"]
  ipFamilies: [IPv6]
  ports: [{{name: http, port: 80, protocol: TCP}}, {{name: dns, port: 53, protocol: UDP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web6-a, namespace: parity, labels: {{kubernetes.io/service-name: web6}}}}
addressType: IPv6
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]
endpoints:
- {{addresses: ["{POD_CLIENT}"], conditions: {{ready: true}}}}
- {{addresses: ["fd00:10:244::11"], conditions: {{ready: true}}}}
- {{addresses: ["fd00:10:244::12"], conditions: {{ready: true}}}}
"""


def outcome(res, sent: bytes):
    action = ACTIONS.get(res.retval, res.retval)
    if action == "shot":
        return ("shot",)
    if action == "ok" and res.data == sent:
        return ("ok", "untouched")
    out = Ether(res.data)
    if ICMPv6DestUnreach in out:
        u = out[ICMPv6DestUnreach]
        return (action, out[IPv6].src, out[IPv6].dst, f"icmp6 {u.type}/{u.code}")
    l4 = out[TCP] if TCP in out else out[UDP]
    kind = "rst" if TCP in out and out[TCP].flags.R else "l4"
    return (action, ep(out[IPv6].src, l4.sport), ep(out[IPv6].dst, l4.dport), kind)


def predicted(e):
    f = e.flow
    rst = "rst" if f.protocol == "TCP" and "R" in f.tcp_flags else "l4"
    if e.verdict == "pass":
        return ("ok", "untouched")
    if e.verdict == "drop":
        return ("shot",)
    if e.verdict == "dnat":
        return ("ok", e.source or ep(f.saddr, f.sport), e.backend, rst)
    if e.verdict == "hairpin":
        return ("redirect", e.source, e.backend, rst)
    if e.verdict == "reject":
        if f.protocol == "UDP":
            return ("redirect", f.daddr, f.saddr, "icmp6 1/4")
        return ("redirect", ep(f.daddr, f.dport), ep(f.saddr, f.sport), "rst")
    raise AssertionError(f"unknown verdict {e.verdict!r}")


def hairpin_port() -> int:
    """A source port the hash sends from POD_CLIENT to itself."""
    from ebpflb.flowhash import packet_hash

    backends = sorted([POD_CLIENT, "fd00:10:244::11", "fd00:10:244::12"],
                      key=lambda a: socket.inet_pton(socket.AF_INET6, a))
    return next(p for p in range(30000, 40000)
                if backends[packet_hash(POD_CLIENT, p, WEB, 80, 6) % 3] == POD_CLIENT)


def cases():
    """(name, packets run first to make the state, the packet under test)."""
    syn = Flow(OTHER, 41000, WEB, 80, "TCP", "S")
    return [
        ("a new TCP flow", [], syn),
        ("a new UDP flow", [], Flow(OTHER, 41001, WEB, 53, "UDP")),
        ("the client's ACK of a known flow", [syn], Flow(OTHER, 41000, WEB, 80, "TCP", "A")),
        ("a TCP packet of no flow (stateless)", [], Flow(OTHER, 41002, WEB, 80, "TCP", "PA")),
        ("a SYN again after the flow closed", [syn, Flow(OTHER, 41000, WEB, 80, "TCP", "FA")], syn),
        ("TCP to a frontend with no backend", [], Flow(OTHER, 41003, EMPTY, 80, "TCP", "S")),
        ("UDP to a frontend with no backend", [], Flow(OTHER, 41004, EMPTY, 53, "UDP")),
        ("a RST to a frontend with no backend", [], Flow(OTHER, 41005, EMPTY, 80, "TCP", "R")),
        ("a pod reaching itself", [], Flow(POD_CLIENT, hairpin_port(), WEB, 80, "TCP", "S")),
        ("from loopback", [], Flow("::1", 41006, WEB, 80, "TCP", "S")),
        ("from a frontend's address", [], Flow(EMPTY, 41007, WEB, 80, "TCP", "S")),
        ("to a port the frontend does not serve", [], Flow(OTHER, 41008, WEB, 81, "TCP", "S")),
    ]


@pytest.mark.parametrize("name", [c[0] for c in cases()])
def test_explain_matches_each_ipv6_decision(dataplane, name):
    before_state, flow = next((pre, f) for n, pre, f in cases() if n == name)
    dataplane.program(DECISIONS)
    clear(dataplane)
    prog = dataplane.progs.from_pod.fd
    try:
        for f in before_state:
            testrun.test_run(prog, frame(f))
        snapshot = read_snapshot(dataplane.writer)
        bpf = dataplane.progs.bpf
        entry = lookup_conntrack(bpf, flow.saddr, flow.sport, flow.daddr, flow.dport, flow.proto)
        ct, table = None, {}
        if entry is not None:
            import time

            now = time.monotonic_ns()
            ct = conntrack_view(entry, now, with_device=False)
            rev = reply_key(flow, ct)
            reply = lookup_conntrack(bpf, rev.saddr, rev.sport, rev.daddr, rev.dport, flow.proto,
                                     reply=True)
            if reply is not None:
                table[rev] = conntrack_view(reply, now, with_device=False)
        e = explain(snapshot, flow, ct, device=Device(POD, 0, None), ct_table=table)
        before = dataplane.stats()
        sent = frame(flow)
        res = testrun.test_run(prog, sent)
        after = dataplane.stats()
        moved = {k: after[k] - before[k] for k in after if after[k] != before[k]}
        assert outcome(res, sent) == predicted(e), e
        assert moved == {e.counted_as: 1, **{c: 1 for c in e.counters}}, e
    finally:
        clear(dataplane)
