"""The kernel edge to netfilter's conntrack table, for the takeover from kube-proxy and the
hand-back (`ebpflb takeover`, `ebpflb cleanup --handback`).

Where it sits: under ebpflb/takeover/run.py, which decides; this module only reads, deletes and
writes netfilter's conntrack entries, through ctnetlink (pyroute2's NFCTSocket), never through
the `conntrack` tool's output:

- dump(family): every entry of the calling thread's network namespace, as flows.NfFlow, for the
  takeover to import into ebpflb's conntrack;
- delete(flow): one entry, by its original tuple and zone, once the data path owns its flow;
- add_dnat(...): at hand-back, an entry that DNATs client -> frontend to the backend the data
  path chose, so netfilter keeps the flow on that backend without any rule having chosen it.

Only TCP, UDP and SCTP entries are returned: they have ports, which is what a Service frontend
matches. ICMP, GRE and every other protocol are skipped. add_dnat writes TCP and UDP only (an
SCTP entry would need the association's verification tags, which the data path does not keep).

Everything acts on the network namespace of the calling thread (the socket is made there): a
caller for another namespace enters it first (ebpflb.lab.nsops.in_netns, or setns).

An entry (one add_dnat wrote, or one kube-proxy's rules made) is translated only while the
namespace has both hooks: NAT, which any nat chain or table of the family registers, and
conntrack, which only a rule that uses it registers (a DNAT, SNAT or MASQUERADE, a ct or
conntrack match). kube-proxy's rules have both. Without either, the entry stays in the table and
no packet is translated; tests/lab/test_nf_conntrack.py shows each case.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import logging
import os
import socket
import struct
from typing import Any, Dict, Iterator, List, Optional, Tuple

from pyroute2.netlink import (NLA_F_NESTED, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
                              NLM_F_REQUEST)
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK
from pyroute2.netlink.nfnetlink.nfctsocket import (IP_CT_TCP_FLAG_BE_LIBERAL,
                                                   IP_CT_TCP_FLAG_SACK_PERM, IPCTNL_MSG_CT_DELETE,
                                                   IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_NEW,
                                                   IPS_ASSURED, IPS_CONFIRMED, IPS_SEEN_REPLY,
                                                   TCP_CONNTRACK_CLOSE, TCP_CONNTRACK_ESTABLISHED,
                                                   TCP_CONNTRACK_SYN_SENT, TCP_CONNTRACK_TO_NAME,
                                                   NFCTSocket, nfct_msg, terminate_error_msg)

from .flows import NfFlow

log = logging.getLogger(__name__)

__all__ = ["NfFlow", "NfConntrackError", "NfConntrackUnavailable", "NfFlowError", "dump",
           "delete", "add_dnat"]

PORT_PROTOS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_SCTP: "sctp"}
ADD_PROTOS = (socket.IPPROTO_TCP, socket.IPPROTO_UDP)

# What a flow netfilter picks up mid-stream gets (tcp_new with nf_conntrack_tcp_loose): SACK
# allowed and liberal window checks, since the window scale of the handshake was never seen.
# An entry written at hand-back is exactly such a flow.
MIDSTREAM_TCP_FLAGS = IP_CT_TCP_FLAG_SACK_PERM | IP_CT_TCP_FLAG_BE_LIBERAL
# ctnetlink_create_conntrack sets CONFIRMED before it applies CTA_STATUS, and refuses (EBUSY) a
# status that clears it. ASSURED keeps the entry from early drop when the table fills, and
# SEEN_REPLY gives it the timeouts of a two-way flow from its first packet on.
ADD_STATUS = IPS_CONFIRMED | IPS_ASSURED | IPS_SEEN_REPLY
SYSCTL_DIR = "/proc/sys/net/netfilter"
DUMP_ATTEMPTS = 3

_CT_GET = IPCTNL_MSG_CT_GET | (NFNL_SUBSYS_CTNETLINK << 8)
_CT_NEW = IPCTNL_MSG_CT_NEW | (NFNL_SUBSYS_CTNETLINK << 8)
_NLMSG = struct.Struct("=IHHI")  # nlmsghdr without the pid: length, type, flags, seq
_NFGEN_LEN = 16 + 4  # nlmsghdr + nfgenmsg: where an entry's attributes start
_NLA = struct.Struct("=HH")  # nlattr: length, type
_NLA_TYPE_MASK = 0x3FFF  # the type without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")


def _nla_ids(cls: Any) -> Dict[str, int]:
    """Attribute numbers by name, from a pyroute2 message class whose nla_map is positional:
    one table for the encoder (pyroute2) and the decoder below."""
    return {entry[0]: number for number, entry in enumerate(cls.nla_map)}


_CTA = _nla_ids(nfct_msg)
_TUPLE = _nla_ids(nfct_msg.cta_tuple)
_IP = _nla_ids(nfct_msg.cta_tuple.cta_ip)
_PROTO = _nla_ids(nfct_msg.cta_tuple.cta_proto)
_PROTOINFO = _nla_ids(nfct_msg.cta_protoinfo)
_TCPINFO = _nla_ids(nfct_msg.cta_protoinfo.cta_protoinfo_tcp)
# enum ctattr_tuple (uapi nfnetlink_conntrack.h): a zone that applies to one direction only is
# sent inside the tuple. pyroute2's cta_tuple stops at CTA_TUPLE_PROTO.
_CTA_TUPLE_ZONE = 3


class NfConntrackError(RuntimeError):
    """netfilter's conntrack could not be read or changed."""


