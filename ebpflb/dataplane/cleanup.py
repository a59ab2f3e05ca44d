"""Removing everything one ebpflb data plane attached or pinned: its XDP programs and TC filters
(and clsact qdiscs nothing else uses) in the current network namespace, its socket hooks on a
cgroup, then its pinned maps and their directory.

A data plane is its pin directory. An attached program belongs to it when the program uses one
of the maps pinned there (the kernel lists a program's map ids); another agent's programs, with
another pin directory, are left alone. Programs whose maps are pinned nowhere any more (their
directory was removed by hand) belong to no one else, and are removed too."""
import logging
import os
import subprocess
from typing import FrozenSet, List, Optional

from pyroute2 import IPRoute

from .attach import detach_all
from .config import DataplaneConfig
from .loader import MAP_NAMES

log = logging.getLogger(__name__)


def remove_pins(config: DataplaneConfig) -> List[str]:
    """The pinned maps, their directory, and the agent's status file that goes with them."""
    from ..status import remove_status, status_path

    removed = [status_path(config.pin_dir)] if remove_status(config.pin_dir) else []
    for name in MAP_NAMES:
        path = os.path.join(config.pin_dir, name)
        if os.path.exists(path):
            os.unlink(path)
            removed.append(path)
    if os.path.isdir(config.pin_dir):
        try:
            os.rmdir(config.pin_dir)
            removed.append(config.pin_dir)
        except OSError as exc:
            log.warning("pin directory %s not removed: %s", config.pin_dir, exc)
    return removed


def _pinned_map_ids(pin_dir: str) -> FrozenSet[int]:
    from .libbpf import map_info
    from .pins import open_pinned

    ids = set()
    for name in MAP_NAMES:
        path = os.path.join(pin_dir, name)
        if not os.path.exists(path):
            continue
        try:
            fd = open_pinned(path)
        except OSError as exc:
            log.warning("pinned map %s not readable: %s", path, exc)
            continue
        try:
            ids.add(map_info(fd).id)
        finally:
            os.close(fd)
    return frozenset(ids)


def _other_pin_dirs(config: DataplaneConfig) -> List[str]:
    """Every other directory under the bpffs root holding ebpflb maps (other agents, labs)."""
    root = os.path.dirname(os.path.normpath(config.pin_dir)) or "/"
    out = []
    try:
        entries = os.listdir(root)
    except OSError:
        return out
    mine = os.path.normpath(config.pin_dir)
    for entry in entries:
        path = os.path.join(root, entry)
        if path != mine and os.path.isdir(path) and os.path.exists(os.path.join(path, MAP_NAMES[0])):
            out.append(path)
    return out


def owner_of(config: DataplaneConfig):
    """A predicate on program ids: does the program belong to this data plane?"""
    from .libbpf import prog_map_ids

    mine = _pinned_map_ids(config.pin_dir)
    others: set = set()
    for path in _other_pin_dirs(config):
        others |= _pinned_map_ids(path)

    def owns(prog_id: int) -> bool:
        maps = prog_map_ids(prog_id)
        if not maps:
            # No id from the kernel (or the program is gone): claimed only when no other data
            # plane exists that it could belong to.
            log.warning("program id %d: maps unknown; %s", prog_id,
                        "left alone" if others else "removed")
            return not others
        return bool(maps & mine) or not (maps & others)

    return owns


def strict_owner(config: DataplaneConfig):
    """A predicate on program ids: does the program use a map pinned in this data plane's
    directory? For the socket hooks, whose cgroup (often the machine's root) other BPF users
    share: a program whose maps are pinned nowhere is not claimed there."""
    from .libbpf import prog_map_ids

    mine = _pinned_map_ids(config.pin_dir)
    return lambda prog_id: bool(prog_map_ids(prog_id) & mine)


def recorded_cgroup(config: DataplaneConfig) -> Optional[str]:
    """The cgroup the agent of this pin directory attached its socket hooks to, as its status
    file says (None when it did not, or no status file is left)."""
    from ..status import read_status

    socket_lb = (read_status(config.pin_dir) or {}).get("socket_lb") or {}
    cgroup = socket_lb.get("cgroup")
    return cgroup if isinstance(cgroup, str) else None


def remove_dataplane(config: DataplaneConfig, ipr: Optional[IPRoute] = None,
                     cgroup: Optional[str] = None) -> List[str]:
    """Detaches this data plane's programs from every device of this network namespace and from
    the cgroup (its socket hooks: on `cgroup` and on the one its agent's status file records),
    and unpins its maps; and the nft table a takeover from kube-proxy may have left
    (ebpflb.takeover.nat_keeper). Returns what was removed, for the user to read."""
    from .sock_attach import detach_sock_hooks

    own = ipr is None
    ipr = ipr or IPRoute()
    try:
        from .node_attach import detach_xdp_all

        owns = owner_of(config)
        xdp = detach_xdp_all(ipr, owns)
        devices = sorted(set(detach_all(ipr, owns)) | set(xdp))
        hooks = []
        strict = strict_owner(config)
        for path in dict.fromkeys(p for p in (cgroup, recorded_cgroup(config)) if p):
            count = detach_sock_hooks(path, strict)
            if count:
                hooks.append(f"{count} socket hooks on cgroup {path}")
    finally:
        if own:
            ipr.close()
    from ..takeover import nat_keeper

    try:
        keeper = nat_keeper.remove()  # a takeover's, in this namespace, if one is left
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("the takeover's nft table %s not removed: %s", nat_keeper.TABLE, exc)
        keeper = []
    return [f"programs on {d}" for d in devices] + hooks + remove_pins(config) + keeper
