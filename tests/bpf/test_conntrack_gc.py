"""Conntrack lifetimes on real maps: the agent's GC deletes expired flows by state, and the data
path itself treats an expired forward entry as a new flow (real time: 1 s UDP timeout)."""
import os
import shutil
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from ebpflb.dataplane.bcc_maps import BccMapWriter, be16_to_port, read_conntrack
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

TIMEOUTS = CtTimeouts(tcp_syn=5, tcp_established=100, tcp_close=2, udp=1, tcp_time_wait=7)


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
    send(short, tcp(4000, "S")), send(short, tcp(4000, "R"))      # reset
    gc = ConntrackGc(short.bpf, TIMEOUTS)
    now = time.monotonic_ns()

    def flows():
        return sorted(e.sport for e in read_conntrack(short.bpf) if e.direction == "forward")

    assert flows() == [1000, 2000, 3000, 4000]
    assert gc.run(now).deleted == 0
    assert gc.run(now + int(1.5e9)).deleted == 2 and flows() == [2000, 3000, 4000]   # udp
    assert gc.run(now + int(2.5e9)).deleted == 2 and flows() == [2000, 3000]         # reset
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


def _age_flow(progs, sport: int, idle_s: float) -> None:
    """Both entries of the flow from client port `sport` (either table) last seen `idle_s` ago."""
    now = time.monotonic_ns()  # bpf_ktime_get_ns is CLOCK_MONOTONIC
    for name in (b"ct4", b"ct4_syn"):
        t = progs.bpf[name]
        for key, value in list(t.items()):
            if sport in (be16_to_port(key.sport), be16_to_port(key.dport)):
                value.last_seen_ns = now - int(idle_s * 1e9)
                t[key] = value


def _reply(progs, sport: int, flags: str) -> None:
    """The backend's packet of the flow from client port `sport`, through lb4_to_pod."""
    (fwd,) = [e for e in read_conntrack(progs.bpf) if e.direction == "forward" and e.sport == sport]
    pkt = (Ether(**ETH) / IP(src=fwd.nat_addr, dst="10.244.0.2")
           / TCP(sport=fwd.nat_port, dport=sport, flags=flags))
    bpf_run(progs.to_pod.fd, bytes(pkt))


# (state, the flow's packets: client ("c") or backend ("b") and TCP flags, the next client packet)
LIFETIME_CASES = [
    ("udp", [("c", "")], ""),
    ("tcp half-open", [("c", "S")], "S"),
    ("tcp established", [("c", "S"), ("b", "SA"), ("c", "A")], "A"),
    ("tcp closed by both sides", [("c", "S"), ("b", "SA"), ("c", "A"), ("c", "FA"), ("b", "FA")],
     "A"),
]