class NfConntrackUnavailable(NfConntrackError):
    """The kernel has no conntrack over netlink (nfnetlink or nf_conntrack_netlink missing)."""


class NfFlowError(NfConntrackError):
    """The kernel refused an operation on one flow; names the flow and the errno."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ shared

def _family(family: int) -> Tuple[int, int]:
    """(4 or 6, AF_INET or AF_INET6) for either spelling."""
    if family in (4, socket.AF_INET):
        return 4, socket.AF_INET
    if family in (6, socket.AF_INET6):
        return 6, socket.AF_INET6
    raise ValueError(f"family {family!r}: use 4 or 6 (socket.AF_INET or socket.AF_INET6)")


def _ep(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _flow_text(proto: int, orig: Tuple[str, int, str, int], zone: int = 0) -> str:
    text = f"{PORT_PROTOS.get(proto, proto)} {_ep(*orig[:2])} -> {_ep(*orig[2:])}"
    return f"{text} (zone {zone})" if zone else text


def _unavailable(exc: BaseException) -> NfConntrackUnavailable:
    return NfConntrackUnavailable(
        f"netfilter conntrack over netlink is not available in this kernel ({exc}): it needs "
        "nf_conntrack and nf_conntrack_netlink (CONFIG_NF_CT_NETLINK); load them with "
        "`modprobe nf_conntrack_netlink`")


@contextlib.contextmanager
def _ctnetlink(af: int) -> Iterator[NFCTSocket]:
    """An NFCTSocket in the calling thread's namespace, for entries of family `af`; closed on
    exit (an open socket would keep a lab namespace, and its entries, alive)."""
    try:
        sock = NFCTSocket(nfgen_family=af)
    except OSError as exc:
        if exc.errno == errno.EPROTONOSUPPORT:  # no NETLINK_NETFILTER: nfnetlink missing
            raise _unavailable(exc) from exc
        raise NfConntrackError(f"cannot open a conntrack netlink socket: {exc}") from exc
    try:
        yield sock
    finally:
        sock.close()


def _nested(attrs: List[Any]) -> Dict[str, Any]:
    return {"attrs": attrs}


def _tuple_attrs(version: int, proto: int, src: str, sport: int, dst: str,
                 dport: int) -> Dict[str, Any]:
    ip = "CTA_IP_V4" if version == 4 else "CTA_IP_V6"
    # NLA_F_NESTED on every nest, as libnetfilter_conntrack sends them and as the kernel's
    # strict parser (nla_parse_nested) demands; pyroute2's nfct_msg sets it on none. Kernel 6.18
    # still parses these nests leniently and takes either.
    return _nested([
        ("CTA_TUPLE_IP", _nested([(ip + "_SRC", src), (ip + "_DST", dst)]), NLA_F_NESTED),
        ("CTA_TUPLE_PROTO", _nested([("CTA_PROTO_NUM", proto), ("CTA_PROTO_SRC_PORT", sport),
                                     ("CTA_PROTO_DST_PORT", dport)]), NLA_F_NESTED),
    ])


def _message(attrs: List[Any]) -> nfct_msg:
    msg = nfct_msg()
    msg["attrs"] = attrs
    return msg


# ------------------------------------------------------------------ dump

def _nla_spans(data: bytes, start: int, end: int) -> Dict[int, Tuple[int, int]]:
    """Attribute number -> (payload start, payload end) of the attributes in data[start:end]."""
    spans = {}
    while start + 4 <= end:
        length, kind = _NLA.unpack_from(data, start)
        if length < 4 or start + length > end:
            break  # a truncated attribute: keep what came before it
        spans[kind & _NLA_TYPE_MASK] = (start + 4, start + length)
        start += (length + 3) & ~3
    return spans


def _u16(data: bytes, span: Optional[Tuple[int, int]], default: int = 0) -> int:
    return _BE16.unpack_from(data, span[0])[0] if span else default


def _u32(data: bytes, span: Optional[Tuple[int, int]], default: int = 0) -> int:
    return _BE32.unpack_from(data, span[0])[0] if span else default


_ADDR_ATTRS = {4: (socket.AF_INET, _IP["CTA_IP_V4_SRC"], _IP["CTA_IP_V4_DST"]),
               6: (socket.AF_INET6, _IP["CTA_IP_V6_SRC"], _IP["CTA_IP_V6_DST"])}


def _decode_tuple(data: bytes, span: Optional[Tuple[int, int]], version: int
                  ) -> Optional[Tuple[int, Tuple[str, int, str, int], int]]:
    """(protocol, (src, sport, dst, dport), zone) of a CTA_TUPLE_* nest; None for a protocol
    without ports."""
    if span is None:
        return None
    parts = _nla_spans(data, *span)
    ip, proto = parts.get(_TUPLE["CTA_TUPLE_IP"]), parts.get(_TUPLE["CTA_TUPLE_PROTO"])
    if ip is None or proto is None:
        return None
    l4 = _nla_spans(data, *proto)
    num = l4.get(_PROTO["CTA_PROTO_NUM"])
    if num is None or data[num[0]] not in PORT_PROTOS:
        return None
    af, src_attr, dst_attr = _ADDR_ATTRS[version]
    addrs = _nla_spans(data, *ip)
    src, dst = addrs.get(src_attr), addrs.get(dst_attr)
    if src is None or dst is None:
        return None
    return (data[num[0]],
            (socket.inet_ntop(af, bytes(data[src[0]:src[1]])),
             _u16(data, l4.get(_PROTO["CTA_PROTO_SRC_PORT"])),
             socket.inet_ntop(af, bytes(data[dst[0]:dst[1]])),
             _u16(data, l4.get(_PROTO["CTA_PROTO_DST_PORT"]))),
            _u16(data, parts.get(_CTA_TUPLE_ZONE)))


def _tcp_state(data: bytes, span: Optional[Tuple[int, int]]) -> Optional[int]:
    if span is None:
        return None
    tcp = _nla_spans(data, *span).get(_PROTOINFO["CTA_PROTOINFO_TCP"])
    if tcp is None:
        return None
    state = _nla_spans(data, *tcp).get(_TCPINFO["CTA_PROTOINFO_TCP_STATE"])
    return data[state[0]] if state else None


def _decode_flow(data: bytes, start: int, end: int, version: int) -> Optional[NfFlow]:
    """The NfFlow of one IPCTNL_MSG_CT_NEW message's attributes; None for an entry skipped."""
    top = _nla_spans(data, start, end)
    orig = _decode_tuple(data, top.get(_CTA["CTA_TUPLE_ORIG"]), version)
    reply = _decode_tuple(data, top.get(_CTA["CTA_TUPLE_REPLY"]), version)
    if orig is None or reply is None:
        return None
    proto = orig[0]
    # A zone for both directions comes as CTA_ZONE, one for a single direction in the tuple.
    zone = _u16(data, top.get(_CTA["CTA_ZONE"])) or orig[2] or reply[2]
    return NfFlow(
        family=version, proto=proto, orig=orig[1], reply=reply[1],
        status=_u32(data, top.get(_CTA["CTA_STATUS"])),
        tcp_state=(_tcp_state(data, top.get(_CTA["CTA_PROTOINFO"]))
                   if proto == socket.IPPROTO_TCP else None),
        timeout=_u32(data, top.get(_CTA["CTA_TIMEOUT"])),
        mark=_u32(data, top.get(_CTA["CTA_MARK"])), zone=zone)


