"""Attaching the socket hooks (bpf/lb4_sock.c) to a cgroup v2 directory (the kernel edge of the
agent, beside attach.py for pod devices and node_attach.py for node devices).

The hooks act on the sockets of every process in the cgroup and below it, whatever network
namespace the process is in: at the root of the node's cgroup v2 hierarchy that is the node's
own processes and every pod. They are attached with BPF_F_ALLOW_MULTI, so other programs at the
same hooks (a CNI's, systemd's) keep running, and an agent's restart attaches its programs before
it detaches the previous agent's: no connect() goes untranslated in between (two of ours in a row
are harmless: the first sends the socket to a backend, which is no frontend to the second).

Which programs are ours: those with a hook's name that use this data plane's pinned maps
(cleanup.strict_owner). Unlike TC filters, a hook whose maps are pinned nowhere is not claimed:
the cgroup may be the machine's root, shared with every other BPF user of the node. The settings
map (lb_sock_cfg) says whose sockets are balanced (--socket-lb).
"""
import ctypes
import errno
import logging
import os
import socket
import struct
from typing import Any, Callable, Dict, List, Mapping, Optional

from .. import abi
from .libbpf import _check, _fn, prog_id_of, prog_name
from .loader import SOCK_HOOKS, sock_attach_types

log = logging.getLogger(__name__)

SOCKET_LB_MODES = ("all", "host-only", "off")
# lb_sock_cfg.mode by --socket-lb value.
MODE_VALUES = {"off": abi.LB_SOCK_OFF, "all": abi.LB_SOCK_ALL, "host-only": abi.LB_SOCK_HOST_ONLY}
MODE_NAMES = {value: name for name, value in MODE_VALUES.items()}
BPF_F_ALLOW_MULTI = 1 << 1  # uapi/linux/bpf.h
SO_NETNS_COOKIE = 71  # linux/socket.h (5.14+)
_MAX_QUERY = 64  # BPF_CGROUP_MAX_PROGS


class CgroupError(OSError):
    """The cgroup given for the socket hooks cannot be used; the message says which and why."""


def cgroup2_root(mounts: str = "/proc/mounts") -> Optional[str]:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup on a unified host,
    /sys/fs/cgroup/unified on a hybrid one), or None."""
    try:
        with open(mounts) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "cgroup2":
                    return fields[1]
    except OSError:
        return None
    return None


def check_cgroup(path: str) -> str:
    """The path, if it is a directory of a cgroup v2 hierarchy; else CgroupError naming it."""
    if not os.path.isdir(path):
        raise CgroupError(errno.ENOENT, f"--cgroup {path}: not a directory")
    if not os.path.exists(os.path.join(path, "cgroup.procs")) or \
            os.path.exists(os.path.join(path, "tasks")):
        raise CgroupError(errno.EINVAL, f"--cgroup {path}: not a cgroup v2 directory "
                                        f"(cgroup v2 is mounted at {cgroup2_root() or 'no place'})")
    return path


def cgroup_pids(cgroup: str) -> List[int]:
    """Pids in a cgroup and the cgroups below it (a cgroup removed meanwhile is skipped)."""
    pids: List[int] = []
    for root, _dirs, files in os.walk(cgroup):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(root, "cgroup.procs")) as fh:
                    pids += [int(x) for x in fh.read().split()]
            except OSError:
                continue
    return sorted(set(pids))


def netns_cookie() -> int:
    """The cookie of this thread's network namespace (what bpf_get_netns_cookie returns for a
    socket in it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]


def write_settings(writer: Any, mode: str, host_cookie: Optional[int] = None) -> None:
    """lb_sock_cfg[0], through `writer` (a MapWriter: plan and apply, as every map write): the
    mode, and the node's network namespace (this thread's by default)."""
    from ..maps import SOCK_CFG, SockCfgValue
    from .device_maps import write_device_map

    cookie = netns_cookie() if host_cookie is None else host_cookie
    write_device_map(writer, SOCK_CFG, {0: SockCfgValue(cookie, MODE_VALUES[mode])})


def read_mode(bpf: Any) -> str:
    """The mode the pinned settings hold ("off" until an agent wrote them)."""
    leaf = bpf[b"lb_sock_cfg"][ctypes.c_uint32(0)]
    return MODE_NAMES.get(leaf.mode, f"unknown ({leaf.mode})")


