"""Hostile packets against the real programs (BPF_PROG_TEST_RUN): a table in which every row has a
defined verdict and exact output bytes, and a bounded fuzz run of 100,000 mutated packets checking
that nothing is rewritten unless it is a well-formed packet to a frontend, and that the program
always returns a verdict."""
import random
import struct
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from ebpflb.dataplane.testrun import test_run as bpf_run

from .conftest import TC_ACT_OK, TC_ACT_SHOT
from .test_lb4_packets import TC_ACT_REDIRECT
from .test_lb4_packets import CLIENT, DNS_BACKENDS, ETH, MANIFEST, WEB_BACKENDS, dnat_case, rebuilt

pytestmark = pytest.mark.bpf

VIP = "10.96.0.10"


@pytest.fixture(scope="module")
def dp(dataplane):
    dataplane.program(MANIFEST)
    return dataplane


@pytest.fixture(autouse=True)
def fresh_conntrack(dataplane):
    dataplane.clear_conntrack()
    yield
    dataplane.clear_conntrack()


def syn(src=CLIENT, dst=VIP, sport=40000, dport=80, **ip):
    return Ether(**ETH) / IP(src=src, dst=dst, **ip) / TCP(sport=sport, dport=dport, flags="S")


UNTOUCHED = [  # (description, frame, verdict that counts it [+ an event])
    ("IHL below 5", bytes(syn(ihl=4)), "malformed"),
    ("TCP header cut after 12 bytes", bytes(syn())[:14 + 20 + 12], "malformed"),
    ("UDP header cut after 4 bytes",
     bytes(Ether(**ETH) / IP(src=CLIENT, dst="10.96.0.20") / UDP(sport=1, dport=53))[:14 + 20 + 4],
     "malformed"),
    ("total length larger than the frame", bytes(syn(len=1000)), "malformed"),
    ("TCP data offset below 5",
     bytes(Ether(**ETH) / IP(src=CLIENT, dst=VIP) / TCP(sport=1, dport=80, dataofs=3)), "malformed"),
    ("TCP data offset past the end",
     bytes(Ether(**ETH) / IP(src=CLIENT, dst=VIP) / TCP(sport=1, dport=80, dataofs=15)), "malformed"),
    ("zero-length UDP (length field 0)",
     bytes(Ether(**ETH) / IP(src=CLIENT, dst="10.96.0.20") / UDP(sport=1, dport=53, len=0)),
     "malformed"),
    ("non-first fragment whose first fragment was never seen",
     bytes(Ether(**ETH) / IP(src=CLIENT, dst=VIP, frag=3, proto=6) / Raw(b"y" * 24)), "pass+frag_miss"),
    ("ARP", bytes(Ether(**ETH) / ARP(pdst=VIP)), "pass"),
    ("IPv6", bytes(Ether(**ETH) / IPv6(dst="fd00::10") / TCP(dport=80)), "pass"),
    ("LLDP ethertype", bytes(Ether(**ETH, type=0x88CC) / Raw(b"\x02" * 40)), "pass"),
    ("VLAN-tagged IPv4 to the VIP (pod devices carry no VLANs)",
     bytes(Ether(**ETH) / Dot1Q(vlan=7) / IP(src=CLIENT, dst=VIP) / TCP(sport=1, dport=80, flags="S")),
     "pass"),
    ("QinQ-tagged IPv4 to the VIP",
     bytes(Ether(**ETH, type=0x88A8) / Dot1Q(vlan=7) / IP(src=CLIENT, dst=VIP) / TCP(dport=80)), "pass"),
    ("ICMP port unreachable with a short embedded header",
     bytes(Ether(**ETH) / IP(src="10.244.0.11", dst=CLIENT) / ICMP(type=3, code=3)
           / Raw(bytes(IP(src=CLIENT, dst=VIP) / TCP(sport=1, dport=80))[:24])), "pass"),
    ("ICMP echo to the VIP", bytes(Ether(**ETH) / IP(src=CLIENT, dst=VIP) / ICMP()), "pass"),
]

DROPPED = [  # new flows a frontend must refuse: (description, frame)
    ("source is the VIP itself", bytes(syn(src=VIP))),
    ("source is another VIP", bytes(syn(src="10.96.0.20"))),
    ("source in 127.0.0.0/8", bytes(syn(src="127.0.0.1"))),
    ("source equals destination", bytes(syn(src=VIP, sport=80))),
]


@pytest.mark.parametrize("desc,frame,stat", UNTOUCHED, ids=[c[0] for c in UNTOUCHED])
def test_untouched(dp, desc, frame, stat):
    for prog, hook in ((dp.progs.from_pod, "from_pod"), (dp.progs.to_pod, "to_pod")):
        before = dp.stats()
        res = bpf_run(prog.fd, frame)
        assert (res.retval, res.data) == (TC_ACT_OK, frame)
        after = dp.stats()
        verdict, _, event = stat.partition("+")  # an event counted beside the verdict
        assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {
            f"{hook}/{verdict}": 1, **({event: 1} if event else {})}
    assert dp.ct_entries() == 0


