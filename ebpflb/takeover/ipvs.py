"""kube-proxy's IPVS mode on a node: what it left in the kernel, which of it is kube-proxy's, and
how to remove exactly that (`ebpflb takeover --from ipvs`).

Where it sits: beside kube_rules / netfilter_rules, which handle the IPVS mode's iptables chains
(KUBE-SERVICES, KUBE-NODE-PORT, KUBE-LOAD-BALANCER, ... are in kube_rules' lists). This module
handles the rest of that mode, which is not netfilter rules:

- IPVS virtual services (one per Service IP and port: ClusterIP, external IPs, load-balancer
  IPs, and every node address for a NodePort) and their real servers (the endpoints), all in
  masquerade (NAT) mode, read and deleted over the kernel's generic netlink family "IPVS"
  (include/uapi/linux/ip_vs.h). pyroute2 0.7.12 has no IPVS support; the message classes are
  here;
- the `kube-ipvs0` dummy device, which holds every ClusterIP, external IP and load-balancer IP
  so the node accepts packets to them (NodePort addresses are the node's own);
- kube-proxy's ipsets (KUBE-CLUSTER-IP, KUBE-LOOP-BACK, KUBE-NODE-PORT-TCP, ...; an IPv6
  proxier names them KUBE-6-...), which its iptables rules match on.

The pure part: `decode_message` / `parse_replies` (bytes -> pyroute2 messages, bounds checked),
`services_from` (messages -> IpvsService), `ipvs_removals` (what is kube-proxy's),
`frontends_of` and `ipvs_translated` (for the flow importer). The kernel edge: `read_services`,
`kube_ipvs_addresses`, `read_removals`, `remove_ipvs`. Everything acts on the network namespace
of the calling thread (the sockets are made there), like nf_conntrack.py.

What an IPVS-translated connection looks like in netfilter's conntrack (kube-proxy sets
net/ipv4/vs/conntrack=1, so IPVS keeps netfilter's entry; with 0 there is no entry at all): the
original tuple is client -> virtual service; IPVS rewrites the reply tuple of the still
unconfirmed entry to real server -> client (ip_vs_nfct.c, nf_conntrack_alter_reply), which sets
no status bit. So IPS_DST_NAT is never set; IPS_DST_NAT_DONE and IPS_SRC_NAT_DONE are (netfilter's
NAT null bindings, as a nat table is in use: kube-proxy's); IPS_SRC_NAT is set only when
kube-proxy's KUBE-POSTROUTING masqueraded the flow, and then the reply's destination is the node
address and port netfilter chose. `ipvs_translated` tells such a flow by its original
destination and reply source.
"""
from __future__ import annotations

import errno
import functools
import ipaddress
import logging
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, genlmsg, nla
from pyroute2.netlink.exceptions import NetlinkError

from .flows import NfFlow

log = logging.getLogger(__name__)

BACKEND = "ipvs"  # IpvsRemoval.backend, as RuleRemoval.backend names a rule backend
KUBE_IPVS_DEVICE = "kube-ipvs0"

# include/uapi/linux/ip_vs.h: the generic netlink family and its commands.
IPVS_GENL_NAME = "IPVS"
IPVS_GENL_VERSION = 1
IPVS_CMD_NEW_SERVICE, IPVS_CMD_SET_SERVICE, IPVS_CMD_DEL_SERVICE, IPVS_CMD_GET_SERVICE = 1, 2, 3, 4
IPVS_CMD_NEW_DEST, IPVS_CMD_SET_DEST, IPVS_CMD_DEL_DEST, IPVS_CMD_GET_DEST = 5, 6, 7, 8
IPVS_CMD_FLUSH = 17
_COMMANDS = {IPVS_CMD_GET_SERVICE: "IPVS_CMD_GET_SERVICE", IPVS_CMD_GET_DEST: "IPVS_CMD_GET_DEST",
             IPVS_CMD_DEL_SERVICE: "IPVS_CMD_DEL_SERVICE"}
# IP_VS_CONN_F_FWD_MASK and the forwarding methods a real server can have.
IP_VS_CONN_F_FWD_MASK = 0x0007
FORWARD_METHODS = {0: "masq", 1: "local", 2: "tunnel", 3: "route", 4: "bypass"}
IP_VS_SVC_F_PERSISTENT = 0x0001  # kube-proxy's sessionAffinity: ClientIP

_AF_VERSION = {socket.AF_INET: 4, socket.AF_INET6: 6}
_VERSION_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_PROTO_NAMES = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP",
                socket.IPPROTO_SCTP: "SCTP"}
_IN_ADDR_LEN = 16  # union nf_inet_addr: what IPVS puts in every address attribute

# Netlink framing (linux/netlink.h).
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_GENL_HDRLEN = 4  # cmd, version, reserved
_NLA = struct.Struct("=HH")  # length, type
_NLA_TYPE_MASK = 0x3FFF  # the type without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_NESTED = -1  # in an attribute table: "a nest, checked with its own table"


# ------------------------------------------------------------------ message classes

