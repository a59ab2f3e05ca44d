"""The MapWriter for real maps: the planner's records (ebpflb/maps.py) packed into the layouts bcc
generates from bpf/lb_structs.h (ebpflb/dataplane/codec.py checks them), written and read in
batch syscalls.

Also reads the maps only the programs write (conntrack, counters) into plain values.
"""
import ctypes
import errno
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .. import abi
from ..maps import PROTO_NAMES, SLOTS, MapId, slot_tables
from .codec import MapCodec, codecs
from .libbpf import delete_batch, delete_elem, lookup_elem, update_batch, update_elem
from .percpu import read_hash_raw

CT4 = "ct4"
CT4_SYN = "ct4_syn"
CT_TABLES = (CT4, CT4_SYN)  # established (and UDP) flows; half-open TCP flows
CT6_TABLES = ("ct6", "ct6_syn")  # the same for IPv6
HALF_OPEN_TABLES = ("ct4_syn", "ct6_syn")
STATS = "lb_stats"
VERDICTS = "lb_verdicts"
# The counters' names for people: the C names lowercased, conntrack spelled out.
_SPELLED = {"STAT_CT_INSERT_FAIL": "conntrack_insert_fail", "STAT_CT_INSERT": "conntrack_insert",
            "STAT_CT_COLLISION": "conntrack_collision", "STAT_CT_REBUILT": "conntrack_rebuilt"}


def _names(members, prefix: str, upto: str) -> Tuple[str, ...]:
    return tuple(_SPELLED.get(m, m[len(prefix):].lower()) for m in members[:members.index(upto)])


_STATS = abi.ENUM_LB_STAT
# enum lb_stat: the drop reasons (one per dropped packet), then the events.
DROP_REASONS = _names(_STATS, "STAT_", "STAT_DROP_REASONS")
EVENTS = _names(_STATS[_STATS.index("STAT_DROP_REASONS") + 1:], "STAT_", "STAT_MAX")
STAT_NAMES = DROP_REASONS + EVENTS  # in index order
# enum lb_at and enum lb_verdict: where a program run decided, and what.
VERDICT_HOOKS = _names(abi.ENUM_LB_AT, "AT_", "AT_MAX")
VERDICT_NAMES = _names(abi.ENUM_LB_VERDICT, "VERDICT_", "VERDICT_MAX")


def ip_to_be32(ip: str) -> int:
    """The integer whose native-order bytes are the address in network order (__be32)."""
    return int.from_bytes(socket.inet_aton(ip), sys.byteorder)


def be32_to_ip(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, sys.byteorder))


def _ip_of(field: Any) -> str:
    """A conntrack address field as text: an IPv4 __be32, or an IPv6 struct lb6_addr."""
    if isinstance(field, int):
        return be32_to_ip(field)
    return socket.inet_ntop(socket.AF_INET6, bytes(field))


def _addr_field(table: Any, name: str, ip: str) -> Any:
    """The value of a key's address field for `ip`, in the table's own type."""
    if ":" not in ip:
        return ip_to_be32(ip)
    return type(getattr(table.Key(), name)).from_buffer_copy(
        socket.inet_pton(socket.AF_INET6, ip))


def port_to_be16(port: int) -> int:
    return int.from_bytes(port.to_bytes(2, "big"), sys.byteorder)


def be16_to_port(value: int) -> int:
    return int.from_bytes(value.to_bytes(2, sys.byteorder), "big")


BATCH = 65536  # records per batch syscall (bounds the kernel's and our buffers)
# A map type without the batch operation: EINVAL, EOPNOTSUPP, or the kernel's internal ENOTSUPP
# (524), which Python's errno module does not name.
_NOT_SUPPORTED = (errno.EINVAL, errno.EOPNOTSUPP, 524)


