"""Closing the sockets the socket hooks sent to a backend that has left its Service (the kernel
edge of the agent's purge step, beside ct_gc.purge, which does the same for the packet path's
flows).

A socket balanced at connect() talks to its backend directly for as long as it lives. For a TCP
connection that is right (an established flow keeps its backend, as with conntrack), but a
connected UDP socket (a DNS client's) would keep asking a backend that is gone, and a TCP connect
that its backend never answered would wait out its timeout. So when a backend leaves, the agent
closes, with sock_diag SOCK_DESTROY, each such socket the hooks made: connected UDP sockets, and
TCP sockets still in SYN_SENT. The application sees ECONNABORTED and asks again, and the hooks
send the new socket to a live backend. Sockets connected to the same address without going
through a frontend are never touched: a socket is closed only if lb4_sock_nat (lb6_sock_nat for
an IPv6 socket) records that the hooks sent it (by its cookie) to that backend for that Service.

sock_diag answers per network namespace. The namespaces searched are those of the processes in
the hooks' cgroup (every pod's and the node's own), each entered by a short-lived thread.
"""
import ctypes
import errno
import logging
import os
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple

from ..maps import PROTO_NUMBERS

log = logging.getLogger(__name__)

TCP, UDP = PROTO_NUMBERS["TCP"], PROTO_NUMBERS["UDP"]
SS_ESTABLISHED, SS_SYN_SENT = 1, 2  # sk_state (a connected UDP socket is ESTABLISHED)


class SockRecord(NamedTuple):
    """One lb4_sock_nat or lb6_sock_nat record, decoded: the socket, the backend the hooks sent
    it to (an IPv4 or IPv6 address), and the frontend's service id."""
    cookie: int
    proto: int
    addr: str
    port: int
    svc_id: int


@dataclass(frozen=True)
class Target:
    """A socket to close: its cookie, and the backend it was sent to."""
    cookie: int
    proto: int
    addr: str
    port: int


def stale_targets(records: Iterable[SockRecord], svc_ids: Iterable[int],
                  udp_backends: Iterable[Tuple[int, str, int]],
                  tcp_backends: Iterable[Tuple[int, str, int]]) -> Dict[int, Target]:
    """The sockets of lb4_sock_nat records that went to a removed backend ((svc_id, address,
    port), as ebpflb.plan.conntrack_purge names them) or through a removed frontend (svc_ids).
    Pure."""
    ids = set(svc_ids)
    gone = {(UDP, *b) for b in udp_backends} | {(TCP, *b) for b in tcp_backends}
    return {r.cookie: Target(r.cookie, r.proto, r.addr, r.port) for r in records
            if r.svc_id in ids or (r.proto, r.svc_id, r.addr, r.port) in gone}


SOCK_TABLES = (b"lb4_sock_nat", b"lb6_sock_nat")


def read_entries(bpf: Any) -> List[SockRecord]:
    """Every lb4_sock_nat and lb6_sock_nat record, decoded through bcc's types of the header's
    structs."""
    from .bcc_maps import _ip_of
    from .percpu import read_hash_raw

    out = []
    for name in SOCK_TABLES:
        table = bpf[name]
        key_size, value_size = ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf)
        keys, values, count = read_hash_raw(table)
        for i in range(count):
            k = table.Key.from_buffer_copy(keys, i * key_size)
            v = table.Leaf.from_buffer_copy(values, i * value_size)
            out.append(SockRecord(k.cookie, k.proto, _ip_of(k.addr), socket.ntohs(k.port),
                                  v.svc_id))
    return out


def _forget(bpf: Any, targets: Iterable[Target]) -> None:
    """Drops the records of closed sockets: they would match every later removal of their
    backend, each time costing a search of every namespace for a socket that is gone."""
    from .bcc_maps import _addr_field

    for t in targets:
        table = bpf[SOCK_TABLES[":" in t.addr]]
        key = table.Key(cookie=t.cookie, addr=_addr_field(table, "addr", t.addr),
                        port=socket.htons(t.port), proto=t.proto)
        try:
            del table[key]
        except KeyError:
            pass  # evicted meanwhile


def cgroup_namespaces(cgroup: Optional[str]) -> List[str]:
    """A /proc/<pid>/ns/net path for each network namespace that processes of the cgroup (and
    the cgroups below it) are in, and this thread's own."""
    paths = {os.stat("/proc/thread-self/ns/net").st_ino: "/proc/thread-self/ns/net"}
    if not cgroup:
        return list(paths.values())
    from .sock_attach import cgroup_pids

    for pid in cgroup_pids(cgroup):
        path = f"/proc/{pid}/ns/net"
        try:
            inode = os.stat(path).st_ino
        except OSError:
            continue  # exited meanwhile
        paths.setdefault(inode, path)
    return list(paths.values())