# One table per attribute space, in enum order: (name, pyroute2 type, smallest payload the
# decoder may read). The nla_map of each class and the bounds check below come from it, so the
# two cannot disagree. Counters (the STATS nests) and sync-daemon settings are kept opaque
# ('none'): a takeover has no use for them.
_SVC_ATTRS = (
    ("IPVS_SVC_ATTR_UNSPEC", "none", 0),
    ("IPVS_SVC_ATTR_AF", "uint16", 2),
    ("IPVS_SVC_ATTR_PROTOCOL", "uint16", 2),
    ("IPVS_SVC_ATTR_ADDR", "cdata", 4),  # union nf_inet_addr, 16 bytes from the kernel
    ("IPVS_SVC_ATTR_PORT", "be16", 2),
    ("IPVS_SVC_ATTR_FWMARK", "uint32", 4),
    ("IPVS_SVC_ATTR_SCHED_NAME", "asciiz", 1),
    ("IPVS_SVC_ATTR_FLAGS", "ipvs_flags", 8),  # struct ip_vs_flags
    ("IPVS_SVC_ATTR_TIMEOUT", "uint32", 4),  # persistence, seconds
    ("IPVS_SVC_ATTR_NETMASK", "uint32", 4),  # persistence granularity
    ("IPVS_SVC_ATTR_STATS", "none", 0),
    ("IPVS_SVC_ATTR_PE_NAME", "asciiz", 1),
    ("IPVS_SVC_ATTR_STATS64", "none", 0),
)
_DEST_ATTRS = (
    ("IPVS_DEST_ATTR_UNSPEC", "none", 0),
    ("IPVS_DEST_ATTR_ADDR", "cdata", 4),
    ("IPVS_DEST_ATTR_PORT", "be16", 2),
    ("IPVS_DEST_ATTR_FWD_METHOD", "uint32", 4),
    ("IPVS_DEST_ATTR_WEIGHT", "uint32", 4),
    ("IPVS_DEST_ATTR_U_THRESH", "uint32", 4),
    ("IPVS_DEST_ATTR_L_THRESH", "uint32", 4),
    ("IPVS_DEST_ATTR_ACTIVE_CONNS", "uint32", 4),
    ("IPVS_DEST_ATTR_INACT_CONNS", "uint32", 4),
    ("IPVS_DEST_ATTR_PERSIST_CONNS", "uint32", 4),
    ("IPVS_DEST_ATTR_STATS", "none", 0),
    ("IPVS_DEST_ATTR_ADDR_FAMILY", "uint16", 2),
    ("IPVS_DEST_ATTR_STATS64", "none", 0),
    ("IPVS_DEST_ATTR_TUN_TYPE", "uint8", 1),
    ("IPVS_DEST_ATTR_TUN_PORT", "be16", 2),
    ("IPVS_DEST_ATTR_TUN_FLAGS", "uint16", 2),
)
_CMD_ATTRS = (
    ("IPVS_CMD_ATTR_UNSPEC", "none", 0),
    ("IPVS_CMD_ATTR_SERVICE", "ipvs_service", _NESTED),
    ("IPVS_CMD_ATTR_DEST", "ipvs_dest", _NESTED),
    ("IPVS_CMD_ATTR_DAEMON", "none", 0),
    ("IPVS_CMD_ATTR_TIMEOUT_TCP", "uint32", 4),
    ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", "uint32", 4),
    ("IPVS_CMD_ATTR_TIMEOUT_UDP", "uint32", 4),
)


def _nla_map(table: Sequence[Tuple[str, str, int]]) -> Tuple[Tuple[str, str], ...]:
    return tuple((name, kind) for name, kind, _ in table)


class ipvs_msg(genlmsg):
    """A message of the "IPVS" generic netlink family: a request, or one reply of a dump (a
    virtual service, or one real server of a service)."""

    prefix = "IPVS_CMD_ATTR_"
    nla_map = _nla_map(_CMD_ATTRS)

    class ipvs_service(nla):
        """IPVS_CMD_ATTR_SERVICE: one virtual service (IPVS_SVC_ATTR_*)."""

        prefix = "IPVS_SVC_ATTR_"
        nla_map = _nla_map(_SVC_ATTRS)

        class ipvs_flags(nla):
            # struct ip_vs_flags: the service's flags, and which of them a request sets.
            fields = (("flags", "I"), ("mask", "I"))

    class ipvs_dest(nla):
        """IPVS_CMD_ATTR_DEST: one real server (IPVS_DEST_ATTR_*)."""

        prefix = "IPVS_DEST_ATTR_"
        nla_map = _nla_map(_DEST_ATTRS)


# ------------------------------------------------------------------ decoding

class IpvsError(RuntimeError):
    """The kernel refused or failed an IPVS, device or ipset operation; names the command."""


class IpvsDecodeError(ValueError):
    """Bytes that are not a well-formed IPVS reply (truncated, or a required field missing)."""


# type -> (name, smallest payload, table of the nest or None)
_Spec = Dict[int, Tuple[str, int, Optional[Dict[int, Any]]]]


def _spec(table: Sequence[Tuple[str, str, int]],
          nests: Optional[Dict[str, _Spec]] = None) -> _Spec:
    nests = nests or {}
    return {number: (name, size, nests.get(name))
            for number, (name, _, size) in enumerate(table)}


_CMD_SPEC = _spec(_CMD_ATTRS, {"IPVS_CMD_ATTR_SERVICE": _spec(_SVC_ATTRS),
                               "IPVS_CMD_ATTR_DEST": _spec(_DEST_ATTRS)})


