"""After a backend leaves a Service, its UDP flows are forgotten so the next datagram of the same
5-tuple reaches a live backend (kubernetes#19029); TCP flows to it go on until they end, except
half-open ones it never answered; every flow of a deleted frontend is forgotten. Real programs,
real maps, the agent's purge step."""
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from ebpflb.dataplane.bcc_maps import lookup_conntrack
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


def test_half_open_flows_a_removed_backend_never_answered_are_forgotten(dataplane):
    """Two SYNs reach one backend; it answers one (SYN-ACK through lb4_to_pod) and then leaves the
    Service. The unanswered flow's entries go (it only held a slot and a client's retries); the
    answered one stays, so its client's ACK still reaches the backend it talked to."""
    dataplane.program(MANIFEST)
    dataplane.clear_conntrack()
    syns = {}
    for sport in range(7200, 7300):
        pkt = Ether(**ETH) / IP(src="10.244.0.2", dst="10.96.0.10") / TCP(sport=sport, dport=80, flags="S")
        syns.setdefault(dst(dataplane, pkt), []).append(sport)
        if len(syns.get(WEB_BACKENDS[0], ())) >= 2:
            break
    backend = WEB_BACKENDS[0]
    answered, silent = syns[backend][:2]
    synack = Ether(**ETH) / IP(src=backend, dst="10.244.0.2") / TCP(sport=8080, dport=answered, flags="SA")
    bpf_run(dataplane.progs.to_pod.fd, bytes(synack))

    result = dataplane.program(without(MANIFEST, backend))
    stale = conntrack_purge(result.plan)
    assert stale.tcp_backends and not stale.svc_ids
    assert purge(dataplane.progs.bpf, stale.svc_ids, stale.udp_backends, stale.tcp_backends) == 2
    bpf = dataplane.progs.bpf
    assert lookup_conntrack(bpf, "10.244.0.2", silent, "10.96.0.10", 80, 6) is None
    assert lookup_conntrack(bpf, backend, 8080, "10.244.0.2", silent, 6, reply=True) is None
    assert lookup_conntrack(bpf, "10.244.0.2", answered, "10.96.0.10", 80, 6).nat_addr == backend
    ack = Ether(**ETH) / IP(src="10.244.0.2", dst="10.96.0.10") / TCP(sport=answered, dport=80, flags="A")
    assert dst(dataplane, ack) == backend
    dataplane.program(MANIFEST)