@pytest.mark.parametrize("state,make,probe", LIFETIME_CASES, ids=[c[0] for c in LIFETIME_CASES])
def test_lifetimes_are_one_rule_in_the_programs_the_gc_and_explain(short, state, make, probe):
    """For each state, a flow whose entries are idle one second less than its lifetime is still
    a flow for the program (its next packet is counted `established`), for the GC (kept) and for
    explain (conntrack decides); idle one second more, it is over for all three (the program's
    next packet starts anew: `new`, or `stateless` for TCP other than a SYN). The lifetime rule
    is one function in Python (CtTimeouts.lifetime), this checks it against ct4_lifetime_of."""
    from ebpflb.apply import read_snapshot
    from ebpflb.dataplane.bcc_maps import read_counters
    from ebpflb.explain import ConntrackView, Flow, explain

    udp = probe == ""
    vip, port = ("10.96.0.20", 53) if udp else ("10.96.0.10", 80)

    def client(sport, flags):
        if udp:
            return Ether(**ETH) / IP(src="10.244.0.2", dst=vip) / UDP(sport=sport, dport=port)
        return tcp(sport, flags)

    def make_flow(sport):
        short.bpf[b"ct4"].clear()
        short.bpf[b"ct4_syn"].clear()
        for side, flags in make:
            if side == "c":
                send(short, client(sport, flags))
            else:
                _reply(short, sport, flags)
        return [e for e in read_conntrack(short.bpf) if e.direction == "forward"][0]

    for margin in (-1, +1):
        sport = 7000 + 10 * LIFETIME_CASES.index((state, make, probe)) + (margin > 0)
        fwd = make_flow(sport)
        lifetime = TIMEOUTS.lifetime(fwd.flags, 17 if udp else 6)
        idle = lifetime + margin
        _age_flow(short, sport, idle)
        gone_for_gc = ConntrackGc(short.bpf, TIMEOUTS).run(time.monotonic_ns()).deleted > 0
        view = ConntrackView(f"{fwd.nat_addr}:{fwd.nat_port}", fwd.backend_id, idle, idle,
                             flags=fwd.flags)
        e = explain(read_snapshot(BccMapWriter(short.bpf)),
                    Flow("10.244.0.2", sport, vip, port, "UDP" if udp else "TCP", probe or "S"),
                    view, timeouts=TIMEOUTS)
        gone_for_explain = not e.reason.startswith("an established flow")
        fwd = make_flow(sport)  # again: the GC may have deleted it
        _age_flow(short, sport, idle)
        before = read_counters(short.bpf)
        send(short, client(sport, probe))
        after = read_counters(short.bpf)
        (verdict,) = [k for k in after if "/" in k and after[k] != before[k]]
        gone_for_program = verdict != "from_pod/established"
        assert (gone_for_program, gone_for_gc, gone_for_explain) == (margin > 0,) * 3, (
            f"{state} idle {idle}s: program {verdict}, gc deleted {gone_for_gc}, "
            f"explain {e.reason}")


def test_a_half_closed_flow_outlives_tcp_close_while_its_other_side_may_still_send(short):
    """The client shut its side down (FIN) and waits; the backend takes longer than tcp_close to
    answer. The flow is half-closed, not closed: the GC keeps it for tcp_time_wait (Linux
    conntrack keeps such flows a minute or two), and the backend's late answer still reaches
    the client from the frontend. A RST, or a FIN from both sides, closes it: then tcp_close
    applies. (Failed on
    99e46b0: the GC took a FIN from either side for the end of the flow and deleted both
    entries after tcp_close, and the late answer left with the backend's address.)"""
    def make(sport, *steps):
        for side, flags in steps:
            if side == "c":
                send(short, tcp(sport, flags))
            else:
                _reply(short, sport, flags)

    def answer(sport):
        (fwd,) = [e for e in read_conntrack(short.bpf) if e.direction == "forward"
                  and e.sport == sport]
        pkt = (Ether(**ETH) / IP(src=fwd.nat_addr, dst="10.244.0.2")
               / TCP(sport=fwd.nat_port, dport=sport, flags="PA") / b"late answer")
        return Ether(bpf_run(short.to_pod.fd, bytes(pkt)).data)[IP].src

    short.bpf[b"ct4"].clear()
    short.bpf[b"ct4_syn"].clear()
    handshake = [("c", "S"), ("b", "SA"), ("c", "A")]
    make(8100, *handshake, ("c", "FA"))                 # half-closed by the client
    make(8101, *handshake, ("c", "FA"), ("b", "FA"))    # closed by both
    make(8102, *handshake, ("b", "R"))                  # reset by the backend
    idle = TIMEOUTS.tcp_close + 1
    for sport in (8100, 8101, 8102):
        _age_flow(short, sport, idle)
    ConntrackGc(short.bpf, TIMEOUTS).run(time.monotonic_ns())
    left = sorted({e.sport if e.direction == "forward" else e.dport
                   for e in read_conntrack(short.bpf)})
    assert left == [8100], left
    assert answer(8100) == "10.96.0.10"  # from the frontend: the client's socket takes it
    # Half-closed is not forever: quiet on both sides for tcp_time_wait, it is over too.
    _age_flow(short, 8100, TIMEOUTS.tcp_time_wait + 1)
    ConntrackGc(short.bpf, TIMEOUTS).run(time.monotonic_ns())
    assert read_conntrack(short.bpf) == []