class _Entry(dict):
    """What the dump's parser hands pyroute2's receive loop for one entry: the header fields
    the loop reads, and the decoded flow (None for a protocol without ports)."""

    def __init__(self, kind: int, flags: int, seq: int, length: int,
                 flow: Optional[NfFlow]) -> None:
        super().__init__(header={"length": length, "type": kind, "flags": flags,
                                 "sequence_number": seq, "error": None}, flow=flow)


def _parse_reply(marshal: Any, version: int, data: bytes, offset: int, length: int) -> Any:
    """pyroute2's per-message parser hook (nlm_request(parser=...)) for the dump's replies.

    An entry is decoded straight from the bytes into an NfFlow: pyroute2's generic decoder
    builds some sixty objects per entry and took ~150 us each, which is 40 s for the 260k
    entries kube-proxy lets a node hold. Everything else (NLMSG_DONE, an error) goes to
    pyroute2's own parser, so its errors and end of dump stay its own."""
    _, kind, flags, seq = _NLMSG.unpack_from(data, offset)
    if kind != _CT_NEW:
        return marshal.parse_one_message(kind, flags, seq, data, offset, length)
    return _Entry(kind, flags, seq, length,
                  _decode_flow(data, offset + _NFGEN_LEN, offset + length, version))


def _dump_once(sock: NFCTSocket, version: int, af: int) -> List[NfFlow]:
    msg = nfct_msg()
    msg["nfgen_family"] = af  # the kernel filters by family (ctnetlink_filter_match)
    parse = functools.partial(_parse_reply, sock.marshal, version)
    flows = []
    # Streamed: only the NfFlows stay in memory, never the replies.
    for entry in sock.nlm_request(msg, _CT_GET, msg_flags=NLM_F_REQUEST | NLM_F_DUMP,
                                  parser=parse):
        flow = entry.get("flow")
        if flow is not None:
            flows.append(flow)
    return flows