def _check_nlas(data: bytes, start: int, end: int, spec: _Spec, where: str) -> None:
    """Every attribute in data[start:end] lies inside it, a known one is long enough for what
    the decoder reads, and so on into known nests. pyroute2's decoder clamps a length that runs
    past its parent instead of failing, which would turn a cut reply into wrong values."""
    pos = start
    while pos < end:
        if end - pos < _NLA.size:
            raise IpvsDecodeError(f"{where}: {end - pos} stray bytes at offset {pos} "
                                  "(truncated attribute header)")
        length, kind = _NLA.unpack_from(data, pos)
        kind &= _NLA_TYPE_MASK
        name, size, nest = spec.get(kind, (f"attribute type {kind}", 0, None))
        if length < _NLA.size or pos + length > end:
            raise IpvsDecodeError(f"{where}: {name} at offset {pos} claims {length} bytes, "
                                  f"{end - pos} left (truncated message?)")
        payload = length - _NLA.size
        if size == _NESTED:
            _check_nlas(data, pos + _NLA.size, pos + length, nest or {}, f"{where}/{name}")
        elif payload < size:
            raise IpvsDecodeError(f"{where}: {name} at offset {pos} has {payload} bytes, "
                                  f"needs {size}")
        pos += (length + 3) & ~3


def decode_message(data: bytes, offset: int = 0, length: Optional[int] = None) -> ipvs_msg:
    """One IPVS netlink message at data[offset:], bounds checked, decoded by ipvs_msg. The
    kernel edge decodes every dump reply through this."""
    if len(data) - offset < _NLMSGHDR.size + _GENL_HDRLEN:
        raise IpvsDecodeError(f"IPVS message at offset {offset}: only {len(data) - offset} "
                              "bytes, shorter than the netlink and generic netlink headers")
    size = _NLMSGHDR.unpack_from(data, offset)[0] if length is None else length
    if size < _NLMSGHDR.size + _GENL_HDRLEN or offset + size > len(data):
        raise IpvsDecodeError(f"IPVS message at offset {offset} claims {size} bytes, "
                              f"{len(data) - offset} left (truncated message?)")
    _check_nlas(data, offset + _NLMSGHDR.size + _GENL_HDRLEN, offset + size, _CMD_SPEC,
                f"IPVS message at offset {offset}")
    msg = ipvs_msg(data, offset=offset, length=size)
    msg.decode()
    return msg


def parse_replies(data: bytes) -> List[ipvs_msg]:
    """The IPVS messages in a buffer of netlink replies (as read from the socket), up to
    NLMSG_DONE. IpvsDecodeError for a truncated buffer, IpvsError for an error reply."""
    messages: List[ipvs_msg] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _NLMSGHDR.size:
            raise IpvsDecodeError(f"netlink buffer: {len(data) - offset} stray bytes at offset "
                                  f"{offset} (truncated header)")
        size, kind = _NLMSGHDR.unpack_from(data, offset)[:2]
        if size < _NLMSGHDR.size or offset + size > len(data):
            raise IpvsDecodeError(f"netlink message at offset {offset} claims {size} bytes, "
                                  f"{len(data) - offset} left (truncated message?)")
        if kind == NLMSG_DONE:
            break
        if kind == NLMSG_ERROR:
            _raise_error_reply(data, offset, size)
        elif kind != NLMSG_NOOP:
            messages.append(decode_message(data, offset, size))
        offset += (size + 3) & ~3
    return messages


def _raise_error_reply(data: bytes, offset: int, size: int) -> None:
    if size < _NLMSGHDR.size + 4:
        raise IpvsDecodeError(f"netlink error reply at offset {offset} is truncated")
    code = -struct.unpack_from("=i", data, offset + _NLMSGHDR.size)[0]
    if code:  # 0 is an acknowledgement
        raise IpvsError(f"IPVS: the kernel answered {os.strerror(code)} (errno {code})")


# ------------------------------------------------------------------ services

@dataclass(frozen=True)
class IpvsDest:
    """One real server of a virtual service."""

    address: str
    port: int
    weight: int
    forward: str  # "masq" (kube-proxy's, NAT), "local", "tunnel", "route", "bypass"
    active_conns: Optional[int] = None
    inactive_conns: Optional[int] = None

    def __str__(self) -> str:
        return f"{_ep(self.address, self.port)} {self.forward} weight {self.weight}"


@dataclass(frozen=True)
class IpvsService:
    """One IPVS virtual service: an address, port and protocol (or a firewall mark) and its
    real servers."""

    family: int  # 4 or 6
    protocol: int  # IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP; 0 for a fwmark service
    address: Optional[str]  # None for a fwmark service
    port: int
    fwmark: int  # 0 unless the service matches on a firewall mark instead of an address
    scheduler: str
    dests: Tuple[IpvsDest, ...] = ()
    flags: int = 0  # IP_VS_SVC_F_*
    timeout: int = 0  # persistence in seconds (IP_VS_SVC_F_PERSISTENT)

    @property
    def frontend(self) -> Optional[Tuple[int, str, int, int]]:
        """(family, address, port, protocol); None for a fwmark service."""
        if self.fwmark or self.address is None:
            return None
        return (self.family, self.address, self.port, self.protocol)

    def __str__(self) -> str:
        if self.fwmark:
            return f"FWM {self.fwmark} IPv{self.family} {self.scheduler}"
        proto = _PROTO_NAMES.get(self.protocol, str(self.protocol))
        return f"{proto} {_ep(self.address or '?', self.port)} {self.scheduler}"