@pytest.mark.parametrize("desc,frame", DROPPED, ids=[c[0] for c in DROPPED])
def test_bad_sources_are_dropped(dp, desc, frame):
    before = dp.stats()
    res = bpf_run(dp.progs.from_pod.fd, frame)
    assert res.retval == TC_ACT_SHOT
    after = dp.stats()
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {
        "from_pod/drop": 1, "bad_source": 1}
    assert dp.ct_entries() == 0


REWRITTEN = [
    dnat_case("IPv4 options (NOPs) are kept and the packet DNATed",
              Ether(**ETH) / IP(src=CLIENT, dst=VIP, options=[IPOption_NOP()] * 4)
              / TCP(sport=41000, dport=80, flags="S"), WEB_BACKENDS, 8080),
    dnat_case("TTL 1 is DNATed as any packet (TTL is the forwarding path's job)",
              Ether(**ETH) / IP(src=CLIENT, dst=VIP, ttl=1) / TCP(sport=41001, dport=80, flags="S"),
              WEB_BACKENDS, 8080),
    dnat_case("UDP with payload and IP options",
              Ether(**ETH) / IP(src=CLIENT, dst="10.96.0.20", options=[IPOption_NOP()] * 4)
              / UDP(sport=41002, dport=53) / Raw(b"q" * 30), DNS_BACKENDS, 9053),
]


@pytest.mark.parametrize("desc,pkt,verdict,expected", REWRITTEN, ids=[c[0] for c in REWRITTEN])
def test_rewritten(dp, desc, pkt, verdict, expected):
    res = bpf_run(dp.progs.from_pod.fd, bytes(pkt))
    assert (res.retval, res.data) == (verdict, expected)


def test_only_a_syn_creates_tcp_state(dp):
    """An ACK for an unknown flow is forwarded by hash but creates nothing; a SYN creates both
    entries; FIN marks the flow closing, and a SYN on the same tuple then starts a new flow."""
    before = dp.stats()
    ack = Ether(**ETH) / IP(src=CLIENT, dst=VIP) / TCP(sport=42000, dport=80, flags="A")
    out = bpf_run(dp.progs.from_pod.fd, bytes(ack))
    assert Ether(out.data)[IP].dst in WEB_BACKENDS
    assert dp.ct_entries() == 0
    after = dp.stats()
    assert after["from_pod/stateless"] == before["from_pod/stateless"] + 1
    assert after["tcp_no_state"] == before["tcp_no_state"]  # a drop reason only

    bpf_run(dp.progs.from_pod.fd, bytes(syn(sport=42000)))
    ct, syn_table = dp.progs.bpf[b"ct4"], dp.progs.bpf[b"ct4_syn"]

    def forward(table):
        return [v for k, v in table.items() if k.dir == 0]

    # A SYN makes a half-open flow: both entries in the SYN table, none in the main one.
    assert (len(syn_table), len(ct)) == (2, 0)
    assert forward(syn_table)[0].flags == 0
    bpf_run(dp.progs.from_pod.fd, bytes(ack))
    # The client's ACK completes the handshake: the flow moves to the main table.
    assert (len(syn_table), len(ct)) == (0, 2)
    assert forward(ct)[0].flags == 0x1  # established
    fin = Ether(**ETH) / IP(src=CLIENT, dst=VIP) / TCP(sport=42000, dport=80, flags="FA")
    bpf_run(dp.progs.from_pod.fd, bytes(fin))
    assert forward(ct)[0].flags == 0x3  # established and closing
    created = forward(ct)[0].created_ns
    bpf_run(dp.progs.from_pod.fd, bytes(syn(sport=42000)))
    # A SYN on the closed flow's tuple starts a new (half-open) flow.
    new = forward(syn_table)
    assert len(new) == 1 and new[0].flags == 0 and new[0].created_ns > created