def dump(family: int) -> List[NfFlow]:
    """Every TCP, UDP and SCTP entry of `family` (socket.AF_INET or AF_INET6; 4 or 6 also
    taken) in the calling thread's network namespace. Linear in the entries: one pass over the
    replies, each decoded once."""
    version, af = _family(family)
    for attempt in range(1, DUMP_ATTEMPTS + 1):
        try:
            with _ctnetlink(af) as sock:
                flows = _dump_once(sock, version, af)
        except NetlinkDumpInterrupted:
            # The table changed under the dump in a way the kernel flagged: read it again.
            log.info("conntrack dump (IPv%d): interrupted, attempt %d of %d", version, attempt,
                     DUMP_ATTEMPTS)
            continue
        except NetlinkError as exc:
            if exc.code in (errno.EOPNOTSUPP, errno.EPROTONOSUPPORT):
                raise _unavailable(exc) from exc
            raise NfConntrackError(f"conntrack dump (IPv{version}): {os.strerror(exc.code)} "
                                   f"(errno {exc.code})") from exc
        log.debug("conntrack dump (IPv%d): %d entries with ports", version, len(flows))
        return flows
    raise NfConntrackError(f"conntrack dump (IPv{version}): interrupted {DUMP_ATTEMPTS} times")


# ------------------------------------------------------------------ delete

def _by_orig(msg_type: int, verb: str, family: int, proto: int,
             orig: Tuple[str, int, str, int], zone: int) -> bool:
    """One request about the entry with this original tuple and zone (a get or a delete):
    False when there is none, True when the kernel did it; any other refusal raises
    NfFlowError naming the flow."""
    version, af = _family(family)
    attrs = [("CTA_TUPLE_ORIG", _tuple_attrs(version, proto, *orig), NLA_F_NESTED)]
    if zone:
        attrs.append(("CTA_ZONE", zone))
    text = _flow_text(proto, orig, zone)
    with _ctnetlink(af) as sock:
        try:
            sock.request(_message(attrs), msg_type,
                         msg_flags=NLM_F_REQUEST | NLM_F_ACK, terminate=terminate_error_msg)
        except NetlinkError as exc:
            if exc.code == errno.ENOENT:
                log.debug("conntrack %s: none", text)
                return False
            if exc.code == errno.EOPNOTSUPP:
                raise _unavailable(exc) from exc
            raise NfFlowError(f"conntrack {verb} {text}: {os.strerror(exc.code)} "
                              f"(errno {exc.code})", exc.code) from exc
    return True