def _ep(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _address(af: int, raw: Any, what: str) -> str:
    need = 4 if af == socket.AF_INET else 16
    if not isinstance(raw, (bytes, bytearray)) or len(raw) < need:
        raise IpvsDecodeError(f"{what}: address of {len(raw or b'')} bytes, IPv"
                              f"{_AF_VERSION[af]} needs {need}")
    return socket.inet_ntop(af, bytes(raw[:need]))


def _family(af: Optional[int], what: str) -> int:
    if af not in _AF_VERSION:
        raise IpvsDecodeError(f"{what}: address family {af!r} is neither AF_INET nor AF_INET6")
    return af


def _service_fields(attr: Any) -> Dict[str, Any]:
    """The IpvsService fields of one IPVS_CMD_ATTR_SERVICE, without its real servers."""
    af = _family(attr.get_attr("IPVS_SVC_ATTR_AF"), "virtual service")
    fwmark = attr.get_attr("IPVS_SVC_ATTR_FWMARK") or 0
    flags = attr.get_attr("IPVS_SVC_ATTR_FLAGS")
    fields = {"family": _AF_VERSION[af], "protocol": 0, "address": None, "port": 0,
              "fwmark": fwmark, "scheduler": attr.get_attr("IPVS_SVC_ATTR_SCHED_NAME") or "",
              "flags": flags["flags"] if flags else 0,
              "timeout": attr.get_attr("IPVS_SVC_ATTR_TIMEOUT") or 0}
    if fwmark:
        return fields
    proto = attr.get_attr("IPVS_SVC_ATTR_PROTOCOL")
    raw = attr.get_attr("IPVS_SVC_ATTR_ADDR")
    port = attr.get_attr("IPVS_SVC_ATTR_PORT")
    if proto is None or raw is None or port is None:
        raise IpvsDecodeError("virtual service without a firewall mark lacks its protocol, "
                              "address or port")
    fields.update(protocol=proto, address=_address(af, raw, "virtual service"), port=port)
    return fields


def _dest(attr: Any, service_af: int, where: str) -> IpvsDest:
    # A real server may be of another family than its service (a tunnel); the kernel says so
    # in ADDR_FAMILY since 4.x, and older kernels only allow the service's family.
    af = _family(attr.get_attr("IPVS_DEST_ATTR_ADDR_FAMILY") or service_af, where)
    raw, port = attr.get_attr("IPVS_DEST_ATTR_ADDR"), attr.get_attr("IPVS_DEST_ATTR_PORT")
    if raw is None or port is None:
        raise IpvsDecodeError(f"{where}: real server without address or port")
    method = (attr.get_attr("IPVS_DEST_ATTR_FWD_METHOD") or 0) & IP_VS_CONN_F_FWD_MASK
    return IpvsDest(address=_address(af, raw, where), port=port,
                    weight=attr.get_attr("IPVS_DEST_ATTR_WEIGHT") or 0,
                    forward=FORWARD_METHODS.get(method, f"method {method}"),
                    active_conns=attr.get_attr("IPVS_DEST_ATTR_ACTIVE_CONNS"),
                    inactive_conns=attr.get_attr("IPVS_DEST_ATTR_INACT_CONNS"))


def services_from(messages: Iterable[ipvs_msg]) -> List[IpvsService]:
    """The virtual services in `messages`, as the edge reads them: each service's reply
    followed by the replies of its real servers. Other replies are ignored."""
    out: List[IpvsService] = []
    current: Optional[Dict[str, Any]] = None
    dests: List[IpvsDest] = []
    for msg in messages:
        service, dest = msg.get_attr("IPVS_CMD_ATTR_SERVICE"), msg.get_attr("IPVS_CMD_ATTR_DEST")
        if service is not None:
            if current is not None:
                out.append(IpvsService(dests=tuple(dests), **current))
            current, dests = _service_fields(service), []
        elif dest is not None:
            if current is None:
                raise IpvsDecodeError("a real server before any virtual service")
            where = f"real server of {IpvsService(**current)}"
            dests.append(_dest(dest, _VERSION_AF[current["family"]], where))
    if current is not None:
        out.append(IpvsService(dests=tuple(dests), **current))
    return out


def frontends_of(services: Iterable[IpvsService]) -> Set[Tuple[int, str, int, int]]:
    """(family, address, port, protocol) of every address-based virtual service: what a
    netfilter flow's original destination is when IPVS translated it."""
    return {s.frontend for s in services if s.frontend is not None}


def ipvs_translated(flow: NfFlow, frontends: Set[Tuple[int, str, int, int]]) -> bool:
    """Whether IPVS translated the netfilter flow `flow`: its original destination is a
    virtual service, and its reply comes from elsewhere (the real server IPVS picked). Such an
    entry has IPS_DST_NAT clear (see the module docstring), so flows.plan_imports, which asks
    for it, would call it untranslated."""
    _, _, dst, dport = flow.orig
    if (flow.family, dst, dport, flow.proto) not in frontends:
        return False
    return (flow.reply[0], flow.reply[1]) != (dst, dport)


# ------------------------------------------------------------------ ownership

# kube-proxy's ipsets (pkg/proxy/ipvs/ipset.go), by role. An IPv6 proxier prefixes them
# "KUBE-6-" and cuts the name to the kernel's 31 characters.
_ADDRESS_SETS = ("KUBE-CLUSTER-IP", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL",
                 "KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER-LOCAL", "KUBE-LOAD-BALANCER-FW",
                 "KUBE-LOAD-BALANCER-SOURCE-IP", "KUBE-LOAD-BALANCER-SOURCE-CIDR",
                 "KUBE-NODE-PORT-SCTP-HASH", "KUBE-NODE-PORT-LOCAL-SCTP-HASH")
# bitmap:port sets: a NodePort on every node address; the protocol is in the name.
_PORT_SETS = {"KUBE-NODE-PORT-TCP": socket.IPPROTO_TCP,
              "KUBE-NODE-PORT-LOCAL-TCP": socket.IPPROTO_TCP,
              "KUBE-NODE-PORT-UDP": socket.IPPROTO_UDP,
              "KUBE-NODE-PORT-LOCAL-UDP": socket.IPPROTO_UDP}
# Sets that name no frontend: endpoints for hairpin masquerade, health-check node ports.
_OTHER_SETS = ("KUBE-LOOP-BACK", "KUBE-HEALTH-CHECK-NODE-PORT")
_IPSET_NAME_MAX = 31


def _v6_name(name: str) -> str:
    return ("KUBE-6-" + name[len("KUBE-"):])[:_IPSET_NAME_MAX]


# set name -> (family, kube-proxy's IPv4 name for it)
KUBE_PROXY_IPSETS: Dict[str, Tuple[int, str]] = {
    **{n: (4, n) for n in (*_ADDRESS_SETS, *_PORT_SETS, *_OTHER_SETS)},
    **{_v6_name(n): (6, n) for n in (*_ADDRESS_SETS, *_PORT_SETS, *_OTHER_SETS)},
}


@dataclass(frozen=True)
class IpsetEntry:
    """One member of a set, reduced to what names a frontend: (address, port, protocol);
    address None for a port-only set, protocol 0 when the set has none."""

    address: Optional[str]
    port: int
    proto: int = 0


@dataclass(frozen=True)
class KubeIpset:
    name: str
    kind: str = ""  # "hash:ip,port", "bitmap:port", ...
    entries: Tuple[IpsetEntry, ...] = ()

    @property
    def family(self) -> int:
        return KUBE_PROXY_IPSETS.get(self.name, (4, self.name))[0]

    @property
    def role(self) -> str:
        """kube-proxy's IPv4 name of the set (the same for both families)."""
        return KUBE_PROXY_IPSETS.get(self.name, (4, self.name))[1]


def _set_frontends(ipsets: Iterable[KubeIpset]
                   ) -> Tuple[Set[Tuple[int, str, int, int]], Set[Tuple[int, int, int]]]:
    """(family, address, port, proto) and (family, port, proto) that kube-proxy's sets name."""
    addresses: Set[Tuple[int, str, int, int]] = set()
    ports: Set[Tuple[int, int, int]] = set()
    for s in ipsets:
        if s.name not in KUBE_PROXY_IPSETS:
            continue
        if s.role in _ADDRESS_SETS:
            addresses |= {(s.family, e.address, e.port, e.proto) for e in s.entries if e.address}
        elif s.role in _PORT_SETS:
            ports |= {(s.family, e.port, _PORT_SETS[s.role]) for e in s.entries}
    return addresses, ports


def _is_kube_proxys(svc: IpvsService, bound: Set[str],
                    addresses: Set[Tuple[int, str, int, int]],
                    ports: Set[Tuple[int, int, int]]) -> bool:
    # kube-proxy never makes a fwmark service (keepalived and other IPVS users do).
    if svc.frontend is None:
        return False
    return (svc.address in bound or svc.frontend in addresses
            or (svc.family, svc.port, svc.protocol) in ports)


@dataclass(frozen=True)
class IpvsRemoval:
    """kube-proxy's IPVS state of one family and how to remove it (remove_ipvs). Shaped like
    kube_rules.RuleRemoval (backend, family, table, describe) for the orchestrator."""

    backend: str = BACKEND
    family: int = 4
    table: str = "ipvs"
    services: Tuple[IpvsService, ...] = ()  # kube-proxy's virtual services of this family
    device: Optional[str] = None  # kube-ipvs0 when it exists
    addresses: Tuple[str, ...] = ()  # this family's addresses on it
    ipsets: Tuple[str, ...] = ()  # kube-proxy's sets of this family
    others: int = 0  # virtual services of this family that are not kube-proxy's (left alone)

    @property
    def dests(self) -> int:
        return sum(len(s.dests) for s in self.services)

    @property
    def serving(self) -> bool:
        """Whether kube-proxy translates Services here (as kube_rules.RuleRemoval.serving)."""
        return bool(self.services)

    def describe(self) -> str:
        """One line for the takeover report."""
        device = (f"{self.device} with {_count(len(self.addresses), 'address', 'addresses')}"
                  if self.device else f"no {KUBE_IPVS_DEVICE}")
        text = (f"{self.backend} IPv{self.family}: "
                f"{_count(len(self.services), 'virtual service')} "
                f"({_count(self.dests, 'real server')}), {device}, "
                f"{_count(len(self.ipsets), 'ipset')}")
        if self.others:
            text += (f"; left {_count(self.others, 'virtual service')} of another IPVS user")
        return text


def _count(n: int, one: str, many: Optional[str] = None) -> str:
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def _version(address: str) -> int:
    return ipaddress.ip_address(address).version


def ipvs_removals(services: Iterable[IpvsService], device_addresses: Optional[Iterable[str]],
                  ipsets: Iterable[KubeIpset],
                  device: str = KUBE_IPVS_DEVICE) -> List[IpvsRemoval]:
    """kube-proxy's IPVS state, one removal per family that has any (IPv4 first).
    `device_addresses` is None when there is no kube-ipvs0. A virtual service is kube-proxy's
    when its address is on kube-ipvs0 or one of kube-proxy's sets names it (its address, port
    and protocol; for a NodePort, its port and protocol); every other one belongs to another
    user of IPVS and is left alone (counted in `others`)."""
    services, ipsets = list(services), [s for s in ipsets if s.name in KUBE_PROXY_IPSETS]
    bound = set(device_addresses) if device_addresses is not None else set()
    addresses, ports = _set_frontends(ipsets)
    out = []
    for family in (4, 6):
        mine = [s for s in services if s.family == family]
        ours = tuple(s for s in mine if _is_kube_proxys(s, bound, addresses, ports))
        removal = IpvsRemoval(
            family=family, services=ours,
            device=device if device_addresses is not None else None,
            addresses=tuple(sorted((a for a in bound if _version(a) == family),
                                   key=ipaddress.ip_address)),
            ipsets=tuple(sorted(s.name for s in ipsets if s.family == family)),
            others=len(mine) - len(ours))
        if removal.services or removal.addresses or removal.ipsets:
            out.append(removal)
    if not out and device_addresses is not None:
        # An empty kube-ipvs0 (kube-proxy with no Services yet) is still kube-proxy's.
        out.append(IpvsRemoval(family=4, device=device,
                               others=sum(1 for s in services if s.family == 4)))
    return out


# ------------------------------------------------------------------ kernel edge: IPVS

class IpvsUnavailable(IpvsError):
    """The kernel has no "IPVS" generic netlink family (ip_vs not built or not loaded)."""


def _ipvs_socket() -> Any:
    from pyroute2.netlink.generic import GenericNetlinkSocket

    class _IpvsSocket(GenericNetlinkSocket):
        # A missing family is an answer here ("no IPVS"), not something to log as an error.
        module_err_level = "debug"

    sock = _IpvsSocket()
    try:
        sock.bind(IPVS_GENL_NAME, ipvs_msg)
    except NetlinkError as exc:
        sock.close()
        if exc.code == errno.ENOENT:
            raise IpvsUnavailable("the kernel has no IPVS (generic netlink family "
                                  f"{IPVS_GENL_NAME!r} not found)") from exc
        raise IpvsError(f"IPVS: resolving generic netlink family {IPVS_GENL_NAME!r}: "
                        f"{os.strerror(exc.code)} (errno {exc.code})") from exc
    except BaseException:
        sock.close()
        raise
    return sock


class _Decoded(dict):
    """What the reply parser hands pyroute2's receive loop for one IPVS message: the header
    fields the loop reads, and the message decode_message produced."""

    def __init__(self, kind: int, flags: int, seq: int, length: int, msg: Optional[ipvs_msg],
                 error: Optional[Exception] = None) -> None:
        super().__init__(header={"length": length, "type": kind, "flags": flags,
                                 "sequence_number": seq, "error": error}, msg=msg)


def _reply_parser(marshal: Any, data: bytes, offset: int, length: int) -> Any:
    """pyroute2's per-message parser hook (nlm_request(parser=...)): IPVS replies go through
    decode_message, the same decoder as parse_replies; NLMSG_DONE and errors through pyroute2's
    own parser, so its end of dump and its errors stay its own."""
    size, kind, flags, seq = struct.unpack_from("=IHHI", data, offset)
    if kind < 16:  # the netlink control messages (NLMSG_*)
        return marshal.parse_one_message(kind, flags, seq, data, offset, length)
    try:
        return _Decoded(kind, flags, seq, size, decode_message(data, offset, size))
    except IpvsDecodeError as exc:
        return _Decoded(kind, flags, seq, size, None, exc)  # raised by the receive loop


def _request(sock: Any, cmd: int, service: Optional[IpvsService] = None) -> ipvs_msg:
    msg = ipvs_msg()
    msg["cmd"] = cmd
    msg["version"] = IPVS_GENL_VERSION
    if service is not None:
        msg["attrs"] = [("IPVS_CMD_ATTR_SERVICE", {"attrs": _service_key(service)})]
    return msg


def _service_key(svc: IpvsService) -> List[Tuple[str, Any]]:
    """The attributes that name a virtual service to the kernel (ip_vs_genl_parse_service)."""
    attrs: List[Tuple[str, Any]] = [("IPVS_SVC_ATTR_AF", _VERSION_AF[svc.family])]
    if svc.fwmark:
        return attrs + [("IPVS_SVC_ATTR_FWMARK", svc.fwmark)]
    raw = socket.inet_pton(_VERSION_AF[svc.family], svc.address or "")
    return attrs + [("IPVS_SVC_ATTR_PROTOCOL", svc.protocol),
                    ("IPVS_SVC_ATTR_ADDR", raw.ljust(_IN_ADDR_LEN, b"\0")),
                    ("IPVS_SVC_ATTR_PORT", svc.port)]


def _dump(sock: Any, cmd: int, service: Optional[IpvsService] = None) -> List[ipvs_msg]:
    what = _COMMANDS[cmd] + (f" ({service})" if service is not None else "")
    parse = functools.partial(_reply_parser, sock.marshal)
    try:
        replies = list(sock.nlm_request(_request(sock, cmd, service), msg_type=sock.prid,
                                        msg_flags=NLM_F_REQUEST | NLM_F_DUMP, parser=parse))
    except NetlinkError as exc:
        raise IpvsError(f"{what}: {os.strerror(exc.code)} (errno {exc.code})") from exc
    except IpvsDecodeError as exc:
        raise IpvsError(f"{what}: the kernel's reply does not decode: {exc}") from exc
    return [r["msg"] for r in replies if isinstance(r, _Decoded) and r["msg"] is not None]


def _read(sock: Any) -> Iterator[ipvs_msg]:
    for svc_msg in _dump(sock, IPVS_CMD_GET_SERVICE):
        yield svc_msg
        # A service deleted since the first dump answers with no real servers, not an error.
        [svc] = services_from([svc_msg])
        yield from _dump(sock, IPVS_CMD_GET_DEST, svc)


def read_services() -> List[IpvsService]:
    """Every virtual service with its real servers in this network namespace; [] when the
    kernel has no IPVS. IpvsError, naming the command, for any other failure."""
    try:
        sock = _ipvs_socket()
    except IpvsUnavailable as exc:
        log.debug("ipvs: %s", exc)
        return []
    try:
        services = services_from(list(_read(sock)))
    finally:
        sock.close()
    log.debug("ipvs: %d virtual services", len(services))
    return services


def _delete_services(services: Sequence[IpvsService]) -> None:
    if not services:
        return
    try:
        sock = _ipvs_socket()
    except IpvsUnavailable:
        # Without IPVS there is no virtual service left to delete.
        log.info("ipvs: no IPVS in this kernel; %d virtual services already gone",
                 len(services))
        return
    try:
        for svc in services:
            _delete_service(sock, svc)
    finally:
        sock.close()


def _delete_service(sock: Any, svc: IpvsService) -> None:
    try:
        list(sock.nlm_request(_request(sock, IPVS_CMD_DEL_SERVICE, svc), msg_type=sock.prid,
                              msg_flags=NLM_F_REQUEST | NLM_F_ACK))
    except NetlinkError as exc:
        if exc.code == errno.ESRCH:  # deleted since it was read (kube-proxy, or a retry)
            log.info("ipvs: virtual service %s already gone", svc)
            return
        raise IpvsError(f"IPVS_CMD_DEL_SERVICE ({svc}): {os.strerror(exc.code)} "
                        f"(errno {exc.code})") from exc
    log.info("ipvs: deleted virtual service %s (%d real servers)", svc, len(svc.dests))


# ------------------------------------------------------------------ kernel edge: device, ipsets

@dataclass(frozen=True)
class KubeIpvsState:
    """kube-proxy's IPVS-mode objects outside IPVS itself."""

    device: Optional[str]  # kube-ipvs0 when it exists
    addresses: Tuple[str, ...]  # its addresses (not IPv6 link-local ones)
    ipsets: Tuple[KubeIpset, ...]  # kube-proxy's sets, with their members


def _device_addresses(ipr: Any, index: int) -> List[Tuple[str, int]]:
    """(address, prefix length) on the device, IPv6 link-local left out (the kernel adds
    those itself; they are nobody's Service)."""
    out = []
    for msg in ipr.get_addr(index=index):
        addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if addr and not ipaddress.ip_address(addr).is_link_local:
            out.append((addr, msg["prefixlen"]))
    return out


def _read_device(device: str) -> Tuple[Optional[str], Tuple[str, ...]]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=device)
        if not found:
            return None, ()
        return device, tuple(a for a, _ in _device_addresses(ipr, found[0]))


