"""Whether the data plane an agent runs is still whole, and putting it back when it is not (the
kernel edge of the agent's readiness).

Someone may remove pins, filters or hooks under a running agent (`ebpflb cleanup --force`, a tc
command, another tool). The agent keeps every map and program open, so nothing it holds is lost:
it checks that each map is pinned where it belongs (the same map, by id), that its TC filters and
XDP programs are on the devices it attached to, and that its socket hooks are on its cgroup;
says not ready while anything is missing; and re-pins, re-attaches and re-syncs. The device and
hook checks cost a netlink dump or a syscall per device, so the agent runs them on link and tc
events and on its rescan timer; the pin check is a stat per map and runs every second."""
import ctypes
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from .libbpf import libbpf, map_info

log = logging.getLogger(__name__)


def pin_object(fd: int, path: str) -> None:
    """BPF_OBJ_PIN: makes `path` (on bpffs) name the object behind `fd`."""
    fn = libbpf().bpf_obj_pin
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p]
    fn.restype = ctypes.c_int
    if fn(fd, path.encode()) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot pin {path}: {os.strerror(err)}")


def _inode(path: str) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@dataclass
class PinGuard:
    """The agent's maps (name -> fd) and where they must stay pinned."""

    pin_dir: str
    fds: Dict[str, int]
    _ids: Dict[str, int] = field(default_factory=dict)
    _seen: Dict[str, Optional[Tuple[int, int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._ids = {name: map_info(fd).id for name, fd in self.fds.items()}
        self._seen = {name: _inode(self._path(name)) for name in self.fds}

    def _path(self, name: str) -> str:
        return os.path.join(self.pin_dir, name)

    def _pinned_id(self, name: str) -> Optional[int]:
        from .pins import open_pinned

        try:
            fd = open_pinned(self._path(name))
        except OSError:
            return None
        try:
            return map_info(fd).id
        finally:
            os.close(fd)

    def problems(self) -> List[str]:
        """What is wrong with the pins, one sentence each; [] when every map is pinned. A pin
        whose inode is unchanged since it was last seen right is not opened again."""
        out = []
        for name in self.fds:
            path = self._path(name)
            now = _inode(path)
            if now is None:
                out.append(f"map {name} is no longer pinned at {path}")
                continue
            if now == self._seen.get(name):
                continue
            pinned = self._pinned_id(name)
            if pinned == self._ids[name]:
                self._seen[name] = now
            else:
                out.append(f"{path} holds another map (id {pinned}) than the agent's "
                           f"(id {self._ids[name]})")
        return out

    def repair(self) -> List[str]:
        """Pins every map whose pin is missing (creating the directory); returns what it pinned.
        A pin holding another map is left alone: whoever put it there owns it now."""
        os.makedirs(self.pin_dir, mode=0o700, exist_ok=True)
        pinned = []
        for name, fd in self.fds.items():
            path = self._path(name)
            if _inode(path) is not None:
                continue
            pin_object(fd, path)
            os.chmod(path, 0o600)
            self._seen[name] = _inode(path)
            pinned.append(name)
        return pinned


def missing_filters(ipr, ifindexes: Iterable[int], prog_ids: Iterable[int]) -> List[int]:
    """The devices among `ifindexes` that lack one of the agent's TC programs (by program id) on
    ingress or egress."""
    from .attach import EGRESS, INGRESS, _our_filters

    wanted = frozenset(prog_ids)
    out = []
    for ifindex in ifindexes:
        try:
            ours, _ = _our_filters(ipr, ifindex, lambda prog_id: prog_id in wanted)
        except OSError:
            continue  # the device went away: the link events handle that
        if {parent for parent, _ in ours} != {INGRESS, EGRESS}:
            out.append(ifindex)
    return out


def missing_hooks(cgroup: str, prog_ids: Dict[str, int],
                  attached: Callable[[str, Callable[[int], bool]], Dict[str, int]]) -> List[str]:
    """The socket hooks (by program name) not attached to `cgroup` as the agent's programs."""
    wanted = frozenset(prog_ids.values())
    there = attached(cgroup, lambda prog_id: prog_id in wanted)
    return sorted(name for name, prog_id in prog_ids.items() if there.get(name) != prog_id)