def _frontend_of(frame: bytes, frontends):
    """Independent parse: the (vip, port, proto) a well-formed packet targets, else None."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[14] >> 4 != 4:
        return None
    ihl = (frame[14] & 15) * 4
    if ihl < 20 or 14 + ihl > len(frame):
        return None
    tot = struct.unpack_from("!H", frame, 16)[0]
    frag = struct.unpack_from("!H", frame, 20)[0]
    if tot < ihl or tot > len(frame) - 14 or frag & 0x1FFF:  # a later fragment has no ports
        return None
    first_fragment = bool(frag & 0x2000)  # its UDP length is the whole datagram's
    proto, l4, l4_len = frame[23], 14 + ihl, tot - ihl
    if proto == 6:
        if l4 + 20 > len(frame) or not 20 <= (frame[l4 + 12] >> 4) * 4 <= l4_len:
            return None
    elif proto == 17:
        udp_len = struct.unpack_from("!H", frame, l4 + 4)[0] if l4 + 8 <= len(frame) else 0
        if not 8 <= udp_len or (udp_len > l4_len and not first_fragment):
            return None
    else:
        return None
    key = (frame[30:34], struct.unpack_from("!H", frame, l4 + 2)[0], proto)
    return key if key in frontends else None


def _later_fragment(frame: bytes) -> bool:
    return len(frame) >= 34 and frame[12:14] == b"\x08\x00" and bool(
        struct.unpack_from("!H", frame, 20)[0] & 0x1FFF)


def _fragment_key(frame: bytes):
    return frame[26:30], frame[30:34], frame[18:20], frame[23]


def test_fuzz(dp):
    """100,000 mutated frames (bounded to 120 s): the program always returns OK, SHOT or a
    redirect; never rewrites a frame that is not a well-formed packet to a frontend; rewrites one
    only to a backend of that frontend, or, for a frontend with no backend, into a rejection sent
    back to the sender."""
    import socket

    frontends = {(socket.inet_aton(VIP), 80, 6): (WEB_BACKENDS, 8080),
                 (socket.inet_aton("10.96.0.20"), 53, 17): (DNS_BACKENDS, 9053),
                 (socket.inet_aton("10.96.0.30"), 80, 6): ([], None)}  # no backend: rejects
    templates = [bytes(syn()), bytes(Ether(**ETH) / IP(src=CLIENT, dst=VIP) / TCP(dport=80, flags="A")),
                 bytes(Ether(**ETH) / IP(src=CLIENT, dst="10.96.0.20") / UDP(sport=5, dport=53) / Raw(b"z" * 20)),
                 bytes(Ether(**ETH) / IP(src=CLIENT, dst="10.244.0.11") / TCP(dport=8080)),
                 bytes(Ether(**ETH) / IP(src=CLIENT, dst=VIP, options=[IPOption_NOP()] * 8) / UDP(dport=80))]
    rng = random.Random(20261127)
    started = time.monotonic()
    deadline = started + 120
    rewritten = checked = rejected = hairpins = 0
    fragments = {}  # (src, dst, id, proto) of a translated first fragment -> its new addresses
    for i in range(100_000):
        frame = bytearray(rng.choice(templates))
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(14, len(frame))
            frame[pos] = rng.randrange(256)
        if rng.random() < 0.2:
            frame = frame[:rng.randrange(34, len(frame) + 1)]
        if rng.random() < 0.3:  # keep some headers addressed to a frontend
            frame[30:34] = socket.inet_aton(VIP)
        frame = bytes(frame)
        prog = dp.progs.from_pod if i % 2 == 0 else dp.progs.to_pod
        res = bpf_run(prog.fd, frame)
        assert res.retval in (TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT), frame.hex()
        target = _frontend_of(frame, frontends) if prog is dp.progs.from_pod else None
        if res.retval == TC_ACT_REDIRECT:
            assert target is not None, frame.hex()
            if frontends[target][0]:
                # hairpin: the sender is a backend of the frontend and got itself
                assert socket.inet_ntoa(frame[26:30]) in frontends[target][0], frame.hex()
                assert res.data[26:30] == socket.inet_aton("169.254.42.1")
                assert res.data[30:34] == frame[26:30]
                hairpins += 1
            else:
                # a RST or an ICMP error from the frontend back to the sender
                assert res.data[26:30] == frame[30:34] and res.data[30:34] == frame[26:30]
                assert res.data[23] in (6, 1)
                rejected += 1
        elif res.data != frame and _later_fragment(frame):
            # Only the addresses of a datagram whose first fragment was translated, and to what
            # the first one got.
            key = _fragment_key(frame)
            assert key in fragments, f"rewrote a fragment of an unknown datagram {frame.hex()}"
            assert res.data[26:34] == fragments[key] and res.data[34:] == frame[34:]
        elif res.data != frame:
            assert target is not None or prog is dp.progs.to_pod, f"rewrote a non-frontend frame {frame.hex()}"
            if prog is dp.progs.from_pod and frame[20] & 0x20:
                fragments[_fragment_key(frame)] = res.data[26:34]
            elif prog is dp.progs.to_pod and frame[20] & 0x20:
                fragments[_fragment_key(frame)] = res.data[26:34]
            if target is not None:
                backends, port = frontends[target]
                assert socket.inet_ntoa(res.data[30:34]) in backends
                ihl = (frame[14] & 15) * 4
                assert struct.unpack_from("!H", res.data, 14 + ihl + 2)[0] == port
                rewritten += 1
        if i % 20_000 == 0:
            dp.clear_conntrack()
            fragments.clear()
        checked += 1
        if time.monotonic() > deadline:
            break
    print(f"\nfuzz: {checked} frames in {time.monotonic() - started:.1f}s, {rewritten} rewritten "
          f"(all well-formed frames to a frontend), {rejected} rejected, {hairpins} hairpinned, "
          "0 program errors")
    assert checked >= 50_000, f"only {checked} frames in the time bound"
    assert rewritten > 1000  # the mutations keep enough valid frontend traffic to mean something
