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

from .libbpf import libbpf, map_info, prog_id_of

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


OK, MISSING, TAKEN = "ok", "missing", "taken"


def tc_state(ipr, ifindex: int, prog_ids: Iterable[int]) -> Optional[str]:
    """OK when both of the agent's TC programs (by id) are on the device, TAKEN when an ebpflb
    filter of another data plane (another pin directory) holds a hook instead, else MISSING;
    None when the device went away meanwhile (the link events' business)."""
    from pyroute2.netlink.exceptions import NetlinkError

    from .attach import EGRESS, INGRESS, filters

    wanted = frozenset(prog_ids)
    try:
        found = filters(ipr, ifindex)
    except NetlinkError:
        return None
    ours = {parent for parent, _, prog_id, ebpflb in found if ebpflb and prog_id in wanted}
    if ours == {INGRESS, EGRESS}:
        return OK
    if any(ebpflb and prog_id not in wanted for _, _, prog_id, ebpflb in found):
        return TAKEN
    return MISSING


def missing_hooks(cgroup: str, prog_ids: Dict[str, int],
                  attached: Callable[[str, Callable[[int], bool]], Dict[str, int]]) -> List[str]:
    """The socket hooks (by program name) not attached to `cgroup` as the agent's programs."""
    wanted = frozenset(prog_ids.values())
    there = attached(cgroup, lambda prog_id: prog_id in wanted)
    return sorted(name for name, prog_id in prog_ids.items() if there.get(name) != prog_id)


@dataclass
class Finding:
    """One check's outcome: what is wrong now (None when whole) and what was put back."""
    problem: Optional[str] = None
    repaired: List[Tuple[str, str]] = field(default_factory=list)  # (kind, what), for logs and metrics


