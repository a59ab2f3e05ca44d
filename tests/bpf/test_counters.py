"""Per-frontend and per-backend counters, and the verdict counters, match exactly what a
BPF_PROG_TEST_RUN fixture sent through the real programs."""
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ebpflb.apply import read_snapshot
from ebpflb.dataplane.percpu import read_flow_stats
from ebpflb.dataplane.testrun import test_run as bpf_run
from ebpflb.maps import SERVICES, SvcKey

pytestmark = pytest.mark.bpf

MANIFEST = """
apiVersion: v1
kind: Service
metadata: {name: count, namespace: stats}
spec:
  clusterIP: 10.96.8.1
  ports: [{name: u, port: 53, protocol: UDP}, {name: t, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: count-a, namespace: stats, labels: {kubernetes.io/service-name: count}}
addressType: IPv4
ports: [{name: u, port: 9053, protocol: UDP}, {name: t, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.2.1], conditions: {ready: true}}
- {addresses: [10.244.2.2], conditions: {ready: true}}
"""
ETH = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def totals(stats):
    return tuple(sum(getattr(s, f) for s in stats.values())
                 for f in ("packets_in", "bytes_in", "packets_out", "bytes_out", "conns"))


def test_counters_match_what_was_sent(dataplane):
    dataplane.program(MANIFEST)
    dataplane.clear_conntrack()
    bpf = dataplane.progs.bpf
    snap = read_snapshot(dataplane.writer)
    udp_id = snap[SERVICES][SvcKey("10.96.8.1", 53, 17)].svc_id
    tcp_id = snap[SERVICES][SvcKey("10.96.8.1", 80, 6)].svc_id
    svc0 = read_flow_stats(bpf, "lb4_svc_stats")
    be0 = read_flow_stats(bpf, "lb4_backend_stats")
    glob0 = dataplane.stats()

    # 30 UDP flows of 2 datagrams each (100 bytes of payload), 10 TCP flows of 3 packets,
    # and one reply per UDP flow.
    udp_frames, tcp_frames, replies = [], [], []
    for i in range(30):
        pkt = Ether(**ETH) / IP(src="10.244.0.2", dst="10.96.8.1") / UDP(sport=30000 + i, dport=53) / Raw(b"x" * 100)
        for _ in range(2):
            out = Ether(bpf_run(dataplane.progs.from_pod.fd, bytes(pkt)).data)
            udp_frames.append(len(pkt))
        reply = Ether(**ETH) / IP(src=out[IP].dst, dst="10.244.0.2") / UDP(sport=9053, dport=30000 + i) / Raw(b"y" * 10)
        assert Ether(bpf_run(dataplane.progs.to_pod.fd, bytes(reply)).data)[IP].src == "10.96.8.1"
        replies.append(len(reply))
    for i in range(10):
        for flags in ("S", "A", "PA"):
            pkt = Ether(**ETH) / IP(src="10.244.0.3", dst="10.96.8.1") / TCP(sport=40000 + i, dport=80, flags=flags)
            bpf_run(dataplane.progs.from_pod.fd, bytes(pkt))
            tcp_frames.append(len(pkt))

    svc = read_flow_stats(bpf, "lb4_svc_stats")
    be = read_flow_stats(bpf, "lb4_backend_stats")
    glob = dataplane.stats()

    def delta(now, before, key):
        a = now.get(key)
        b = before.get(key)
        fields = ("packets_in", "bytes_in", "packets_out", "bytes_out", "conns")
        return tuple(getattr(a, f, 0) - getattr(b, f, 0) for f in fields)

    assert delta(svc, svc0, udp_id) == (60, sum(udp_frames), 30, sum(replies), 30)
    assert delta(svc, svc0, tcp_id) == (30, sum(tcp_frames), 0, 0, 10)
    be_delta = tuple(a - b for a, b in zip(totals(be), totals(be0)))
    assert be_delta == (90, sum(udp_frames) + sum(tcp_frames), 30, sum(replies), 40)
    # One verdict per packet: 40 flows started (30 UDP, 10 TCP SYNs), 30 second datagrams and
    # 20 TCP packets of known flows, 30 replies; nothing else moved.
    moved = {k: glob[k] - glob0[k] for k in glob if glob[k] != glob0[k]}
    assert moved == {"from_pod/new": 40, "from_pod/established": 50, "to_pod/reply": 30,
                     "conntrack_insert": 40}
    dataplane.clear_conntrack()


def test_a_reused_id_starts_from_zero(dataplane):
    """A frontend removed and another added takes a fresh id with zeroed counters."""
    # From a clean slate: flows other tests left would keep their frontends' ids (draining).
    dataplane.clear_conntrack()
    dataplane.program("")
    dataplane.program(MANIFEST)
    pkt = Ether(**ETH) / IP(src="10.244.0.2", dst="10.96.8.1") / UDP(sport=31000, dport=53)
    bpf_run(dataplane.progs.from_pod.fd, bytes(pkt))
    before = read_flow_stats(dataplane.progs.bpf, "lb4_svc_stats")
    assert before
    dataplane.program("")  # everything removed
    assert read_snapshot(dataplane.writer)[SERVICES] == {}
    dataplane.program(MANIFEST.replace("10.96.8.1", "10.96.8.2"))
    snap = read_snapshot(dataplane.writer)
    ids = {v.svc_id for v in snap[SERVICES].values()}
    stats = read_flow_stats(dataplane.progs.bpf, "lb4_svc_stats")
    assert ids & set(before), "ids are reused once freed"
    assert not (ids & set(stats)), "reused ids start with zero counters"
    dataplane.clear_conntrack()


def test_counters_are_read_with_the_pinned_maps_own_size(dataplane, tmp_path):
    """The CLI opens maps compiled with default sizes; an agent may have created them with
    others. Stats must follow the kernel's size, not the compiled one."""
    import shutil

    from ebpflb.dataplane.bcc_maps import BccMapWriter
    from ebpflb.dataplane.config import DataplaneConfig
    from ebpflb.dataplane.loader import load_programs, open_maps
    from ebpflb.views import read_service_stats
    from ebpflb.manifests import parse_documents
    from ebpflb.model import desired_state
    from ebpflb.reconcile import reconcile

    from ..conftest import unique

    small = DataplaneConfig(pin_dir=f"/sys/fs/bpf/{unique('ebpflb-size-')}", max_services=100,
                            max_backends=100, ct_max_entries=1024)
    try:
        progs = load_programs(small)
        m = parse_documents(MANIFEST, "<test>")
        reconcile(desired_state(m.services, m.slices), BccMapWriter(progs.bpf), small.map_limits)
        pkt = Ether(**ETH) / IP(src="10.244.0.2", dst="10.96.8.1") / UDP(sport=31000, dport=53)
        bpf_run(progs.from_pod.fd, bytes(pkt))
        reader = open_maps(DataplaneConfig(pin_dir=small.pin_dir))  # default sizes compiled in
        stats = {s.frontend: s.counters for s in read_service_stats(reader)}
        assert stats["10.96.8.1:53/UDP"].packets_in == 1
    finally:
        shutil.rmtree(small.pin_dir, ignore_errors=True)