def _diag_addr(ip: str) -> Tuple[int, int, int, int]:
    """An address as inet_diag_sockid holds it: four big-endian words (IPv4: the first)."""
    if ":" in ip:
        return struct.unpack(">4I", socket.inet_pton(socket.AF_INET6, ip))
    return (struct.unpack(">I", socket.inet_aton(ip))[0], 0, 0, 0)


def _close_here(targets: Dict[int, Target]) -> List[Target]:
    """Closes the target sockets of this thread's network namespace; returns them."""
    from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
    from pyroute2.netlink.diag import SOCK_DESTROY, DiagSocket, inet_diag_req
    from pyroute2.netlink.exceptions import NetlinkError

    closed: List[Target] = []
    wanted = {(UDP, 1 << SS_ESTABLISHED), (TCP, 1 << SS_SYN_SENT)}  # connected UDP, TCP unanswered
    with DiagSocket() as diag:
        diag.bind()
        for family, (proto, states) in ((f, w) for f in (socket.AF_INET, socket.AF_INET6)
                                         for w in wanted):
            for msg in diag.get_sock_stats(family=family, protocol=proto, states=states):
                target = targets.get(msg["idiag_cookie"])
                dst = msg["idiag_dst"]
                if dst.startswith("::ffff:") and "." in dst:
                    dst = dst[len("::ffff:"):]  # an IPv6 socket sent to an IPv4 backend
                if target is None or target.proto != proto or \
                        (dst, msg["idiag_dport"]) != (target.addr, target.port):
                    continue
                req = inet_diag_req()
                req["sdiag_family"] = family
                req["sdiag_protocol"] = proto
                req["idiag_states"] = states
                req["idiag_sport"] = msg["idiag_sport"]
                req["idiag_dport"] = msg["idiag_dport"]
                req["idiag_src"] = _diag_addr(msg["idiag_src"])
                req["idiag_dst"] = _diag_addr(msg["idiag_dst"])
                req["idiag_if"] = msg["idiag_if"]
                req["idiag_cookie"] = msg["idiag_cookie"]
                try:
                    diag.nlm_request(req, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK)
                    closed.append(target)
                except NetlinkError as exc:
                    if exc.code == errno.EOPNOTSUPP:
                        raise  # no CONFIG_INET_DIAG_DESTROY: the caller says so once
                    # Closed by itself meanwhile.
                    log.debug("socket %d to %s:%d not closed: %s", target.cookie, target.addr,
                              target.port, exc)
    return closed


def _in_netns(path: str, fn: Callable[[], List[Target]]) -> List[Target]:
    """Runs fn in a thread of its own that enters the namespace, so this thread stays put."""
    from .netns import setns_thread

    result: List[List[Target]] = []
    errors: List[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns_thread(fd, path)
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="sock-destroy")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0] if result else []


_warned_no_destroy = False


def close_stale_sockets(bpf: Any, cgroup: Optional[str], svc_ids: Iterable[int],
                        udp_backends: Iterable[Tuple[int, str, int]],
                        tcp_backends: Iterable[Tuple[int, str, int]]) -> int:
    """Closes the sockets the hooks sent to removed backends (see the module docstring) and
    forgets their records; returns how many. Costs a read of lb4_sock_nat when nothing was
    sent there; otherwise a sock_diag dump per network namespace of the cgroup's processes
    (records of sockets closed since are only dropped when their LRU slot is needed, so a
    removal may search for sockets that are already gone)."""
    from pyroute2.netlink.exceptions import NetlinkError

    global _warned_no_destroy
    targets = stale_targets(read_entries(bpf), svc_ids, udp_backends, tcp_backends)
    if not targets:
        return 0
    closed: List[Target] = []
    searched = 0
    for path in cgroup_namespaces(cgroup):
        try:
            closed += _in_netns(path, lambda: _close_here(targets))
            searched += 1
        except NetlinkError as exc:
            if exc.code == errno.EOPNOTSUPP:
                if not _warned_no_destroy:
                    log.warning("this kernel cannot close sockets (CONFIG_INET_DIAG_DESTROY is "
                                "off): connected UDP sockets keep asking removed backends")
                    _warned_no_destroy = True
                return 0
            log.debug("network namespace %s not searched: %s", path, exc)
        except OSError as exc:  # the process (and its namespace) went meanwhile
            log.debug("network namespace %s not searched: %s", path, exc)
    _forget(bpf, closed)
    if closed:
        log.info("closed %d sockets sent to removed backends (%d network namespaces searched)",
                 len(closed), searched)
    return len(closed)
