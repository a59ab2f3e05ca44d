"""Conntrack aging rules (pure): a flow is aged by both of its entries, by the state they make
together (half-closed after one FIN, closed after a RST or two FINs)."""
import socket

import pytest

from ebpflb.dataplane.config import CtTimeouts
from ebpflb.dataplane.ct_gc import KEY, VALUE, expired_keys

pytestmark = pytest.mark.unit

S = 1_000_000_000
T = CtTimeouts(tcp_syn=60, tcp_established=3600, tcp_close=10, udp=30)
CLIENT, VIP, BACKEND = (socket.inet_aton(a) for a in ("10.244.0.2", "10.96.0.10", "10.244.0.11"))
CPORT, VPORT, BPORT = (p.to_bytes(2, "big") for p in (40000, 80, 8080))
NO_ADDR, NO_PORT = bytes(4), bytes(2)
NODE, SNAT_PORT = socket.inet_aton("192.168.200.10"), (61001).to_bytes(2, "big")
CT_F_EXTERNAL_SNAT = 0x8 | 0x10


def flow(proto, fwd_last, fwd_flags, rev_last=None, rev_flags=0):
    keys = [KEY.pack(CLIENT, VIP, CPORT, VPORT, proto, 0, 0)]
    values = [VALUE.pack(0, fwd_last, BACKEND, BPORT, fwd_flags, 1, 1, NO_ADDR, NO_PORT, 0, 0, 0)]
    if rev_last is not None:
        keys.append(KEY.pack(BACKEND, CLIENT, BPORT, CPORT, proto, 1, 0))
        values.append(VALUE.pack(0, rev_last, VIP, VPORT, rev_flags, 1, 1, NO_ADDR, NO_PORT, 0, 0, 0))
    return b"".join(keys), b"".join(values)


@pytest.mark.parametrize("case,proto,fwd,rev,now,expired", [
    ("udp idle past 30 s", 17, (0, 0), (0, 0), 31 * S, 2),
    ("udp, the reply side still active", 17, (0, 0), (20 * S, 0), 31 * S, 0),
    ("tcp syn only, 59 s", 6, (0, 0), (0, 0), 59 * S, 0),
    ("tcp syn only, 61 s", 6, (0, 0), (0, 0), 61 * S, 2),
    ("tcp established, 61 s", 6, (0, 1), (0, 1), 61 * S, 0),
    ("tcp established, 3601 s", 6, (0, 1), (0, 1), 3601 * S, 2),
    ("tcp closed by one side only (half-closed), 11 s", 6, (0, 1), (0, 3), 11 * S, 0),
    ("tcp half-closed, both sides quiet past tcp_time_wait", 6, (0, 1), (0, 3), 61 * S, 2),
    ("tcp closed by both sides, 11 s", 6, (0, 3), (0, 3), 11 * S, 2),
    ("tcp reset by either side, 11 s", 6, (0, 1), (0, 0x43), 11 * S, 2),
    ("tcp reset, the other side active 5 s ago", 6, (5 * S, 1), (0, 0x43), 11 * S, 0),
    ("tcp closing, 9 s", 6, (0, 3), (0, 1), 9 * S, 0),
    ("orphan forward entry, udp", 17, (0, 0), None, 31 * S, 1),
])
def test_aging(case, proto, fwd, rev, now, expired):
    keys, values = flow(proto, fwd[0], fwd[1], *(rev if rev else (None, 0)))
    assert len(expired_keys(keys, values, now, T)) == expired


def snat_flow(fwd_last, rev_last, flags=0):
    """A flow from outside to a backend on another node: forward key client -> frontend (nat
    backend, nat2 the node's SNAT address), reply key backend -> SNAT address (nat frontend, nat2
    the client)."""
    f = CT_F_EXTERNAL_SNAT | flags
    keys = [KEY.pack(CLIENT, VIP, CPORT, VPORT, 6, 0, 0),
            KEY.pack(BACKEND, NODE, BPORT, SNAT_PORT, 6, 1, 0)]
    values = [VALUE.pack(0, fwd_last, BACKEND, BPORT, f, 1, 1, NODE, SNAT_PORT, 0, 0, 0),
              VALUE.pack(0, rev_last, VIP, VPORT, f, 1, 1, CLIENT, CPORT, 0, 0, 0)]
    return b"".join(keys), b"".join(values)


def test_snat_flow_is_aged_by_both_entries():
    # The client is silent for an hour but the backend keeps sending: nothing expires.
    keys, values = snat_flow(0, 3000 * S, flags=0x1)
    assert expired_keys(keys, values, 3601 * S, T) == []
    # Both sides idle past the established lifetime: both entries go.
    keys, values = snat_flow(0, 0, flags=0x1)
    assert len(expired_keys(keys, values, 3601 * S, T)) == 2