_IPSET_ABSENT = (errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.ENOENT, errno.EINVAL)


def _ipset_socket() -> Optional[Any]:
    """pyroute2's IPSet socket, or None when the kernel has no ipset (its protocol query is
    refused: nfnetlink answers EINVAL for a subsystem it does not have)."""
    from pyroute2.ipset import IPSet

    try:
        return IPSet()
    except OSError as exc:  # no NETLINK_NETFILTER at all
        if exc.errno in _IPSET_ABSENT:
            return None
        raise IpvsError(f"ipset: opening the netlink socket: {exc}") from exc
    except NetlinkError as exc:
        if exc.code in _IPSET_ABSENT:
            return None
        raise IpvsError(f"ipset: protocol query: {os.strerror(exc.code)} "
                        f"(errno {exc.code})") from exc


def _entry(data: Any) -> Optional[IpsetEntry]:
    ip = data.get_attr("IPSET_ATTR_IP_FROM") or data.get_attr("IPSET_ATTR_IP")
    address = None
    if ip is not None:
        address = (ip.get_attr("IPSET_ATTR_IPADDR_IPV4") or ip.get_attr("IPSET_ATTR_IPADDR_IPV6"))
    port = data.get_attr("IPSET_ATTR_PORT_FROM")
    if port is None:
        port = data.get_attr("IPSET_ATTR_PORT")
    if port is None:
        return None  # a set without ports names no frontend
    return IpsetEntry(address, port, data.get_attr("IPSET_ATTR_PROTO") or 0)


