"""After a backend leaves a Service, its UDP flows are forgotten so the next datagram of the same
5-tuple reaches a live backend (kubernetes#19029); TCP flows to it go on until they end; every
flow of a deleted frontend is forgotten. Real programs, real maps, the agent's purge step."""
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from ebpflb.dataplane.ct_gc import purge
from ebpflb.dataplane.testrun import test_run as bpf_run
from ebpflb.plan import conntrack_purge

from .test_lb4_packets import DNS_BACKENDS, ETH, MANIFEST, WEB_BACKENDS

pytestmark = pytest.mark.bpf


def dst(dp, pkt):
    return Ether(bpf_run(dp.progs.from_pod.fd, bytes(pkt)).data)[IP].dst


def without(manifest: str, ip: str) -> str:
    return manifest.replace(f"- {{addresses: [{ip}], conditions: {{ready: true}}}}\n", "")


def test_udp_flow_moves_tcp_flow_stays(dataplane):
    dataplane.program(MANIFEST)
    dataplane.clear_conntrack()
    udp = Ether(**ETH) / IP(src="10.244.0.2", dst="10.96.0.20") / UDP(sport=7000, dport=53)
    tcp_syn = Ether(**ETH) / IP(src="10.244.0.2", dst="10.96.0.10") / TCP(sport=7001, dport=80, flags="S")
    tcp_ack = tcp_syn.copy()
    tcp_ack[TCP].flags = "A"
    udp_backend = dst(dataplane, udp)
    tcp_backend = dst(dataplane, tcp_syn)
    dst(dataplane, tcp_ack)

    result = dataplane.program(without(without(MANIFEST, udp_backend), tcp_backend))
    stale = conntrack_purge(result.plan)
    assert stale.udp_backends and not stale.svc_ids
    assert purge(dataplane.progs.bpf, stale.svc_ids, stale.udp_backends) == 2  # one UDP flow
    # The same UDP 5-tuple now reaches a live backend...
    assert dst(dataplane, udp) in set(DNS_BACKENDS) - {udp_backend}
    # ...while the established TCP flow keeps its (removed) backend.
    assert dst(dataplane, tcp_ack) == tcp_backend


def test_deleted_frontend_forgets_its_flows(dataplane):
    dataplane.program(MANIFEST)
    dataplane.clear_conntrack()
    for sport in (7100, 7101):
        dst(dataplane, Ether(**ETH) / IP(src="10.244.0.2", dst="10.96.0.20") / UDP(sport=sport, dport=53))
    dst(dataplane, Ether(**ETH) / IP(src="10.244.0.2", dst="10.96.0.10") / TCP(sport=7102, dport=80, flags="S"))
    docs = MANIFEST.split("---")
    result = dataplane.program("---".join(d for d in docs if "name: dns" not in d and "dns-a" not in d))
    stale = conntrack_purge(result.plan)
    assert len(stale.svc_ids) == 1
    assert purge(dataplane.progs.bpf, stale.svc_ids, stale.udp_backends) == 4
    assert dataplane.ct_entries() == 2  # the web flow's two entries remain
    dataplane.program(MANIFEST)