class BccMapReader:
    """Reads the maps of a bcc BPF object (programs or maps-only) whose maps are pinned: records
    unpacked (ebpflb.dataplane.codec) from batch lookups. What read-only commands get."""

    def __init__(self, bpf: Any):
        self._bpf = bpf
        self._codecs: Optional[Dict[MapId, MapCodec]] = None

    @property
    def bpf(self) -> Any:
        return self._bpf

    def _codec(self, map_name: str) -> Tuple[Any, MapCodec]:
        if self._codecs is None:
            self._codecs = codecs(self._bpf)
        return self._bpf[str(map_name).encode()], self._codecs[MapId(map_name)]

    def lookup(self, map_id: MapId, key: Any) -> Any:
        """One record's value, or None (a point read: tests and benchmarks watching the maps)."""
        t, codec = self._codec(map_id)
        raw = lookup_elem(t.map_fd, codec.keys([key]), codec.value.size)
        if raw is None:
            return None
        return next(iter(codec.records(codec.keys([key]), raw).values()))

    def flow_service_ids(self) -> Optional[Set[int]]:
        """The service ids the conntrack entries hold; None for maps without conntrack."""
        from .ct_gc import flow_service_ids

        return flow_service_ids(self._bpf)

    def dump(self, map_name: str) -> Dict[Any, Any]:
        t, codec = self._codec(map_name)
        try:
            keys, values, _ = read_hash_raw(t)
            records = codec.records(keys, values)
        except OSError as exc:
            if exc.errno not in _NOT_SUPPORTED:
                raise
            # A map type without batch lookups (the LPM trie): one by one, through bcc.
            records = {}
            for k, v in t.items():
                records.update(codec.records(bytes(k), bytes(v)))
        # Slots come back as one table per frontend (see ebpflb.maps.Records).
        return slot_tables(records) if map_name == SLOTS else records


class BccMapWriter(BccMapReader):
    """The MapWriter of the agent and `ebpflb sync`: records go down packed, a batch per call."""

    def upsert(self, map_id: MapId, keys: Sequence[Any], values: Sequence[Any]) -> None:
        """BPF_MAP_UPDATE_BATCH calls of packed records."""
        t, codec = self._codec(map_id)
        for at in range(0, len(keys), BATCH):
            part_keys, part_values = keys[at:at + BATCH], values[at:at + BATCH]
            raw_keys, raw_values = codec.keys(part_keys), codec.values(part_values)
            try:
                if len(part_keys) == 1:
                    update_elem(t.map_fd, raw_keys, raw_values)
                else:
                    update_batch(t.map_fd, raw_keys, raw_values, len(part_keys))
            except OSError as exc:
                if exc.errno in _NOT_SUPPORTED and \
                        getattr(exc, "processed", None) == 0:
                    # A map type without batch updates (LPM tries on older kernels).
                    for key, value in zip(part_keys, part_values):
                        self.upsert(map_id, [key], [value])
                    continue
                what = f"[{part_keys[0]}]" if len(part_keys) == 1 else f" ({len(part_keys)} records)"
                raise OSError(exc.errno, f"{map_id}{what} update: {exc.strerror}") from exc

    def delete(self, map_id: MapId, keys: Sequence[Any]) -> None:
        """BPF_MAP_DELETE_BATCH calls; a key already gone is skipped, not an error."""
        t, codec = self._codec(map_id)
        size = codec.key.size
        for at in range(0, len(keys), BATCH):
            part = keys[at:at + BATCH]
            raw = codec.keys(part)
            if len(part) == 1:
                try:
                    delete_elem(t.map_fd, raw)
                except OSError as exc:
                    raise OSError(exc.errno, f"{map_id}[{part[0]}] delete: {exc.strerror}") from exc
                continue
            done = 0
            while done < len(part):
                try:
                    delete_batch(t.map_fd, raw[done * size:], len(part) - done)
                    break
                except OSError as exc:
                    processed = getattr(exc, "processed", 0)
                    if exc.errno == errno.ENOENT:
                        done += processed + 1  # the key at `processed` was already gone
                        continue
                    if exc.errno in _NOT_SUPPORTED and processed == 0:
                        for key in part[done:]:
                            self.delete(map_id, [key])
                        break
                    raise OSError(exc.errno, f"{map_id}: batch delete of {len(part)} "
                                             f"records: {exc.strerror}") from exc

    def zero(self, map_id: MapId, ids: Sequence[int]) -> None:
        """Zeroes ids of a per-CPU counter array (every CPU's copy), a batch per call."""
        t = self._bpf[str(map_id).encode()]
        value_size = ctypes.sizeof(t.Leaf)  # every possible CPU's copy, as the syscall wants
        for at in range(0, len(ids), BATCH):
            part = ids[at:at + BATCH]
            raw = struct.pack(f"={len(part)}I", *part)
            try:
                update_batch(t.map_fd, raw, bytes(value_size * len(part)), len(part))
            except OSError as exc:
                raise OSError(exc.errno, f"{map_id}: zeroing {len(part)} ids: "
                                         f"{exc.strerror}") from exc