def ipsets_from(messages: Iterable[Any]) -> Tuple[KubeIpset, ...]:
    """kube-proxy's sets in IPSET_CMD_LIST replies (pyroute2 ipset_msg). A big set comes in
    several replies; only the first carries its type."""
    kinds: Dict[str, str] = {}
    entries: Dict[str, List[IpsetEntry]] = {}
    for msg in messages:
        name = msg.get_attr("IPSET_ATTR_SETNAME")
        if name not in KUBE_PROXY_IPSETS:
            continue
        entries.setdefault(name, [])
        kinds[name] = kinds.get(name) or msg.get_attr("IPSET_ATTR_TYPENAME") or ""
        adt = msg.get_attr("IPSET_ATTR_ADT")
        for data in (adt.get_attrs("IPSET_ATTR_DATA") if adt is not None else ()):
            entry = _entry(data)
            if entry is not None:
                entries[name].append(entry)
    return tuple(KubeIpset(n, kinds[n], tuple(entries[n])) for n in sorted(entries))


def _read_ipsets() -> Tuple[KubeIpset, ...]:
    sock = _ipset_socket()
    if sock is None:
        log.debug("ipset: not in this kernel")
        return ()
    try:
        return ipsets_from(sock.list())
    except NetlinkError as exc:
        raise IpvsError(f"ipset: IPSET_CMD_LIST: {os.strerror(exc.code)} "
                        f"(errno {exc.code})") from exc
    finally:
        sock.close()