def test_closed_snat_flow_keeps_its_port_through_time_wait():
    """A closed flow to another node's backend keeps its SNAT port for tcp_time_wait (the
    backend's TIME_WAIT), not just tcp_close: a reused 4-tuple would meet PAWS there."""
    t = CtTimeouts(tcp_close=10, tcp_time_wait=60)
    keys, values = snat_flow(0, 0, flags=0x1 | 0x2)
    assert expired_keys(keys, values, 30 * S, t) == []
    assert len(expired_keys(keys, values, 61 * S, t)) == 2
    keys, values = flow(6, 0, 0x3, 0, 0x3)  # the same, not SNATed: tcp_close applies
    assert len(expired_keys(keys, values, 11 * S, t)) == 2


def test_sweep_names_the_service_ids_of_the_flows_that_stay():
    """The agent releases a draining frontend when no entry that stays holds its service id."""
    from ebpflb.dataplane.ct_gc import sweep

    def one(svc_id, last):
        return (KEY.pack(CLIENT, VIP, (40000 + svc_id).to_bytes(2, "big"), VPORT, 6, 0, 0),
                VALUE.pack(0, last, BACKEND, BPORT, 0x1, svc_id, 1, NO_ADDR, NO_PORT, 0, 0, 0))

    entries = [one(7, 3000 * S), one(8, 0)]  # svc 8's flow has been idle past its lifetime
    keys, values = b"".join(k for k, _ in entries), b"".join(v for _, v in entries)
    dead, live = sweep(keys, values, 3601 * S, T)
    assert (dead, live) == ([entries[1][0]], {7})


def test_a_flow_with_a_new_source_port_is_aged_by_both_entries():
    """One client port reaching one backend through two frontends: the second flow's source port
    was rewritten (CT_F_PORT_NAT), so its reply entry is keyed by the new port, not the client's.
    One-way UDP refreshes only the forward entry; the pair is still found, and nothing expires."""
    new_port = (2000).to_bytes(2, "big")
    keys = KEY.pack(CLIENT, VIP, CPORT, VPORT, 17, 0, 0) + KEY.pack(BACKEND, CLIENT, BPORT,
                                                                    new_port, 17, 1, 0)
    values = (VALUE.pack(0, 25 * S, BACKEND, BPORT, 0x20, 1, 1, CLIENT, new_port, 0, 0, 0)
              + VALUE.pack(0, 0, VIP, VPORT, 0x20, 1, 1, CLIENT, CPORT, 0, 0, 0))
    assert expired_keys(keys, values, 31 * S, T) == []
    assert len(expired_keys(keys, values, 56 * S, T)) == 2


def test_the_service_id_reader_follows_the_value_layout():
    from ebpflb.dataplane.ct_gc import CT4, CT6

    raw = VALUE.pack(1, 2, BACKEND, BPORT, 0x1f, 4242, 7, NODE, SNAT_PORT, 0, 9, 0)
    assert CT4.svc_id_only.size == VALUE.size and CT4.svc_id_only.unpack(raw) == (4242,)
    addr6 = socket.inet_pton(socket.AF_INET6, "fd00:10:244::5")
    raw6 = CT6.value.pack(1, 2, addr6, BPORT, 0x1f, 4343, 7, addr6, SNAT_PORT, 0, 9, 0)
    assert CT6.svc_id_only.size == CT6.value.size and CT6.svc_id_only.unpack(raw6) == (4343,)


def test_ipv6_flows_age_by_both_entries_as_ipv4_ones():
    """The same pair rule over ct6 entries: a flow whose forward side is fresh keeps its quiet
    reply entry; alone, each entry ages by its own state."""
    from ebpflb.dataplane.ct_gc import CT6

    a6 = lambda ip: socket.inet_pton(socket.AF_INET6, ip)  # noqa: E731
    client, vip, backend = a6("fd00:10:244:1::7"), a6("fd00:96::10"), a6("fd00:10:244:2::9")
    cport, vport, bport = (40000).to_bytes(2, "big"), (80).to_bytes(2, "big"), (8080).to_bytes(2, "big")
    fwd = CT6.key.pack(client, vip, cport, vport, 17, 0, 0)
    rev = CT6.key.pack(backend, client, bport, cport, 17, 1, 0)
    zero = bytes(16)
    fwd_v = CT6.value.pack(0, 50 * S, backend, bport, 0, 3, 4, zero, b"\0\0", 0, 1, 0)
    rev_v = CT6.value.pack(0, 1 * S, vip, vport, 0, 3, 4, zero, b"\0\0", 0, 0, 0)
    keys, values = fwd + rev, fwd_v + rev_v
    assert expired_keys(keys, values, 79 * S, T, CT6) == []  # udp 30 s since the fresher side
    assert len(expired_keys(keys, values, 81 * S, T, CT6)) == 2
    assert len(expired_keys(rev, rev_v, 32 * S, T, CT6)) == 1  # alone: its own age
