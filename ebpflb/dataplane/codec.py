"""Records <-> the bytes the kernel keeps for the control-plane maps (an edge of apply).

A full sync writes hundreds of thousands of records; building a ctypes object per record costs
more than the kernel's insert. Each map's key and value are therefore packed with `struct` into
one buffer per batch. The layout is not written here: a `Layout` takes the field offsets and
sizes from the ctypes types bcc generates from bpf/lb_structs.h and only says how each named field
is encoded, and it refuses (at load) a struct whose fields no longer match, so a header change
cannot be packed wrongly. Addresses and ports are network order: `4s` from inet_aton, `2s` from a
precomputed big-endian table.
"""
from __future__ import annotations

import ctypes
import socket
import struct
from itertools import chain
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from ..maps import (BACKENDS, BACKENDS6, NODE_IFS, NODE_IFS6, POD_ADDRS, POD_ADDRS6, SERVICES,
                    SERVICES6, SLOTS, SOCK_CFG, SRC_RANGES, SRC_RANGES6, SVC_META, VIPS, VIPS6,
                    BackendValue, MapId, NodeIfValue, PodAddrKey, SlotKey, SockCfgValue,
                    SrcRangeKey, SvcKey, SvcValue)
from .layouts import LayoutError

_PORT_BYTES = [p.to_bytes(2, "big") for p in range(65536)]