def kube_ipvs_addresses(device: str = KUBE_IPVS_DEVICE) -> KubeIpvsState:
    """The addresses on kube-ipvs0 (no device: None, ()) and kube-proxy's ipsets (no ipset in
    the kernel, or none of kube-proxy's: ())."""
    found, addresses = _read_device(device)
    return KubeIpvsState(found, addresses, _read_ipsets())


def read_removals(device: str = KUBE_IPVS_DEVICE) -> List[IpvsRemoval]:
    """kube-proxy's IPVS-mode state on this node, as removals (ipvs_removals)."""
    services = read_services()
    state = kube_ipvs_addresses(device)
    return ipvs_removals(services, state.addresses if state.device else None, state.ipsets,
                         device)


def _remove_device(removal: IpvsRemoval) -> None:
    """Unbind the removal's addresses from the device, then delete the device once nothing of
    the other family is left on it (a dual-stack kube-proxy shares it between its families)."""
    from pyroute2 import IPRoute

    assert removal.device is not None
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=removal.device)
        if not found:
            log.info("ipvs: device %s already gone", removal.device)
            return
        index = found[0]
        try:
            for addr, plen in _device_addresses(ipr, index):
                if addr in removal.addresses:
                    ipr.addr("del", index=index, address=addr, prefixlen=plen)
            left = _device_addresses(ipr, index)
            if left:
                log.info("ipvs: kept device %s: it still holds %s", removal.device,
                         ", ".join(a for a, _ in left))
                return
            ipr.link("del", index=index)
        except NetlinkError as exc:
            raise IpvsError(f"device {removal.device}: {os.strerror(exc.code)} "
                            f"(errno {exc.code})") from exc
    log.info("ipvs: deleted device %s", removal.device)


