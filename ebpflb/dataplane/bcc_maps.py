"""The MapWriter for real maps: converts the planner's records (ebpflb/maps.py) to and from the
ctypes Key/Leaf types bcc generates from bpf/lb_structs.h, so no layout is written twice.

Also reads the maps only the programs write (conntrack, counters) into plain values.
"""
import socket
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..maps import (BACKENDS, PROTO_NAMES, SERVICES, SLOTS, SRC_RANGES, SVC_META, VIPS,
                    BackendValue, SlotKey, SrcRangeKey, SvcKey, SvcValue, slot_tables)

CT4 = "ct4"
CT4_SYN = "ct4_syn"
CT_TABLES = (CT4, CT4_SYN)  # established (and UDP) flows; half-open TCP flows
STATS = "lb_stats"
STAT_NAMES = ("pass", "dnat_new", "no_backend", "malformed", "fragment", "conntrack_insert_fail",
              "nat_fail", "conntrack_insert", "tcp_no_state", "bad_source", "icmp_nat",
              "external_clusterip", "source_denied", "snat_exhausted", "node_forward",
              "xdp_forward", "xdp_to_tc", "forward_fail", "snat_reuse")


def ip_to_be32(ip: str) -> int:
    """The integer whose native-order bytes are the address in network order (__be32)."""
    return int.from_bytes(socket.inet_aton(ip), sys.byteorder)


def be32_to_ip(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, sys.byteorder))


def port_to_be16(port: int) -> int:
    return int.from_bytes(port.to_bytes(2, "big"), sys.byteorder)


def be16_to_port(value: int) -> int:
    return int.from_bytes(value.to_bytes(2, sys.byteorder), "big")


def _svc_key(t: Any, k: SvcKey) -> Any:
    return t.Key(vip=ip_to_be32(k.vip), port=port_to_be16(k.port), proto=k.proto, scope=k.scope)


def _svc_key_back(c: Any) -> SvcKey:
    return SvcKey(be32_to_ip(c.vip), be16_to_port(c.port), c.proto, c.scope)


def _backend(t: Any, v: BackendValue) -> Any:
    return t.Leaf(addr=ip_to_be32(v.addr), port=port_to_be16(v.port), proto=v.proto,
                  flags=v.flags, svc_id=v.svc_id)


def _backend_back(c: Any) -> BackendValue:
    return BackendValue(be32_to_ip(c.addr), be16_to_port(c.port), c.proto, c.svc_id, c.flags)


def _meta(t: Any, name: str) -> Any:
    leaf = t.Leaf()
    leaf.name = name.encode()
    return leaf


def _src_range_key(t: Any, k: SrcRangeKey) -> Any:
    # LPM trie key: prefixlen counts svc_id's 32 bits (always matched) plus the CIDR's prefix.
    addr, _, prefix = k.cidr.partition("/")
    return t.Key(prefixlen=32 + int(prefix), svc_id=k.svc_id, addr=ip_to_be32(addr))


def _src_range_key_back(c: Any) -> SrcRangeKey:
    return SrcRangeKey(c.svc_id, f"{be32_to_ip(c.addr)}/{c.prefixlen - 32}")


# Map name -> (key to ctypes, key from ctypes, value to ctypes, value from ctypes).
_Conv = Tuple[Callable[[Any, Any], Any], Callable[[Any], Any],
              Callable[[Any, Any], Any], Callable[[Any], Any]]
_CONVERTERS: Dict[str, _Conv] = {
    SERVICES: (_svc_key, _svc_key_back,
               lambda t, v: t.Leaf(svc_id=v.svc_id, count=v.count, flags=v.flags,
                                   affinity_timeout=v.affinity_timeout),
               lambda c: SvcValue(c.svc_id, c.count, c.flags, c.affinity_timeout)),
    SLOTS: (lambda t, k: t.Key(svc_id=k.svc_id, slot=k.slot),
            lambda c: SlotKey(c.svc_id, c.slot),
            lambda t, v: t.Leaf(v), lambda c: c.value),
    BACKENDS: (lambda t, k: t.Key(k), lambda c: c.value, _backend, _backend_back),
    SVC_META: (lambda t, k: t.Key(k), lambda c: c.value, _meta,
               lambda c: c.name.decode(errors="replace")),
    VIPS: (lambda t, k: t.Key(ip_to_be32(k)), lambda c: be32_to_ip(c.value),
           lambda t, v: t.Leaf(v), lambda c: c.value),
    SRC_RANGES: (_src_range_key, _src_range_key_back, lambda t, v: t.Leaf(v), lambda c: c.value),
}


