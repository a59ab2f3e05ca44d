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


def two_vips(backend: str) -> str:
    return manifest(backend) + "---\n" + manifest(backend).replace("name: reuse", "name: reuse2") \
        .replace("10.96.7.1", "10.96.7.2").replace("reuse-a", "reuse2-a") \
        .replace("service-name: reuse}", "service-name: reuse2}")


def test_a_client_port_reused_towards_another_frontend_of_the_same_backend(dataplane):
    """The client closes a flow to one VIP, then opens one from the same port to another VIP
    of the same backend: the backend sees the same 4-tuple, so both flows share a reply key. The
    new flow takes it over; its replies come from the VIP it asked for, not the old one."""
    from scapy.layers.inet import IP as IP_, TCP as TCP_

    dataplane.clear_conntrack()
    dataplane.program(two_vips("10.244.0.31"))
    try:
        for flags in ("S", "A", "FA"):
            pkt = Ether(**ETH) / IP(src="10.244.0.2", dst="10.96.7.1") / TCP(sport=45000, dport=80,
                                                                               flags=flags)
            assert bpf_test_run(dataplane.progs.from_pod.fd, bytes(pkt)).retval == TC_ACT_OK
        reply = Ether(**ETH) / IP_(src="10.244.0.31", dst="10.244.0.2") / TCP_(
            sport=8080, dport=45000, flags="FA")
        assert Ether(bpf_test_run(dataplane.progs.to_pod.fd, bytes(reply)).data)[IP].src == "10.96.7.1"
        syn = Ether(**ETH) / IP(src="10.244.0.2", dst="10.96.7.2") / TCP(sport=45000, dport=80,
                                                                           flags="S")
        out = bpf_test_run(dataplane.progs.from_pod.fd, bytes(syn))
        assert Ether(out.data)[IP].dst == "10.244.0.31"
        synack = Ether(**ETH) / IP_(src="10.244.0.31", dst="10.244.0.2") / TCP_(
            sport=8080, dport=45000, flags="SA")
        got = Ether(bpf_test_run(dataplane.progs.to_pod.fd, bytes(synack)).data)[IP].src
        assert got == "10.96.7.2", f"the SYN-ACK of the new flow came back from {got}"
    finally:
        dataplane.program("")
        dataplane.clear_conntrack()