# ipset's own error codes (include/uapi/linux/netfilter/ipset/ip_set.h): the set is in use.
_IPSET_ERR_BUSY, _IPSET_ERR_REFERENCED = 4100, 4108


def _destroy_ipsets(names: Sequence[str]) -> None:
    if not names:
        return
    sock = _ipset_socket()
    if sock is None:
        log.info("ipset: not in this kernel; %d sets already gone", len(names))
        return
    try:
        for name in names:
            _destroy_ipset(sock, name)
    finally:
        sock.close()


def _destroy_ipset(sock: Any, name: str) -> None:
    try:
        sock.destroy(name)
    except NetlinkError as exc:
        if exc.code == errno.ENOENT:
            log.info("ipset: %s already gone", name)
            return
        if exc.code in (_IPSET_ERR_BUSY, _IPSET_ERR_REFERENCED):
            raise IpvsError(f"ipset {name}: still in use (an iptables rule matches on it): "
                            "kube-proxy's iptables rules must be removed first") from exc
        raise IpvsError(f"ipset {name}: IPSET_CMD_DESTROY failed: errno {exc.code}") from exc
    log.info("ipset: destroyed %s", name)


def remove_ipvs(removal: IpvsRemoval) -> None:
    """Remove what `removal` found, in this order: its virtual services, one
    IPVS_CMD_DEL_SERVICE each (never a flush: another user's services stay); then its
    addresses on kube-ipvs0, and the device once nothing else is on it; then its ipsets.

    Ordering the caller owns: kube-proxy's iptables rules (netfilter_rules.remove) must be gone
    before this runs, since the kernel refuses to destroy a set an iptables rule still
    references (kube-proxy's own cleanup orders it the same way). And every IPVS flow must
    already be the data path's: deleting a virtual service ends its IPVS connections (with
    kube-proxy's expire_nodest_conn=1 the kernel expires them right away, and with
    conntrack=1 kills their netfilter entries too).

    Each step tolerates what is already gone, so a retry after a failure is safe; a failure
    raises IpvsError naming the object, and the steps after it are not attempted."""
    _delete_services(removal.services)
    if removal.device:
        _remove_device(removal)
    _destroy_ipsets(removal.ipsets)
    log.info("ipvs: removed %s", removal.describe())