class BccMapWriter:
    """MapWriter over a bcc BPF object (programs or maps-only) whose maps are pinned."""

    def __init__(self, bpf: Any):
        self._bpf = bpf

    @property
    def bpf(self) -> Any:
        return self._bpf

    def _table(self, map_name: str) -> Tuple[Any, _Conv]:
        return self._bpf[map_name.encode()], _CONVERTERS[map_name]

    def update(self, map_name: str, key: Any, value: Any) -> None:
        t, (k_to, _, v_to, _) = self._table(map_name)
        try:
            t[k_to(t, key)] = v_to(t, value)
        except Exception as exc:  # bcc raises bare Exception with the errno text
            raise OSError(f"{map_name}[{key}] update: {exc}") from exc

    def update_many(self, map_name: str, items: Sequence[Tuple[Any, Any]]) -> None:
        """One BPF_MAP_UPDATE_BATCH call for many records."""
        t, (k_to, _, v_to, _) = self._table(map_name)
        keys = (t.Key * len(items))(*(k_to(t, k) for k, _ in items))
        values = (t.Leaf * len(items))(*(v_to(t, v) for _, v in items))
        try:
            t.items_update_batch(keys, values)
        except Exception as exc:  # bcc raises bare Exception with the errno text
            raise OSError(f"{map_name}: batch update of {len(items)} records: {exc}") from exc

    def zero(self, map_name: str, key: int) -> None:
        """Zeroes one id of a per-CPU counter array (every CPU's copy)."""
        t = self._bpf[map_name.encode()]
        try:
            t[t.Key(key)] = t.Leaf()
        except Exception as exc:  # bcc raises bare Exception with the errno text
            raise OSError(f"{map_name}[{key}] zero: {exc}") from exc

    def delete(self, map_name: str, key: Any) -> None:
        t, (k_to, _, _, _) = self._table(map_name)
        try:
            del t[k_to(t, key)]
        except KeyError:
            pass  # already gone: a delete is idempotent

    def dump(self, map_name: str) -> Dict[Any, Any]:
        t, (_, k_back, _, v_back) = self._table(map_name)
        records = {k_back(k): v_back(v) for k, v in t.items()}
        # Slots come back as one table per frontend (see ebpflb.maps.Snapshot).
        return slot_tables(records) if map_name == SLOTS else records


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
    flags: int = 0  # CT_F_* of lb_structs.h: 0x1 established, 0x2 closing, 0x10 SNAT...
    half_open: bool = False  # still in ct4_syn: the client has not completed the handshake
    # SNAT flows (backend on another node): forward entry: the node address and port the
    # packets leave with; reply entry: the client the replies go back to.
    nat2_addr: str = "0.0.0.0"
    nat2_port: int = 0


def _ct_entry(k: Any, v: Any, half_open: bool) -> CtEntry:
    return CtEntry(
        "forward" if k.dir == 0 else "reply",
        be32_to_ip(k.saddr), be16_to_port(k.sport), be32_to_ip(k.daddr), be16_to_port(k.dport),
        PROTO_NAMES.get(k.proto, str(k.proto)),
        be32_to_ip(v.nat_addr), be16_to_port(v.nat_port), v.svc_id, v.backend_id,
        v.created_ns, v.last_seen_ns, v.flags, half_open, be32_to_ip(v.nat2_addr),
        be16_to_port(v.nat2_port))


def read_conntrack(bpf: Any) -> List[CtEntry]:
    """Every entry of both conntrack tables."""
    return [_ct_entry(k, v, name == CT4_SYN)
            for name in CT_TABLES for k, v in bpf[name.encode()].items()]


def lookup_conntrack(bpf: Any, saddr: str, sport: int, daddr: str, dport: int, proto: int,
                     reply: bool = False) -> Optional[CtEntry]:
    """The conntrack entry of one packet's 5-tuple, or None (looked up as the programs do: the
    established table first, then the half-open one)."""
    for name in CT_TABLES:
        t = bpf[name.encode()]
        key = t.Key(saddr=ip_to_be32(saddr), daddr=ip_to_be32(daddr), sport=port_to_be16(sport),
                    dport=port_to_be16(dport), proto=proto, dir=1 if reply else 0, pad=0)
        try:
            return _ct_entry(key, t[key], name == CT4_SYN)
        except KeyError:
            continue
    return None


def read_stats(bpf: Any) -> Dict[str, int]:
    """Global verdict counters, summed over CPUs."""
    t = bpf[STATS.encode()]
    return {name: int(sum(t[t.Key(i)])) for i, name in enumerate(STAT_NAMES)}


def lookup_affinity(bpf: Any, svc_id: int, client: str) -> Optional[Tuple[int, int]]:
    """(backend id, last used ns) of a client's session-affinity binding to a frontend, or None."""
    t = bpf[b"lb4_affinity"]
    try:
        v = t[t.Key(svc_id=svc_id, client=ip_to_be32(client))]
    except KeyError:
        return None
    return v.backend_id, v.last_used_ns
