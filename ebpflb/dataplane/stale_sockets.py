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
through a frontend are never touched: a socket is closed only if lb4_sock_nat records that the
hooks sent it (by its cookie) to that backend for that Service.

sock_diag answers per network namespace. The namespaces searched are those of the processes in
the hooks' cgroup (every pod's and the node's own), each entered by a short-lived thread.
"""
import logging
import os
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

log = logging.getLogger(__name__)

TCP, UDP = 6, 17
SS_ESTABLISHED, SS_SYN_SENT = 1, 2  # sk_state (a connected UDP socket is ESTABLISHED)
# Key and value of lb4_sock_nat (struct lb4_sock_key, struct lb4_sock_nat in lb_structs.h).
SOCK_KEY = struct.Struct("=Q4sHBx")
SOCK_NAT = struct.Struct("=4sHHII")


@dataclass(frozen=True)
class Target:
    """A socket to close: its cookie, and the backend it was sent to."""
    cookie: int
    proto: int
    addr: str
    port: int


def stale_targets(entries: Iterable[Tuple[bytes, bytes]], svc_ids: Iterable[int],
                  udp_backends: Iterable[Tuple[int, str, int]],
                  tcp_backends: Iterable[Tuple[int, str, int]]) -> Dict[int, Target]:
    """The sockets of lb4_sock_nat records (raw key, raw value) that went to a removed backend
    ((svc_id, address, port), as ebpflb.plan.conntrack_purge names them) or through a removed
    frontend (svc_ids). Pure."""
    ids = set(svc_ids)
    gone = {(UDP, *b) for b in udp_backends} | {(TCP, *b) for b in tcp_backends}
    out: Dict[int, Target] = {}
    for raw_key, raw_value in entries:
        cookie, addr, port, proto = SOCK_KEY.unpack(raw_key)
        _vip, _vport, _pad, svc_id, _backend_id = SOCK_NAT.unpack(raw_value)
        address, port_h = socket.inet_ntoa(addr), socket.ntohs(port)
        if svc_id in ids or (proto, svc_id, address, port_h) in gone:
            out[cookie] = Target(cookie, proto, address, port_h)
    return out


def read_entries(bpf: Any) -> List[Tuple[bytes, bytes]]:
    from .percpu import read_hash_raw

    table = bpf[b"lb4_sock_nat"]
    keys, values, count = read_hash_raw(table)
    return [(keys[i * SOCK_KEY.size:(i + 1) * SOCK_KEY.size],
             values[i * SOCK_NAT.size:(i + 1) * SOCK_NAT.size]) for i in range(count)]


def cgroup_namespaces(cgroup: Optional[str]) -> List[str]:
    """A /proc/<pid>/ns/net path for each network namespace that processes of the cgroup (and
    the cgroups below it) are in, and this thread's own."""
    paths = {os.stat("/proc/thread-self/ns/net").st_ino: "/proc/thread-self/ns/net"}
    if not cgroup:
        return list(paths.values())
    for root, _dirs, files in os.walk(cgroup):
        if "cgroup.procs" not in files:
            continue
        try:
            with open(os.path.join(root, "cgroup.procs")) as f:
                pids = f.read().split()
        except OSError:
            continue  # a cgroup removed while we walked
        for pid in pids:
            path = f"/proc/{pid}/ns/net"
            try:
                inode = os.stat(path).st_ino
            except OSError:
                continue  # exited meanwhile
            paths.setdefault(inode, path)
    return list(paths.values())


def _close_here(targets: Dict[int, Target]) -> int:
    """Closes the target sockets of this thread's network namespace; returns how many."""
    from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
    from pyroute2.netlink.diag import SOCK_DESTROY, DiagSocket, inet_diag_req
    from pyroute2.netlink.exceptions import NetlinkError

    closed = 0
    wanted = {(UDP, 1 << SS_ESTABLISHED), (TCP, 1 << SS_SYN_SENT)}  # connected UDP, TCP unanswered
    with DiagSocket() as diag:
        diag.bind()
        for proto, states in wanted:
            for msg in diag.get_sock_stats(family=socket.AF_INET, protocol=proto, states=states):
                target = targets.get(msg["idiag_cookie"])
                if target is None or target.proto != proto or \
                        (msg["idiag_dst"], msg["idiag_dport"]) != (target.addr, target.port):
                    continue
                req = inet_diag_req()
                req["sdiag_family"] = socket.AF_INET
                req["sdiag_protocol"] = proto
                req["idiag_states"] = states
                req["idiag_sport"] = msg["idiag_sport"]
                req["idiag_dport"] = msg["idiag_dport"]
                req["idiag_src"] = (struct.unpack(">I", socket.inet_aton(msg["idiag_src"]))[0], 0, 0, 0)
                req["idiag_dst"] = (struct.unpack(">I", socket.inet_aton(msg["idiag_dst"]))[0], 0, 0, 0)
                req["idiag_if"] = msg["idiag_if"]
                req["idiag_cookie"] = msg["idiag_cookie"]
                try:
                    diag.nlm_request(req, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK)
                    closed += 1
                except NetlinkError as exc:  # the socket closed by itself meanwhile
                    log.debug("socket %d to %s:%d not closed: %s", target.cookie, target.addr,
                              target.port, exc)
    return closed


def _in_netns(path: str, fn: Callable[[], int]) -> int:
    """Runs fn in a thread of its own that enters the namespace, so this thread stays put."""
    from .netns import setns_thread

    result: List[int] = []
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
    return result[0] if result else 0


def close_stale_sockets(bpf: Any, cgroup: Optional[str], svc_ids: Iterable[int],
                        udp_backends: Iterable[Tuple[int, str, int]],
                        tcp_backends: Iterable[Tuple[int, str, int]]) -> int:
    """Closes the sockets the hooks sent to removed backends (see the module docstring); returns
    how many. Costs nothing more than a read of lb4_sock_nat when none was sent there."""
    targets = stale_targets(read_entries(bpf), svc_ids, udp_backends, tcp_backends)
    if not targets:
        return 0
    from pyroute2.netlink.exceptions import NetlinkError

    closed = 0
    searched: Set[str] = set()
    for path in cgroup_namespaces(cgroup):
        try:
            closed += _in_netns(path, lambda: _close_here(targets))
            searched.add(path)
        except (OSError, NetlinkError) as exc:  # the process (and its namespace) went meanwhile
            log.debug("network namespace %s not searched: %s", path, exc)
    if closed:
        log.info("closed %d sockets connected to removed backends (%d network namespaces "
                 "searched)", closed, len(searched))
    return closed