def delete(flow: NfFlow) -> bool:
    """Delete the entry with `flow`'s original tuple in `flow`'s zone. False when it was already
    gone (expired, or deleted by someone else); any other refusal raises NfFlowError."""
    return _by_orig(IPCTNL_MSG_CT_DELETE, "delete", flow.family, flow.proto, flow.orig,
                    flow.zone)


def exists(family: int, proto: int, orig: Tuple[str, int, str, int], zone: int = 0) -> bool:
    """Whether netfilter holds an entry with this original tuple (a flow it still translates:
    the agent forgets its own record of the flow once netfilter's is gone)."""
    return _by_orig(IPCTNL_MSG_CT_GET, "get", family, proto, orig, zone)


# ------------------------------------------------------------------ add_dnat

def _address(version: int, what: str, value: str) -> str:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError as exc:
        raise ValueError(f"{what} {value!r} is not an IP address") from exc
    if addr.version != version:
        raise ValueError(f"{what} {value} is not an IPv{version} address")
    return str(addr)


def _port(what: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"{what} {value!r} is not a port (1-65535)")
    return value


def _sysctl_timeout(name: str) -> int:
    """A conntrack timeout sysctl of the calling thread's namespace (/proc/sys/net resolves
    against the opening thread's): the timeout the flow would have had, kube-proxy's setting
    where it set one."""
    path = os.path.join(SYSCTL_DIR, name)
    try:
        with open(path) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError) as exc:
        raise NfConntrackError(f"cannot read {path} ({exc}): pass timeout= explicitly") from exc


def _default_timeout(proto: int, tcp_state: Optional[int]) -> int:
    if proto == socket.IPPROTO_TCP:
        state = TCP_CONNTRACK_TO_NAME[tcp_state or TCP_CONNTRACK_ESTABLISHED].lower()
        return _sysctl_timeout(f"nf_conntrack_tcp_timeout_{state}")
    # A UDP entry that has SEEN_REPLY lives by the stream timeout once it is refreshed.
    return _sysctl_timeout("nf_conntrack_udp_timeout_stream")


def _protoinfo_tcp(state: int) -> Dict[str, Any]:
    flags = {"value": (MIDSTREAM_TCP_FLAGS, MIDSTREAM_TCP_FLAGS)}  # (flags, mask)
    return _nested([("CTA_PROTOINFO_TCP", _nested([
        ("CTA_PROTOINFO_TCP_STATE", state),
        ("CTA_PROTOINFO_TCP_FLAGS_ORIGINAL", flags),
        ("CTA_PROTOINFO_TCP_FLAGS_REPLY", flags),
    ]), NLA_F_NESTED)])


def _nat_range(version: int, addr: str, port: int) -> Dict[str, Any]:
    """A CTA_NAT_DST or CTA_NAT_SRC of one address and one port."""
    ip = "CTA_NAT_V4" if version == 4 else "CTA_NAT_V6"
    return _nested([
        (ip + "_MINIP", addr), (ip + "_MAXIP", addr),
        ("CTA_NAT_PROTO", _nested([("CTA_PROTONAT_PORT_MIN", port),
                                   ("CTA_PROTONAT_PORT_MAX", port)]), NLA_F_NESTED),
    ])


def _add_error(exc: NetlinkError, text: str) -> NfConntrackError:
    if exc.code == errno.EOPNOTSUPP:
        # No ctnetlink at all, or no NAT behind it (ctnetlink_parse_nat_setup finds no nf_nat).
        return NfConntrackUnavailable(
            f"conntrack add {text}: {os.strerror(exc.code)}: writing a DNAT entry needs "
            "nf_conntrack_netlink and nf_nat (CONFIG_NF_CT_NETLINK, CONFIG_NF_NAT)")
    why = os.strerror(exc.code)
    if exc.code == errno.EEXIST:
        why += (" (an entry with this original tuple exists, or the reply tuple the DNAT gives "
                "is taken by another entry)")
    return NfFlowError(f"conntrack add {text}: {why} (errno {exc.code})", exc.code)


