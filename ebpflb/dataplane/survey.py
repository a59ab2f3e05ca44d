"""What `ebpflb status` reads from the kernel about one data plane (its pin directory): who holds
it, how full each pinned map is against its maximum, which devices of this network namespace run
its programs, and whether its socket hooks are on the cgroup its agent recorded. Opened straight
from the pins with libbpf, so it needs no compile and never creates anything. The view is built
by ebpflb.status_view; ebpflb.views.status_view reads it all and builds it."""
import ctypes
import errno
import os
from typing import Dict, List, Optional

from .cleanup import owner_of, recorded_cgroup, strict_owner
from .config import DataplaneConfig
from .libbpf import libbpf, map_info
from .loader import MAP_NAMES
from .pins import open_pinned

# Map types whose entries come and go (the arrays always hold max_entries).
_COUNTED = {1: "hash", 5: "percpu_hash", 9: "lru_hash", 10: "lru_percpu_hash", 11: "lpm_trie"}
_LRU = {9, 10}


def count_keys(fd: int, key_size: int, limit: int) -> int:
    """How many keys a map holds, by walking them (BPF_MAP_GET_NEXT_KEY works on every map type
    that has keys to walk, tries included; batch lookups do not work on tries). A key deleted
    under the walk restarts it from the first key: the count stops at `limit` (the map's size),
    an estimate on a map that churns, exact on a quiet one."""
    fn = libbpf().bpf_map_get_next_key
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    keys = [ctypes.create_string_buffer(key_size), ctypes.create_string_buffer(key_size)]
    count = 0
    prev = None
    while count < limit:
        rc = fn(fd, prev, keys[count % 2])
        if rc != 0:
            err = ctypes.get_errno() or -rc
            if err == errno.ENOENT:
                return count
            raise OSError(err, f"BPF_MAP_GET_NEXT_KEY: {os.strerror(err)}")
        prev = keys[count % 2]
        count += 1
    return count


def map_fill(pin_dir: str) -> List[dict]:
    """Per pinned map: entries against its maximum (None for arrays, which are always full)."""
    out = []
    for name in MAP_NAMES:
        path = os.path.join(pin_dir, name)
        if not os.path.exists(path):
            out.append({"map": name, "missing": True})
            continue
        fd = open_pinned(path)
        try:
            info = map_info(fd)
            entries = (count_keys(fd, info.key_size, info.max_entries)
                       if info.type in _COUNTED else None)
        finally:
            os.close(fd)
        out.append({"map": name, "entries": entries, "max": info.max_entries,
                    "lru": info.type in _LRU})
    return out


def dp_flags(pin_dir: str) -> Optional[int]:
    """lb_dp_cfg's LB_DP_F_* flags (a takeover from kube-proxy or a hand-back to it under way,
    or stopped half-way); None when the map is not pinned."""
    import struct

    from .libbpf import lookup_elem

    path = os.path.join(pin_dir, "lb_dp_cfg")
    if not os.path.exists(path):
        return None
    fd = open_pinned(path)
    try:
        raw = lookup_elem(fd, struct.pack("=I", 0), map_info(fd).value_size)
    finally:
        os.close(fd)
    return struct.unpack_from("=I", raw)[0] if raw else 0


def devices(config: DataplaneConfig) -> List[dict]:
    """The devices of this network namespace running the data plane's programs: TC ingress and
    egress (by program name), and XDP with its mode."""
    from pyroute2 import IPRoute

    from pyroute2.netlink.exceptions import NetlinkError

    from .attach import EGRESS, INGRESS, _our_filters, links
    from .libbpf import prog_name
    from .node_attach import XDP_PROG_NAMES, xdp_attached

    owns = owner_of(config)
    out = []
    with IPRoute() as ipr:
        for ifindex, ifname in sorted(links(ipr).items()):
            try:
                ours, _ = _our_filters(ipr, ifindex, owns)
                mode, xdp_id = xdp_attached(ipr, ifindex)
            except (NetlinkError, IndexError):
                continue  # gone meanwhile
            # Another tool's XDP program is not ours even when it uses no map of anyone's.
            xdp = (mode if xdp_id and prog_name(xdp_id) in XDP_PROG_NAMES and owns(xdp_id)
                   else None)
            if not ours and not xdp:
                continue
            parents = {parent for parent, _ in ours}
            out.append({"device": ifname, "ifindex": ifindex,
                        "tc": [hook for hook, parent in (("ingress", INGRESS), ("egress", EGRESS))
                               if parent in parents],
                        "xdp": xdp, "xdp_program": prog_name(xdp_id) if xdp else None})
    return out


def socket_hooks(config: DataplaneConfig, cgroup: Optional[str] = None) -> Optional[dict]:
    """The data plane's socket hooks on `cgroup` (default: the one its agent recorded), or None
    when there is no cgroup to look at."""
    from .sock_attach import hooks_attached

    path = cgroup or recorded_cgroup(config)
    if not path:
        return None
    attached: Dict[str, int] = hooks_attached(path, strict_owner(config))
    return {"cgroup": path, "hooks": sorted(attached)}
