"""`ebpflb explain` predicts exactly the backend the program picks: 10,000 random new flows per
algorithm (hash-mod "random" and Maglev), run through the real lb4_from_pod with
BPF_PROG_TEST_RUN, maps programmed through the real apply path."""
import random
import socket
import struct

import pytest

from ebpflb.apply import read_snapshot
from ebpflb.explain import Flow, explain

pytestmark = pytest.mark.bpf

N_FLOWS = 10_000
BACKENDS = [f"10.244.1.{i}" for i in range(1, 8)]


def manifest(algorithm: str, vip: str, weights: str = "") -> str:
    eps = "\n".join(f"- {{addresses: [{ip}], conditions: {{ready: true}}}}" for ip in BACKENDS)
    return f"""
apiVersion: v1
kind: Service
metadata:
  name: svc-{algorithm}
  namespace: parity
  annotations:
    lb.ebpflb.io/algorithm: {algorithm}
    lb.ebpflb.io/maglev-table-size: "4099"
    lb.ebpflb.io/backend-weights: "{weights}"
spec:
  clusterIP: {vip}
  ports: [{{name: p, port: 443, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: svc-{algorithm}-a, namespace: parity, labels: {{kubernetes.io/service-name: svc-{algorithm}}}}}
addressType: IPv4
ports: [{{name: p, port: 8443, protocol: TCP}}]
endpoints:
{eps}
"""


def syn(src: str, sport: int, dst: str, dport: int) -> bytes:
    """A minimal Ethernet/IPv4/TCP SYN; checksums are irrelevant to backend selection."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + tcp


@pytest.mark.parametrize("algorithm,weights", [("random", ""), ("maglev", ""),
                                               ("maglev", "10.244.1.3=0,10.244.1.5=3")],
                         ids=["random", "maglev", "maglev-weighted"])
def test_explain_predicts_the_program(dataplane, algorithm, weights):
    from ebpflb.dataplane.testrun import test_run

    vip = "10.96.7.1"
    dataplane.program(manifest(algorithm, vip, weights))
    dataplane.clear_conntrack()
    snapshot = read_snapshot(dataplane.writer)
    rng = random.Random(f"{algorithm}{weights}")
    picks = {}
    try:
        for _ in range(N_FLOWS):
            src = f"10.{rng.randrange(244, 246)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            sport = rng.randrange(1024, 65536)
            out = test_run(dataplane.progs.from_pod.fd, syn(src, sport, vip, 443)).data
            got = f"{socket.inet_ntoa(out[30:34])}:{struct.unpack('!H', out[36:38])[0]}"
            predicted = explain(snapshot, Flow(src, sport, vip, 443, "TCP"))
            assert predicted.verdict == "dnat"
            assert got == predicted.backend, (src, sport, predicted)
            picks[got] = picks.get(got, 0) + 1
    finally:
        dataplane.clear_conntrack()
    # Every backend of positive weight is used; a weight-0 backend never is.
    expected = {f"{ip}:8443" for ip in BACKENDS} - ({"10.244.1.3:8443"} if weights else set())
    assert set(picks) == expected
    if weights:
        # weight 3 against weight 1: about three times the flows (loose bounds, 10k samples)
        assert 2.4 < picks["10.244.1.5:8443"] / picks["10.244.1.1:8443"] < 3.6


def test_explain_reports_the_conntrack_entry_and_a_pass(dataplane):
    from ebpflb.dataplane.bcc_maps import lookup_conntrack
    from ebpflb.dataplane.testrun import test_run
    from ebpflb.explain import ConntrackView

    vip = "10.96.7.1"
    dataplane.program(manifest("maglev", vip))
    dataplane.clear_conntrack()
    out = test_run(dataplane.progs.from_pod.fd, syn("10.244.9.9", 40000, vip, 443)).data
    entry = lookup_conntrack(dataplane.progs.bpf, "10.244.9.9", 40000, vip, 443, 6)
    assert entry is not None and entry.nat_addr == socket.inet_ntoa(out[30:34])
    snap = read_snapshot(dataplane.writer)
    e = explain(snap, Flow("10.244.9.9", 40000, vip, 443, "TCP"),
                ConntrackView(f"{entry.nat_addr}:{entry.nat_port}", entry.backend_id, 0.0, 0.0))
    assert e.reason.startswith("an established flow") and e.backend == e.hashed_backend
    assert explain(snap, Flow("10.244.9.9", 40000, vip, 444, "TCP")).verdict == "pass"
    dataplane.clear_conntrack()