def read_host_cookie(bpf: Any) -> int:
    """The node's network namespace cookie as the agent wrote it (0 before any agent did)."""
    return bpf[b"lb_sock_cfg"][ctypes.c_uint32(0)].host_netns_cookie


def _open_cgroup(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise CgroupError(exc.errno, f"--cgroup {path}: {exc.strerror}") from exc


def attached_ids(cgroup_fd: int, attach_type: int) -> List[int]:
    """Ids of the programs attached to the cgroup itself at one hook (not inherited ones)."""
    fn = _fn("bpf_prog_query", [ctypes.c_int, ctypes.c_int, ctypes.c_uint32,
                                ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32),
                                ctypes.POINTER(ctypes.c_uint32)])
    ids = (ctypes.c_uint32 * _MAX_QUERY)()
    count = ctypes.c_uint32(_MAX_QUERY)
    flags = ctypes.c_uint32(0)
    _check(fn(cgroup_fd, attach_type, 0, ctypes.byref(flags), ids, ctypes.byref(count)),
           "BPF_PROG_QUERY")
    return list(ids[:count.value])


def _detach_id(cgroup_fd: int, attach_type: int, prog_id: int) -> bool:
    get_fd = _fn("bpf_prog_get_fd_by_id", [ctypes.c_uint32])
    fd = get_fd(prog_id)
    if fd < 0:
        return False  # gone meanwhile
    try:
        detach = _fn("bpf_prog_detach2", [ctypes.c_int, ctypes.c_int, ctypes.c_int])
        rc = detach(fd, cgroup_fd, attach_type)
        if rc < 0 and (ctypes.get_errno() or -rc) == errno.ENOENT:
            return False
        _check(rc, f"BPF_PROG_DETACH of program {prog_id}")
        return True
    finally:
        os.close(fd)


def _ours(prog_id: int, owns: Callable[[int], bool]) -> bool:
    return prog_name(prog_id) in SOCK_HOOKS and owns(prog_id)


def attach_sock_hooks(path: str, fns: Mapping[str, Any], owns: Callable[[int], bool]) -> int:
    """Attaches each hook's program to the cgroup, then detaches the programs of this data plane
    that were there before (a previous agent's). Returns how many old ones went."""
    check_cgroup(path)
    cgroup_fd = _open_cgroup(path)
    replaced = 0
    try:
        attach = _fn("bpf_prog_attach", [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_uint])
        for name, attach_type in sock_attach_types().items():
            before = [i for i in attached_ids(cgroup_fd, attach_type) if _ours(i, owns)]
            mine = prog_id_of(fns[name].fd)
            if mine not in before:  # the kernel refuses one program twice at one hook
                try:
                    _check(attach(fns[name].fd, cgroup_fd, attach_type, BPF_F_ALLOW_MULTI),
                           f"BPF_PROG_ATTACH of {name}")
                except OSError as exc:
                    raise CgroupError(exc.errno, f"--cgroup {path}: attaching {name} failed: "
                                                 f"{exc.strerror}") from exc
            for prog_id in before:
                if prog_id != mine and _detach_id(cgroup_fd, attach_type, prog_id):
                    replaced += 1
    finally:
        os.close(cgroup_fd)
    log.info("socket hooks attached to cgroup %s%s", path,
             f" ({replaced} of a previous agent replaced)" if replaced else "")
    return replaced


def detach_sock_hooks(path: str, owns: Callable[[int], bool]) -> int:
    """Detaches this data plane's socket hooks from the cgroup; returns how many."""
    if not os.path.isdir(path):
        return 0
    cgroup_fd = _open_cgroup(path)
    removed = 0
    try:
        for attach_type in sock_attach_types().values():
            for prog_id in attached_ids(cgroup_fd, attach_type):
                if _ours(prog_id, owns) and _detach_id(cgroup_fd, attach_type, prog_id):
                    removed += 1
    finally:
        os.close(cgroup_fd)
    return removed


def hooks_attached(path: str, owns: Callable[[int], bool]) -> Dict[str, int]:
    """Hook program name -> id, for this data plane's programs attached to the cgroup."""
    out: Dict[str, int] = {}
    if not os.path.isdir(path):
        return out
    cgroup_fd = _open_cgroup(path)
    try:
        for attach_type in sock_attach_types().values():
            for prog_id in attached_ids(cgroup_fd, attach_type):
                if _ours(prog_id, owns):
                    out[prog_name(prog_id)] = prog_id
    finally:
        os.close(cgroup_fd)
    return out