def add_dnat(family: int, proto: int, client: str, client_port: int, frontend: str,
             frontend_port: int, backend: str, backend_port: int, *,
             tcp_state: Optional[int] = None, timeout: Optional[int] = None) -> None:
    """Write an entry whose original tuple is client:client_port -> frontend:frontend_port and
    whose DNAT sends it to backend:backend_port, in the calling thread's namespace.

    The reply tuple is the kernel's: the request sends the plain inverse of the original tuple
    and CTA_NAT_DST, and nf_nat_setup_info rewrites the reply to backend -> client and sets
    IPS_DST_NAT (it would set nothing if the request already named the backend in the reply).
    The client's address and port are kept (CTA_NAT_SRC to themselves): if another entry holds
    the reply tuple backend -> client (netfilter's entry for the flow as the data path rewrote
    it), the kernel refuses with EEXIST rather than move the client port; delete that entry
    first.
    The status is CONFIRMED, ASSURED and SEEN_REPLY; a TCP entry is `tcp_state` (ESTABLISHED by
    default) with the flags of a flow picked up mid-stream. `timeout` (seconds) defaults to the
    namespace's own sysctl for that state (nf_conntrack_tcp_timeout_*, udp_timeout_stream).

    `family` is 4 or 6 (or socket.AF_INET / AF_INET6). Raises ValueError for bad arguments and
    NfFlowError, naming the flow and the errno, when the kernel refuses.
    """
    version, af = _family(family)
    if proto not in ADD_PROTOS:
        raise ValueError(f"protocol {proto!r}: add_dnat writes TCP and UDP entries only")
    client, frontend, backend = (_address(version, what, value) for what, value in
                                 (("client", client), ("frontend", frontend),
                                  ("backend", backend)))
    client_port, frontend_port, backend_port = (_port(what, value) for what, value in
                                                (("client port", client_port),
                                                 ("frontend port", frontend_port),
                                                 ("backend port", backend_port)))
    if tcp_state is not None and (proto != socket.IPPROTO_TCP or
                                  not TCP_CONNTRACK_SYN_SENT <= tcp_state <= TCP_CONNTRACK_CLOSE):
        raise ValueError(f"tcp_state {tcp_state!r}: a TCP_CONNTRACK_* state (SYN_SENT to CLOSE) "
                         "of a TCP entry")
    if timeout is None:
        timeout = _default_timeout(proto, tcp_state)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        raise ValueError(f"timeout {timeout!r}: a number of seconds above 0")
    orig = (client, client_port, frontend, frontend_port)
    text = f"{_flow_text(proto, orig)} DNAT to {_ep(backend, backend_port)}"
    attrs = [
        ("CTA_TUPLE_ORIG", _tuple_attrs(version, proto, *orig), NLA_F_NESTED),
        ("CTA_TUPLE_REPLY", _tuple_attrs(version, proto, frontend, frontend_port, client,
                                         client_port), NLA_F_NESTED),
        ("CTA_NAT_DST", _nat_range(version, backend, backend_port), NLA_F_NESTED),
        # The source pinned to itself. Without it ctnetlink gives the entry a null SRC binding,
        # which moves the client port when the reply tuple backend -> client is taken (an entry
        # for the flow as the data path rewrote it): the backend would see another port. Pinned,
        # the kernel refuses the entry instead (EEXIST).
        ("CTA_NAT_SRC", _nat_range(version, client, client_port), NLA_F_NESTED),
        ("CTA_STATUS", ADD_STATUS),
        ("CTA_TIMEOUT", timeout),
    ]
    if proto == socket.IPPROTO_TCP:
        attrs.append(("CTA_PROTOINFO", _protoinfo_tcp(tcp_state or TCP_CONNTRACK_ESTABLISHED),
                      NLA_F_NESTED))
    with _ctnetlink(af) as sock:
        try:
            sock.request(_message(attrs), IPCTNL_MSG_CT_NEW,
                         msg_flags=NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                         terminate=terminate_error_msg)
        except NetlinkError as exc:
            raise _add_error(exc, text) from exc
    log.debug("conntrack %s: added, timeout %ds", text, timeout)
