"""Kernel and process plumbing of the lab: network namespaces, sysctls, processes, commands.

Where it sits: under ebpflb/lab/lab.py, which decides what to build; this module only knows how
to enter a namespace, create or remove one, write a sysctl in it, and find and stop the
processes inside it; and run_cmd, for callers that do shell out (`ip -n`, `tc -n`), with an
error naming the command and its stderr. The lab itself avoids a process per step: setns,
/proc/sys and /proc/<pid>/ns do what `ip netns exec`, `sysctl` and `ip netns pids` would.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import time
from typing import Dict, Iterator, List, Optional, Sequence

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from ..dataplane.netns import setns_thread
from ..dataplane.sock_attach import cgroup_pids
from .topology import NETNS_DIR

log = logging.getLogger(__name__)



class LabError(RuntimeError):
    """Something in the lab could not be built, found or removed."""


class LabExistsError(LabError):
    """lab_up was asked for a lab (or pod) that already exists."""


class LabConfigError(LabError, ValueError):
    """A lab or pod name or address is invalid (a ValueError too, for callers that check input)."""


class LabNotFoundError(LabError):
    """The lab or pod an operation names does not exist."""


class CommandError(LabError):
    """A command the lab ran failed; carries the command line and its stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"command {' '.join(self.argv)!r} failed with exit code {returncode}: {stderr.strip()}")


def run_cmd(argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run a command (e.g. `ip -n NS ...`), capture its output as text, raise CommandError on a
    non-zero exit, a missing binary or a timeout."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise CommandError(argv, 127, f"{argv[0]}: not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, -1, f"timed out after {timeout}s") from exc
    if proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stderr)
    return proc


# ---------------------------------------------------------------- namespaces

def netns_path(ns: str) -> str:
    """Path of a named namespace (as `ip netns` names it); a path is returned unchanged."""
    return ns if "/" in ns else os.path.join(NETNS_DIR, ns)


def netns_exists(ns: str) -> bool:
    return os.path.exists(netns_path(ns))


def list_netns() -> List[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def create_netns(ns: str) -> None:
    """Create a named network namespace, like `ip netns add`; refuse if it exists."""
    if netns_exists(ns):
        raise LabExistsError(f"netns {ns} already exists")
    try:
        pr_netns.create(ns)
    except OSError as exc:
        raise LabError(f"netns {ns}: create failed: {exc}") from exc
    log.debug("netns %s: created", ns)


def remove_netns(ns: str) -> bool:
    """Remove a named namespace (unmount and unlink); False if it was not there.

    The namespace itself disappears when its last user goes (a process, an open socket).
    """
    path = netns_path(ns)
    if not os.path.exists(path):
        return False
    try:
        pr_netns.remove(ns)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise LabError(f"netns {ns}: remove failed: {exc}") from exc
    log.debug("netns %s: removed", ns)
    return True


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run the body with the CURRENT THREAD in network namespace `ns` (name or path).

    Only this thread moves (setns acts per thread); sockets and netlink handles created inside
    stay bound to `ns` after the block. Child processes started inside inherit `ns`. The
    previous namespace is restored on exit, also on error. pyroute2's pushns/popns are not
    used: they save /proc/self (the main thread's namespace) on one global stack.
    """
    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(netns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise LabNotFoundError(f"netns {ns} does not exist") from exc
        try:
            setns_thread(target, f"netns {ns}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            # Failing to come back would leave this thread (maybe the main one) in a lab
            # namespace that is about to be deleted; that must not pass silently.
            setns_thread(saved, "the saved netns")
    finally:
        os.close(saved)


@contextlib.contextmanager
def netns_ipr(ns: str) -> Iterator[IPRoute]:
    """An IPRoute (rtnetlink socket) bound to namespace `ns`, closed on exit."""
    with in_netns(ns):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def current_netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


# ------------------------------------------------------------------ sysctls

def _sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def write_sysctls(ns: str, values: Dict[str, str]) -> None:
    """Write sysctls inside `ns`. Keys use dots; an interface name must not contain one.

    /proc/sys/net resolves against the opening thread's namespace, so in_netns is enough and
    no `ip netns exec sysctl` process is needed.
    """
    with in_netns(ns):
        for key, value in values.items():
            try:
                with open(_sysctl_path(key), "w") as fh:
                    fh.write(str(value))
            except OSError as exc:
                raise LabError(f"netns {ns}: sysctl {key}={value} failed: {exc}") from exc


def read_sysctl(ns: str, key: str) -> str:
    with in_netns(ns):
        with open(_sysctl_path(key)) as fh:
            return fh.read().strip()


# ------------------------------------------------------------------ cgroups

def in_cgroup(cgroup: Optional[str], argv: Sequence[str]) -> List[str]:
    """`argv` prefixed so that its process joins `cgroup` before it runs (None: unchanged). A
    shell moves itself (writing 0 to cgroup.procs) and execs the command, which stays there: no
    preexec_fn, which is unsafe in a process that runs threads."""
    if cgroup is None:
        return list(argv)
    return ["sh", "-c", 'echo 0 > "$0" && exec "$@"', os.path.join(cgroup, "cgroup.procs"),
            *argv]


def remove_cgroup(cgroup: str) -> List[str]:
    """Removes a cgroup and those below it (deepest first), after stopping what runs in them;
    the socket hooks attached there go with them. Returns what was removed."""
    if not os.path.isdir(cgroup):
        return []
    removed = [f"process {pid} (cgroup {cgroup})" for pid in kill_pids(cgroup_pids(cgroup))]
    for root, _dirs, _files in sorted(os.walk(cgroup), key=lambda w: -w[0].count("/")):
        deadline = time.monotonic() + 2.0
        while True:
            try:
                os.rmdir(root)
                removed.append(f"cgroup {root}")
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                # EBUSY while a killed process is still being torn down.
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise LabError(f"cgroup {root}: remove failed: {exc}") from exc
                time.sleep(0.02)
    return removed


# ---------------------------------------------------------------- processes

def netns_pids(ns: str) -> List[int]:
    """Pids whose network namespace is `ns` (what `ip netns pids` prints), never our own."""
    try:
        st = os.stat(netns_path(ns))
    except FileNotFoundError:
        return []
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            pst = os.stat(f"/proc/{entry}/ns/net")
        except OSError as exc:
            # The process exited while we looked, or is a zombie (no namespaces left).
            if exc.errno in (errno.ENOENT, errno.ESRCH, errno.EACCES):
                continue
            raise
        if (pst.st_dev, pst.st_ino) == (st.st_dev, st.st_ino):
            pids.append(int(entry))
    return sorted(pids)


def pid_alive(pid: Optional[int]) -> bool:
    """True if `pid` runs; a zombie (exited, not yet reaped) counts as dead."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the parenthesised command name, which may itself contain ") ".
    return stat[stat.rindex(")") + 2:][:1] not in ("Z", "X")


def kill_pids(pids: Sequence[int], grace: float = 2.0) -> List[int]:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL; returns the pids that were signalled.

    A process that exits is not reaped here: if it is a child of this process, its exit status
    belongs to whoever started it (a subprocess.Popen); as a zombie it already counts as dead.
    """
    signalled = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            signalled.append(pid)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + grace
    pending = list(signalled)
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if pid_alive(p)]
        if pending:
            time.sleep(0.01)
    for pid in pending:
        log.warning("process %d: did not stop on SIGTERM within %.1fs, sending SIGKILL", pid, grace)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pending:
        deadline = time.monotonic() + 2.0
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
    return signalled