def _port_of(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


class Layout:
    """A struct.Struct for a ctypes type: `fields` names each field and its struct code, in
    declaration order; offsets and padding come from the ctypes type."""

    def __init__(self, ctype: Any, fields: Sequence[Tuple[str, str]]) -> None:
        self.ctype = ctype
        self.size = ctypes.sizeof(ctype)
        declared = [name for name, *_ in getattr(ctype, "_fields_", ())]
        if not declared:  # a scalar (u32): one field, the whole value
            if len(fields) != 1 or struct.calcsize("=" + fields[0][1]) != self.size:
                raise LayoutError(f"{ctype.__name__}: a scalar of {self.size} bytes, not {fields}")
            self.body = fields[0][1]
            self.scalar = True
            self.struct = struct.Struct("=" + self.body)
            return
        if [name for name, _ in fields] != declared:
            raise LayoutError(f"{ctype.__name__} has fields {declared}, the codec encodes "
                              f"{[name for name, _ in fields]}")
        body, at = "", 0
        for name, code in fields:
            member = getattr(ctype, name)
            if member.offset < at:
                raise LayoutError(f"{ctype.__name__}.{name} overlaps the field before it")
            body += "x" * (member.offset - at)
            if struct.calcsize("=" + code) != member.size:
                raise LayoutError(f"{ctype.__name__}.{name} is {member.size} bytes, the codec "
                                  f"packs {struct.calcsize('=' + code)} ({code})")
            body += code
            at = member.offset + member.size
        body += "x" * (self.size - at)
        self.body = body
        self.scalar = False
        self.struct = struct.Struct("=" + body)

    @property
    def flat(self) -> bool:
        """Every field an integer, none skipped: a record that is a tuple of its fields in order
        (or a scalar) packs as part of one run of integers."""
        return all(c in "BHIQ" for c in self.body)

    def pack_flat(self, records: Sequence[Any]) -> bytes:
        """Many records in one struct call."""
        if self.scalar:
            return struct.pack(f"={len(records)}{self.body}", *records)
        return struct.pack("=" + self.body * len(records), *chain.from_iterable(records))


class MapCodec:
    """Packs and unpacks one map's keys and values (records of ebpflb.maps). Records whose
    fields are all integers in layout order pack in one call per batch (`to` is None)."""

    def __init__(self, table: Any, key_fields, value_fields,
                 key_to: Optional[Callable[[Any], tuple]], key_from: Callable[[tuple], Any],
                 value_to: Optional[Callable[[Any], tuple]], value_from: Callable[[tuple], Any]) -> None:
        self.key = Layout(table.Key, key_fields)
        self.value = Layout(table.Leaf, value_fields)
        for layout, to in ((self.key, key_to), (self.value, value_to)):
            if to is None and not layout.flat:
                raise LayoutError(f"{layout.ctype.__name__}: not all integers, needs an encoder")
        self._key_to, self._key_from = key_to, key_from
        self._value_to, self._value_from = value_to, value_from

    def keys(self, keys: Sequence[Any]) -> bytes:
        if self._key_to is None:
            return self.key.pack_flat(keys)
        pack, to = self.key.struct.pack, self._key_to
        return b"".join([pack(*to(k)) for k in keys])

    def values(self, values: Sequence[Any]) -> bytes:
        if self._value_to is None:
            return self.value.pack_flat(values)
        pack, to = self.value.struct.pack, self._value_to
        return b"".join([pack(*to(v)) for v in values])

    def records(self, keys: bytes, values: bytes) -> Dict[Any, Any]:
        key_from, value_from = self._key_from, self._value_from
        return {key_from(k): value_from(v) for k, v in zip(self.key.struct.iter_unpack(keys),
                                                           self.value.struct.iter_unpack(values))}


def _svc_key_to(k: SvcKey) -> tuple:
    return (socket.inet_aton(k.vip), _PORT_BYTES[k.port], k.proto, k.scope)


def _svc_key_from(t: tuple) -> SvcKey:
    return SvcKey(socket.inet_ntoa(t[0]), _port_of(t[1]), t[2], t[3])


def _backend_to(v: BackendValue) -> tuple:
    return (socket.inet_aton(v.addr), _PORT_BYTES[v.port], v.proto, v.flags, v.svc_id)


def _backend_from(t: tuple) -> BackendValue:
    return BackendValue(socket.inet_ntoa(t[0]), _port_of(t[1]), t[2], t[4], t[3])


def _meta_to(name: str) -> tuple:
    return (name.encode(),)  # struct pads with NULs (the kernel record is NUL-terminated)


def _meta_from(t: tuple) -> str:
    return t[0].split(b"\0", 1)[0].decode(errors="replace")


def _range_to(k: SrcRangeKey) -> tuple:
    # LPM trie key: prefixlen counts svc_id's 32 bits (always matched) plus the CIDR's prefix.
    addr, _, prefix = k.cidr.partition("/")
    return (32 + int(prefix), k.svc_id, socket.inet_aton(addr))


def _range_from(t: tuple) -> SrcRangeKey:
    return SrcRangeKey(t[1], f"{socket.inet_ntoa(t[2])}/{t[0] - 32}")


def _first(t: tuple) -> Any:
    return t[0]


# The IPv6 twins (ebpflb.maps.IPV6_TWINS): the same records, 16-byte addresses.
def _a6(ip: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, ip)


def _ip6(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, raw)


def _svc6_key_to(k: SvcKey) -> tuple:
    return (_a6(k.vip), _PORT_BYTES[k.port], k.proto, k.scope)


def _svc6_key_from(t: tuple) -> SvcKey:
    return SvcKey(_ip6(t[0]), _port_of(t[1]), t[2], t[3])


def _backend6_to(v: BackendValue) -> tuple:
    return (_a6(v.addr), _PORT_BYTES[v.port], v.proto, v.flags, v.svc_id)


def _backend6_from(t: tuple) -> BackendValue:
    return BackendValue(_ip6(t[0]), _port_of(t[1]), t[2], t[4], t[3])


def _range6_to(k: SrcRangeKey) -> tuple:
    addr, _, prefix = k.cidr.partition("/")
    return (32 + int(prefix), k.svc_id, _a6(addr))


def _range6_from(t: tuple) -> SrcRangeKey:
    return SrcRangeKey(t[1], f"{_ip6(t[2])}/{t[0] - 32}")


def codecs(bpf: Any) -> Dict[MapId, MapCodec]:
    """The codec of every map the control plane writes, of a bcc BPF object."""
    def table(map_id: MapId) -> Any:
        return bpf[map_id.value.encode()]

    return {
        SERVICES: MapCodec(table(SERVICES),
                           [("vip", "4s"), ("port", "2s"), ("proto", "B"), ("scope", "B")],
                           [("svc_id", "I"), ("count", "I"), ("flags", "I"),
                            ("affinity_timeout", "I")],
                           _svc_key_to, _svc_key_from, None, lambda t: SvcValue(*t)),
        SLOTS: MapCodec(table(SLOTS), [("svc_id", "I"), ("slot", "I")], [("value", "I")],
                        None, lambda t: SlotKey(*t), None, _first),
        BACKENDS: MapCodec(table(BACKENDS), [("value", "I")],
                           [("addr", "4s"), ("port", "2s"), ("proto", "B"), ("flags", "B"),
                            ("svc_id", "I")],
                           None, _first, _backend_to, _backend_from),
        SVC_META: MapCodec(table(SVC_META), [("value", "I")], [("name", "128s")],
                           None, _first, _meta_to, _meta_from),
        VIPS: MapCodec(table(VIPS), [("value", "4s")], [("value", "I")],
                       lambda ip: (socket.inet_aton(ip),), lambda t: socket.inet_ntoa(t[0]),
                       None, _first),
        NODE_IFS: MapCodec(table(NODE_IFS), [("value", "I")], [("addr", "4s"), ("flags", "I")],
                           None, _first, lambda v: (socket.inet_aton(v.addr), v.flags),
                           lambda t: NodeIfValue(socket.inet_ntoa(t[0]), t[1])),
        POD_ADDRS: MapCodec(table(POD_ADDRS), [("ifindex", "I"), ("addr", "4s")], [("value", "I")],
                            lambda k: (k.ifindex, socket.inet_aton(k.addr)),
                            lambda t: PodAddrKey(t[0], socket.inet_ntoa(t[1])), None, _first),
        SOCK_CFG: MapCodec(table(SOCK_CFG), [("value", "I")],
                           [("host_netns_cookie", "Q"), ("mode", "I"), ("pad", "I")],
                           None, _first, lambda v: (v.host_netns_cookie, v.mode, 0),
                           lambda t: SockCfgValue(t[0], t[1])),
        SRC_RANGES: MapCodec(table(SRC_RANGES),
                             [("prefixlen", "I"), ("svc_id", "I"), ("addr", "4s")],
                             [("value", "I")], _range_to, _range_from, None, _first),
        SERVICES6: MapCodec(table(SERVICES6),
                            [("vip", "16s"), ("port", "2s"), ("proto", "B"), ("scope", "B")],
                            [("svc_id", "I"), ("count", "I"), ("flags", "I"),
                             ("affinity_timeout", "I")],
                            _svc6_key_to, _svc6_key_from, None, lambda t: SvcValue(*t)),
        BACKENDS6: MapCodec(table(BACKENDS6), [("value", "I")],
                            [("addr", "16s"), ("port", "2s"), ("proto", "B"), ("flags", "B"),
                             ("svc_id", "I")],
                            None, _first, _backend6_to, _backend6_from),
        VIPS6: MapCodec(table(VIPS6), [("w", "16s")], [("value", "I")],
                        lambda ip: (_a6(ip),), lambda t: _ip6(t[0]), None, _first),
        NODE_IFS6: MapCodec(table(NODE_IFS6), [("value", "I")], [("addr", "16s"), ("flags", "I")],
                            None, _first, lambda v: (_a6(v.addr), v.flags),
                            lambda t: NodeIfValue(_ip6(t[0]), t[1])),
        POD_ADDRS6: MapCodec(table(POD_ADDRS6), [("ifindex", "I"), ("addr", "16s")],
                             [("value", "I")], lambda k: (k.ifindex, _a6(k.addr)),
                             lambda t: PodAddrKey(t[0], _ip6(t[1])), None, _first),
        SRC_RANGES6: MapCodec(table(SRC_RANGES6),
                              [("prefixlen", "I"), ("svc_id", "I"), ("addr", "16s")],
                              [("value", "I")], _range6_to, _range6_from, None, _first),
    }
