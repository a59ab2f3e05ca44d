"""Conntrack garbage collection (run by the agent every few seconds): deletes the entries of flows
idle longer than their state allows (ebpflb.dataplane.config.CtTimeouts, the values compiled
into the programs).

A flow is aged by both of its entries: its idle time is the shorter of the two sides', its
lifetime that of the state the two make together (CtTimeouts.flow_lifetime: a FIN from one side
leaves the flow half-closed, the other side may still send; a RST, or a FIN from both, closes
it). The programs only refresh the entry of the direction a packet travels, so aging an entry
alone would cut a flow whose one side is quiet (a server pushing to a silent client).
Entries are read and deleted in batches; the key and value formats are built from the compiled
layouts (ebpflb/abi.py) and checked against bcc's types when the collector is created.
"""
import ctypes
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Set, Tuple

from ..maps import CT_F_ESTABLISHED, CT_F_HAIRPIN, CT_F_NETFILTER, CT_F_SRC_NAT
from ..maps import HAIRPIN_ADDR as HAIRPIN_ADDR_TEXT
from ..maps import HAIRPIN_ADDR6 as HAIRPIN_ADDR6_TEXT
from .config import CtTimeouts
from .layouts import offset_of, packed
from .percpu import read_hash_raw

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class CtLayout:
    """One family's conntrack tables: names, key and value formats as compiled (addresses and
    ports stay raw network-order bytes: only compared, never printed here), the hairpin
    address, and how a text address becomes bytes."""
    tables: Tuple[bytes, bytes]  # (half-open, main)
    key: struct.Struct
    value: struct.Struct
    svc_id_only: struct.Struct
    hairpin: bytes
    family: int  # socket.AF_INET or AF_INET6

    def address(self, text: str) -> bytes:
        return socket.inet_pton(self.family, text)


def _layout(n: int, width: int, hairpin: bytes, family: int) -> CtLayout:
    a = f"{width}s"
    key = packed(f"struct ct{n}_key", {"saddr": a, "daddr": a, "sport": "2s", "dport": "2s",
                                         "proto": "B", "dir": "B", "pad": "H"})
    value = packed(f"struct ct{n}_entry", {
        "created_ns": "Q", "last_seen_ns": "Q", "nat_addr": a, "nat_port": "2s", "flags": "H",
        "svc_id": "I", "backend_id": "I", "nat2_addr": a, "nat2_port": "2s", "pad": "H",
        "ifindex": "I", "pad2": "I"})
    at = offset_of(f"struct ct{n}_entry", "svc_id")
    svc_id_only = struct.Struct(f"={at}xI{value.size - at - 4}x")
    return CtLayout((f"ct{n}_syn".encode(), f"ct{n}".encode()), key, value, svc_id_only, hairpin,
                    family)


CT4 = _layout(4, 4, socket.inet_aton(HAIRPIN_ADDR_TEXT), socket.AF_INET)
CT6 = _layout(6, 16, socket.inet_pton(socket.AF_INET6, HAIRPIN_ADDR6_TEXT), socket.AF_INET6)
LAYOUTS = (CT4, CT6)
KEY, VALUE = CT4.key, CT4.value  # the IPv4 formats, as the tests build entries
TCP = 6
NS = 1_000_000_000


@dataclass(frozen=True)
class GcResult:
    scanned: int
    deleted: int
    svc_ids: FrozenSet[int] = frozenset()  # the service ids the remaining entries hold
    netfilter: int = 0  # flows netfilter translates (taken over from kube-proxy), still there


def _lifetime_ns(proto: int, flags: int, t: CtTimeouts) -> int:
    return t.lifetime(flags, proto) * NS


def expired_keys(keys: bytes, values: bytes, now_ns: int, timeouts: CtTimeouts,
                 layout: CtLayout = CT4) -> List[bytes]:
    """The raw keys to delete (pure: tested without a kernel)."""
    return sweep(keys, values, now_ns, timeouts, layout)[0]