class DataplaneGuard:
    """The agent's view of its own data plane, checked and repaired part by part: `pins()` every
    second, `devices()` on tc and link events and on the rescan timer, `hooks()` with the latter.
    `attacher` and `nodes` are the agent's Attacher and NodeAttacher (None without node devices);
    `cgroup` and `sock` the socket hooks' cgroup and functions (None and {} when off)."""

    def __init__(self, pin_dir: str, bpf, names: Iterable[str], lock, attacher, nodes, progs,
                 cgroup: Optional[str], sock: Dict[str, object]):
        self.pin_dir = pin_dir
        self.lock = lock
        self.attacher = attacher
        self.nodes = nodes
        self.pinguard = PinGuard(pin_dir, {n: bpf[n.encode()].map_fd for n in names})
        self.tc_ids = (prog_id_of(progs.from_pod.fd), prog_id_of(progs.to_pod.fd))
        self.node_ids: Tuple[int, ...] = ()
        self.xdp_ids: Dict[str, int] = {}
        if nodes is not None:
            self.node_ids = (prog_id_of(progs.node_in.fd), prog_id_of(progs.node_out.fd))
            self.xdp_ids = {mode: prog_id_of(fn.fd) for mode, fn in progs.xdp_fns().items() if fn}
        self.cgroup = cgroup
        self.sock = sock
        self.sock_ids = {name: prog_id_of(fn.fd) for name, fn in sock.items()}

    def pins(self) -> Finding:
        """The pin directory still the one the agent owns, and every map pinned in it. The lock
        is taken again first (the directory was removed, perhaps made again): nothing is pinned
        into a directory another process owns."""
        from .owner import Owned, acquire

        lost = self.lock is None or not self.lock.still_held()
        problems = self.pinguard.problems()
        if not problems and not lost:
            return Finding()
        try:
            if lost:
                if self.lock is not None:
                    self.lock.release()
                    self.lock = None
                os.makedirs(self.pin_dir, mode=0o700, exist_ok=True)
                self.lock = acquire(self.pin_dir)
            pinned = self.pinguard.repair() if problems else []
        except Owned as exc:
            return Finding(f"the pin directory was made again and is not the agent's: {exc}")
        except OSError as exc:
            return Finding(f"{'; '.join(problems) or 'pin directory lost'} (not repaired: {exc})")
        remaining = self.pinguard.problems()
        done = [("pins", f"maps re-pinned in {self.pin_dir}: {', '.join(pinned)}")] if pinned else []
        return Finding("; ".join(remaining) or None, done)

    def devices(self, ipr, only: Optional[Iterable[int]] = None) -> Finding:
        """The TC programs on every pod and node device attached to (or those in `only`), XDP
        too on node devices in XDP mode; each device found without them gets them again. A
        device another ebpflb data plane (another pin directory) has taken is reported, not
        taken back: two agents re-attaching over each other would never stop."""
        from .attach import links

        repaired, failed, taken = [], [], []
        present = links(ipr)
        groups = [(self.attacher, {i: n for i, n in self.attacher.attached.items()},
                   self.tc_ids)]
        if self.nodes is not None:
            groups.append((self.nodes, {i: d.ifname for i, d in self.nodes.attached.items()},
                           self.node_ids))
        for attacher, names, ids in groups:
            for ifindex in (names if only is None else [i for i in only if i in names]):
                if present.get(ifindex) != names[ifindex]:
                    continue  # gone or renamed meanwhile: the link events' business
                state = tc_state(ipr, ifindex, ids)
                if state == OK and attacher is self.nodes:
                    state = self._xdp_state(ipr, ifindex)
                if state in (None, OK):
                    continue
                if state == TAKEN:
                    taken.append(names[ifindex])
                elif attacher.reattach(ifindex):
                    repaired.append(names[ifindex])
                elif links(ipr).get(ifindex) == names[ifindex]:
                    failed.append(names[ifindex])  # still there, and refused the programs
        problems = []
        if failed:
            problems.append(f"programs could not be re-attached to {', '.join(failed)}")
        if taken:
            problems.append(f"{', '.join(taken)}: another ebpflb data plane's programs are "
                            "attached there")
        missing = self.missing_node_devices(present.values())
        if missing:
            problems.append(f"node device {', '.join(missing)} not found")
        return Finding("; ".join(problems) or None,
                       [("device", f"programs re-attached to {name}") for name in repaired])

    def _xdp_state(self, ipr, ifindex: int) -> Optional[str]:
        """The node device's XDP program: ours (OK), none (MISSING), another's (TAKEN)."""
        from pyroute2.netlink.exceptions import NetlinkError

        from .node_attach import xdp_attached

        mode = self.nodes.attached[ifindex].xdp
        if not mode:
            return OK  # TC mode: no XDP program of ours to check
        try:
            prog = xdp_attached(ipr, ifindex)[1]
        except (NetlinkError, OSError, IndexError):
            return None
        if prog == self.xdp_ids.get(mode):
            return OK
        return MISSING if not prog else TAKEN

    def missing_node_devices(self, present: Iterable[str]) -> List[str]:
        """Node devices named exactly (no glob) that do not exist: nothing is served there."""
        if self.nodes is None:
            return []
        names = set(present)
        return [p for p in self.nodes.patterns if not any(c in p for c in "*?[") and p not in names]

    def hooks(self) -> Finding:
        from .sock_attach import attach_sock_hooks, hooks_attached

        if not self.cgroup or not self.sock:
            return Finding()
        try:
            missing = missing_hooks(self.cgroup, self.sock_ids, hooks_attached)
            if not missing:
                return Finding()
            ours = frozenset(self.sock_ids.values())
            attach_sock_hooks(self.cgroup, self.sock, lambda i: i in ours)
            still = missing_hooks(self.cgroup, self.sock_ids, hooks_attached)
        except OSError as exc:
            return Finding(f"socket hooks on {self.cgroup}: {exc}")
        if still:
            return Finding(f"socket hooks {', '.join(still)} not attached to {self.cgroup}")
        return Finding(None, [("socket_hooks", f"socket hooks re-attached to {self.cgroup}: "
                                               f"{', '.join(missing)}")])