@dataclass(frozen=True)
class CtEntry:
    """One conntrack entry as the CLI and tests see it."""
    direction: str  # "forward" (client -> frontend) or "reply" (backend -> client)
    saddr: str
    sport: int
    daddr: str
    dport: int
    protocol: str
    nat_addr: str
    nat_port: int
    svc_id: int
    backend_id: int
    created_ns: int
    last_seen_ns: int
    flags: int = 0  # CT_F_* (ebpflb.maps)
    half_open: bool = False  # still in ct4_syn: the client has not completed the handshake
    # SNAT flows (backend on another node): forward entry: the node address and port the
    # packets leave with; reply entry: the client the replies go back to.
    nat2_addr: str = "0.0.0.0"
    nat2_port: int = 0
    ifindex: int = 0  # forward entries: the device whose packet created the flow


def _ct_entry(k: Any, v: Any, half_open: bool) -> CtEntry:
    return CtEntry(
        "forward" if k.dir == 0 else "reply",
        _ip_of(k.saddr), be16_to_port(k.sport), _ip_of(k.daddr), be16_to_port(k.dport),
        PROTO_NAMES.get(k.proto, str(k.proto)),
        _ip_of(v.nat_addr), be16_to_port(v.nat_port), v.svc_id, v.backend_id,
        v.created_ns, v.last_seen_ns, v.flags, half_open, _ip_of(v.nat2_addr),
        be16_to_port(v.nat2_port), v.ifindex)


def read_conntrack(bpf: Any) -> List[CtEntry]:
    """Every entry of the conntrack tables, IPv4 then IPv6."""
    return [_ct_entry(k, v, name in HALF_OPEN_TABLES)
            for name in CT_TABLES + CT6_TABLES for k, v in bpf[name.encode()].items()]


def lookup_conntrack(bpf: Any, saddr: str, sport: int, daddr: str, dport: int, proto: int,
                     reply: bool = False) -> Optional[CtEntry]:
    """The conntrack entry of one packet's 5-tuple (either family), or None (looked up as the
    programs do: the established table first, then the half-open one)."""
    for name in (CT6_TABLES if ":" in saddr else CT_TABLES):
        t = bpf[name.encode()]
        key = t.Key(saddr=_addr_field(t, "saddr", saddr), daddr=_addr_field(t, "daddr", daddr),
                    sport=port_to_be16(sport), dport=port_to_be16(dport), proto=proto,
                    dir=1 if reply else 0, pad=0)
        try:
            return _ct_entry(key, t[key], name in HALF_OPEN_TABLES)
        except KeyError:
            continue
    return None


def read_stats(bpf: Any) -> Dict[str, int]:
    """The drop reasons and events (lb_stats), summed over CPUs (one batch read)."""
    from .percpu import read_counter_array

    summed = read_counter_array(bpf[STATS.encode()])
    return {name: int(summed[i]) for i, name in enumerate(STAT_NAMES)}


def read_verdicts(bpf: Any) -> Dict[Tuple[str, str], int]:
    """The verdict counters (lb_verdicts) by (hook, verdict), summed over CPUs (one batch
    read)."""
    from .percpu import read_counter_array

    summed = read_counter_array(bpf[VERDICTS.encode()])
    width = len(VERDICT_NAMES)
    return {(hook, verdict): int(summed[h * width + v])
            for h, hook in enumerate(VERDICT_HOOKS) for v, verdict in enumerate(VERDICT_NAMES)}


def read_counters(bpf: Any) -> Dict[str, int]:
    """Every global counter in one flat dict: the drop reasons and events by name, and the
    verdicts as "hook/verdict" (as `ebpflb stats` and explain name them)."""
    out = read_stats(bpf)
    out.update({f"{hook}/{verdict}": n for (hook, verdict), n in read_verdicts(bpf).items()})
    return out


def lookup_sock_affinity(bpf: Any, svc_id: int, netns_cookie: int) -> Optional[Tuple[int, int]]:
    """(backend id, last used ns) of a network namespace's socket-hook affinity binding to a
    frontend, or None."""
    t = bpf[b"lb4_sock_affinity"]
    try:
        v = t[t.Key(svc_id=svc_id, netns_cookie=netns_cookie)]
    except KeyError:
        return None
    return v.backend_id, v.last_used_ns


def lookup_affinity(bpf: Any, svc_id: int, client: str) -> Optional[Tuple[int, int]]:
    """(backend id, last used ns) of a client's session-affinity binding to a frontend, or None."""
    t = bpf[b"lb6_affinity" if ":" in client else b"lb4_affinity"]
    try:
        v = t[t.Key(svc_id=svc_id, client=_addr_field(t, "client", client))]
    except KeyError:
        return None
    return v.backend_id, v.last_used_ns