def _entries(keys: bytes, values: bytes, layout: CtLayout) -> Dict[bytes, Tuple]:
    key, value = layout.key, layout.value
    entries: Dict[bytes, Tuple] = {}
    for i in range(len(keys) // key.size):
        raw = keys[i * key.size:(i + 1) * key.size]
        entries[raw] = key.unpack(raw) + value.unpack_from(values, i * value.size)
    return entries


def sweep(keys: bytes, values: bytes, now_ns: int, timeouts: CtTimeouts,
          layout: CtLayout = CT4,
          netfilter: Optional[List[Tuple[bytes, Tuple]]] = None) -> Tuple[List[bytes], Set[int]]:
    """(the raw keys to delete, the service ids of the entries that stay) (pure). A flow
    netfilter translates (CT_F_NETFILTER, taken over from kube-proxy) is not aged here: it
    lives as long as netfilter's entry, which the caller checks (its key and fields are appended
    to `netfilter`)."""
    entries = _entries(keys, values, layout)
    out = []
    live: Set[int] = set()
    for raw, (saddr, daddr, sport, dport, proto, direction, _pad, _created, last, nat_addr,
              nat_port, flags, svc_id, _be, nat2_addr, nat2_port, _pad2, _ifindex, _pad3) in entries.items():
        if flags & CT_F_NETFILTER:
            live.add(svc_id)
            if netfilter is not None:
                netfilter.append((raw, entries[raw]))
            continue
        # SNAT: forward client -> frontend leaves as nat2 -> backend, reply backend -> nat2;
        # hairpin: the pod reached itself, replies go to the hairpin address.
        other = entries.get(_peer(raw, entries[raw], layout))
        if other is not None:
            idle = now_ns - max(last, other[8])
            over = idle > timeouts.flow_lifetime(flags, other[11], proto) * NS
        else:
            over = now_ns - last > _lifetime_ns(proto, flags, timeouts)
        if over:
            out.append(raw)
        else:
            live.add(svc_id)
    return out, live


def flow_service_ids(bpf: Any) -> Optional[Set[int]]:
    """The service ids the conntrack entries hold (both tables; the half-open one first, see
    ConntrackGc); None when `bpf` has no conntrack maps."""
    ids: Set[int] = set()
    for layout in LAYOUTS:
        for name in layout.tables:
            try:
                table = bpf[name]
            except KeyError:
                return None
            _keys, values, count = read_hash_raw(table)
            # iter_unpack: a million entries in a fraction of a second (a full sync reads them).
            ids.update(v for (v,) in layout.svc_id_only.iter_unpack(
                values[:count * layout.value.size]))
    return ids


class ConntrackGc:
    """Every conntrack table (ct4 and ct4_syn, ct6 and ct6_syn): a flow's two entries always sit
    in the same one."""

    def __init__(self, bpf: Any, timeouts: CtTimeouts,
                 netfilter_alive: Optional[Callable[[int, int, Tuple[str, int, str, int]],
                                                    bool]] = None):
        """`netfilter_alive(family, proto, (src, sport, dst, dport))`: whether netfilter still
        holds a flow's entry (ebpflb.takeover.nf_conntrack.exists); None: never asked, the
        flows netfilter translates are kept."""
        # The half-open table first: a flow promoted to ct4 while the two are read is then
        # seen in ct4, never in neither (its service id would look unused).
        self.tables = [(bpf[name], layout) for layout in LAYOUTS for name in layout.tables]
        self.timeouts = timeouts
        self.netfilter_alive = netfilter_alive
        for t, layout in self.tables:
            if (ctypes.sizeof(t.Key), ctypes.sizeof(t.Leaf)) != (layout.key.size,
                                                                 layout.value.size):
                raise ValueError(f"conntrack layout changed: key {ctypes.sizeof(t.Key)} B, value "
                                 f"{ctypes.sizeof(t.Leaf)} B; update ebpflb/dataplane/ct_gc.py")

    def run(self, now_ns: int) -> GcResult:
        scanned = deleted = kept = 0
        svc_ids: Set[int] = set()
        for table, layout in self.tables:
            keys, values, count = read_hash_raw(table)
            netfilter: List[Tuple[bytes, Tuple]] = []
            dead, live = sweep(keys, values, now_ns, self.timeouts, layout, netfilter)
            gone = self._netfilter_gone(netfilter, layout)
            dead += gone
            kept += len(netfilter) - len(gone)
            svc_ids |= live
            scanned += count
            deleted += len(dead)
            if dead:
                _delete(table, b"".join(dead), len(dead))
        if deleted:
            log.debug("conntrack GC: %d of %d entries expired", deleted, scanned)
        return GcResult(scanned, deleted, frozenset(svc_ids), kept)

    def _netfilter_gone(self, entries: List[Tuple[bytes, Tuple]], layout: CtLayout) -> List[bytes]:
        """The keys of flows netfilter translated whose netfilter entry is gone (the flow
        ended there, or its entry expired: the flow is over, as it would be under kube-proxy)."""
        if not entries or self.netfilter_alive is None:
            return []
        family = 6 if layout.family == socket.AF_INET6 else 4
        gone = []
        for raw, (saddr, daddr, sport, dport, proto, *_rest) in entries:
            orig = (socket.inet_ntop(layout.family, saddr), int.from_bytes(sport, "big"),
                    socket.inet_ntop(layout.family, daddr), int.from_bytes(dport, "big"))
            try:
                alive = self.netfilter_alive(family, proto, orig)
            except (OSError, RuntimeError) as exc:  # asked again at the next GC
                log.warning("conntrack GC: netfilter's entry of %s not read: %s", orig, exc)
                continue
            if not alive:
                gone.append(raw)
        return gone


def _delete(table: Any, raw_keys: bytes, count: int) -> None:
    batch = (table.Key * count).from_buffer_copy(raw_keys)
    try:
        table.items_delete_batch(batch)
    except Exception as exc:  # bcc raises bare Exception; an entry may be gone already
        log.debug("conntrack GC batch delete: %s; deleting one by one", exc)
        for key in batch:
            try:
                del table[key]
            except KeyError:
                pass


def _backend_of(direction: int, saddr: bytes, sport: bytes, nat_addr: bytes, nat_port: bytes):
    return (nat_addr, nat_port) if direction == 0 else (saddr, sport)


def purge_keys(keys: bytes, values: bytes, svc_ids, udp_backends, tcp_backends=(),
               half_open: bool = False, layout: CtLayout = CT4) -> List[bytes]:
    """Raw keys of the entries ebpflb.plan.conntrack_purge names (pure). udp_backends and
    tcp_backends hold (svc_id, address, port) of either family (only the table's family's
    count); TCP ones count only in the half-open table (half_open), and only for flows the
    backend never answered (its reply entry saw no ACK)."""
    def wanted(backends):
        return {(svc, layout.address(addr), port.to_bytes(2, "big")) for svc, addr, port in backends
                if (":" in addr) == (layout.family == socket.AF_INET6)}

    udp, tcp = wanted(udp_backends), wanted(tcp_backends) if half_open else set()
    entries = _entries(keys, values, layout)
    out = []
    for raw, fields in entries.items():
        saddr, daddr, sport, dport, proto, direction, _pad = fields[:7]
        nat_addr, nat_port, flags, svc_id = fields[9], fields[10], fields[11], fields[12]
        backend = (svc_id, *_backend_of(direction, saddr, sport, nat_addr, nat_port))
        if svc_id in svc_ids:
            out.append(raw)
        elif proto == 17 and backend in udp:
            out.append(raw)
        elif proto == TCP and backend in tcp:
            if direction == 1:
                answered = flags & CT_F_ESTABLISHED
            else:
                peer = entries.get(_peer(raw, fields, layout))
                answered = peer is not None and peer[11] & CT_F_ESTABLISHED
            if not answered:
                out.append(raw)
    return out


def _peer(raw: bytes, fields: Tuple, layout: CtLayout = CT4) -> bytes:
    """The key of the other entry of the flow an entry belongs to."""
    saddr, daddr, sport, dport, proto, direction, _pad = fields[:7]
    nat_addr, nat_port, flags = fields[9], fields[10], fields[11]
    nat2_addr, nat2_port = fields[14], fields[15]
    pack = layout.key.pack
    if flags & CT_F_SRC_NAT:
        if direction == 0:
            return pack(nat_addr, nat2_addr, nat_port, nat2_port, proto, 1, 0)
        return pack(nat2_addr, nat_addr, nat2_port, nat_port, proto, 0, 0)
    hairpin = flags & CT_F_HAIRPIN
    if direction == 0:
        return pack(nat_addr, layout.hairpin if hairpin else saddr, nat_port, sport, proto, 1, 0)
    return pack(saddr if hairpin else daddr, nat_addr, dport, nat_port, proto, 0, 0)


def purge(bpf: Any, svc_ids, udp_backends, tcp_backends=()) -> int:
    """Deletes the conntrack entries of removed frontends, of UDP flows to removed backends, and
    of half-open TCP flows that removed backends never answered."""
    deleted = 0
    for layout in LAYOUTS:
        for name in layout.tables:
            table = bpf[name]
            keys, values, _ = read_hash_raw(table)
            dead = purge_keys(keys, values, svc_ids, udp_backends, tcp_backends,
                              half_open=name == layout.tables[0], layout=layout)
            if dead:
                _delete(table, b"".join(dead), len(dead))
                deleted += len(dead)
    return deleted
