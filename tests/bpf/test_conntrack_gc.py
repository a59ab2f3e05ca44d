"""Conntrack lifetimes on real maps: the agent's GC deletes expired flows by state, and the data
path itself treats an expired forward entry as a new flow (real time: 1 s UDP timeout)."""
import os
import shutil
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from ebpflb.dataplane.bcc_maps import BccMapWriter, read_conntrack
from ebpflb.dataplane.config import CtTimeouts, DataplaneConfig
from ebpflb.dataplane.ct_gc import ConntrackGc
from ebpflb.dataplane.loader import load_programs
from ebpflb.dataplane.testrun import test_run as bpf_run
from ebpflb.manifests import parse_documents
from ebpflb.model import desired_state
from ebpflb.reconcile import reconcile

from ..conftest import unique
from .test_lb4_packets import ETH, MANIFEST

pytestmark = pytest.mark.bpf

TIMEOUTS = CtTimeouts(tcp_syn=5, tcp_established=100, tcp_close=2, udp=1)


@pytest.fixture(scope="module")
def short():
    if os.geteuid() != 0:
        pytest.skip("needs root to load BPF programs")
    config = DataplaneConfig(pin_dir=f"/sys/fs/bpf/{unique('ebpflb-gc-')}", ct_max_entries=4096,
                             ct_timeouts=TIMEOUTS)
    try:
        progs = load_programs(config)
        m = parse_documents(MANIFEST, "<test>")
        reconcile(desired_state(m.services, m.slices), BccMapWriter(progs.bpf), config.map_limits)
        yield progs
    finally:
        shutil.rmtree(config.pin_dir, ignore_errors=True)


def send(progs, pkt):
    return Ether(bpf_run(progs.from_pod.fd, bytes(pkt)).data)


def tcp(sport, flags):
    return Ether(**ETH) / IP(src="10.244.0.2", dst="10.96.0.10") / TCP(sport=sport, dport=80, flags=flags)


def test_gc_deletes_by_state(short):
    short.bpf[b"ct4"].clear()
    short.bpf[b"ct4_syn"].clear()
    send(short, Ether(**ETH) / IP(src="10.244.0.2", dst="10.96.0.20") / UDP(sport=1000, dport=53))
    send(short, tcp(2000, "S"))                                   # syn only
    send(short, tcp(3000, "S")), send(short, tcp(3000, "A"))      # established
    send(short, tcp(4000, "S")), send(short, tcp(4000, "FA"))     # closing
    gc = ConntrackGc(short.bpf, TIMEOUTS)
    now = time.monotonic_ns()

    def flows():
        return sorted(e.sport for e in read_conntrack(short.bpf) if e.direction == "forward")

    assert flows() == [1000, 2000, 3000, 4000]
    assert gc.run(now).deleted == 0
    assert gc.run(now + int(1.5e9)).deleted == 2 and flows() == [2000, 3000, 4000]   # udp
    assert gc.run(now + int(2.5e9)).deleted == 2 and flows() == [2000, 3000]         # closing
    assert gc.run(now + int(6e9)).deleted == 2 and flows() == [3000]                 # syn
    assert gc.run(now + int(99e9)).deleted == 0
    assert gc.run(now + int(101e9)).deleted == 2 and flows() == []                   # established


def test_data_path_starts_a_new_flow_after_expiry(short):
    short.bpf[b"ct4"].clear()
    short.bpf[b"ct4_syn"].clear()
    pkt = Ether(**ETH) / IP(src="10.244.0.2", dst="10.96.0.20") / UDP(sport=5555, dport=53)
    send(short, pkt)
    (first,) = [e for e in read_conntrack(short.bpf) if e.direction == "forward"]
    send(short, pkt)
    (again,) = [e for e in read_conntrack(short.bpf) if e.direction == "forward"]
    assert again.created_ns == first.created_ns
    time.sleep(1.3)  # the UDP lifetime compiled into these programs is 1 s
    send(short, pkt)
    (renewed,) = [e for e in read_conntrack(short.bpf) if e.direction == "forward"]
    assert renewed.created_ns > first.created_ns
