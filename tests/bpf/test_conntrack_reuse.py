"""A TCP tuple reused after its flow closed starts a new flow, and the packets after the new SYN
follow the new flow, not the dead one.

The dead flow was promoted to ct4 (its client ACKed); the new flow starts half-open in ct4_syn.
Without removing the dead entry, the client's next packet would find it first (ct4 is looked up
before ct4_syn) and go to the dead flow's backend. Run on the real program with
BPF_PROG_TEST_RUN; the backend set changes between the two flows so the difference shows.
"""
import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from ebpflb.dataplane.testrun import test_run as bpf_test_run

from .conftest import TC_ACT_OK

pytestmark = pytest.mark.bpf

ETH = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def manifest(backend: str) -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: reuse, namespace: demo}}
spec:
  clusterIP: 10.96.7.1
  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: reuse-a, namespace: demo, labels: {{kubernetes.io/service-name: reuse}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: [{backend}], conditions: {{ready: true}}}}
"""


def send(dp, flags: str) -> str:
    pkt = Ether(**ETH) / IP(src="10.244.0.2", dst="10.96.7.1") / TCP(sport=45000, dport=80,
                                                                       flags=flags)
    res = bpf_test_run(dp.progs.from_pod.fd, bytes(pkt))
    assert res.retval == TC_ACT_OK
    return Ether(res.data)[IP].dst


def test_syn_reusing_a_closed_tuple_moves_the_flow_for_good(dataplane):
    dataplane.clear_conntrack()
    dataplane.program(manifest("10.244.0.31"))
    try:
        assert send(dataplane, "S") == "10.244.0.31"
        assert send(dataplane, "A") == "10.244.0.31"  # promoted to ct4
        assert send(dataplane, "FA") == "10.244.0.31"  # closing
        dataplane.program(manifest("10.244.0.32"))
        assert send(dataplane, "S") == "10.244.0.32", "the new SYN did not start a new flow"
        assert send(dataplane, "A") == "10.244.0.32", "the next packet followed the dead flow"
        assert send(dataplane, "PA") == "10.244.0.32"
    finally:
        dataplane.program("")
        dataplane.clear_conntrack()
