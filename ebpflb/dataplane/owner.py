"""One owner per data plane: the agent holds an exclusive flock on its pin directory for as long
as it runs, so a second agent on the same directory refuses to start and one-shot writers
(`ebpflb sync`, `cleanup`, `ct flush`) refuse to act under it unless told --force.

The lock is on the pin directory itself (bpffs keeps flock like any file system): every process
that can see the pins sees the lock, whatever container or mount namespace it runs in, and the
kernel drops it when the holder dies, so a killed agent never leaves a stale lock behind. The
holder's pid comes from /proc/locks, by the directory's device and inode."""
import errno
import fcntl
import os
import time
from typing import Optional


class Owned(RuntimeError):
    """The pin directory is held by another process (`pid`, None when /proc/locks does not
    show it, as from another pid namespace)."""

    def __init__(self, pin_dir: str, pid: Optional[int]):
        self.pin_dir = pin_dir
        self.pid = pid
        who = (f"a running ebpflb process (pid {pid}{_command(pid)})" if pid
               else "another running ebpflb process")
        super().__init__(f"the data plane in {pin_dir} is owned by {who}")


def _command(pid: int) -> str:
    """": ebpflb agent ..." (what the holder runs, from /proc), or "" when unreadable."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return ""
    names = {"agent": "agent", "sync": "sync", "cleanup": "cleanup", "flush": "ct flush"}
    words = [names[a] for a in argv if a in names]
    return f": ebpflb {words[0]}" if words else ""


class OwnerLock:
    """The held lock; `release()` (or the process's end) gives it up."""

    def __init__(self, pin_dir: str, fd: int):
        self.pin_dir = pin_dir
        self.fd: Optional[int] = fd
        st = os.fstat(fd)
        self.identity = (st.st_dev, st.st_ino)

    def still_held(self) -> bool:
        """False once the directory this lock is on was removed or replaced (`ebpflb cleanup
        --force` under the agent): the lock guards nothing any more, and must be taken again."""
        try:
            st = os.stat(self.pin_dir)
        except OSError:
            return False
        return self.fd is not None and (st.st_dev, st.st_ino) == self.identity

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def _try_lock(pin_dir: str) -> Optional[OwnerLock]:
    fd = os.open(pin_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return OwnerLock(pin_dir, fd)


def acquire(pin_dir: str, wait: float = 0.0) -> OwnerLock:
    """Takes the pin directory (which must exist), waiting up to `wait` seconds for a holder to
    let go (a one-shot command finishing). Raises Owned when it does not."""
    deadline = time.monotonic() + wait
    while True:
        try:
            lock = _try_lock(pin_dir)
        except FileNotFoundError:
            # Removed meanwhile (a previous agent's --on-exit remove): made again, and taken.
            os.makedirs(pin_dir, mode=0o700, exist_ok=True)
            continue
        if lock is not None:
            return lock
        if time.monotonic() >= deadline:
            raise Owned(pin_dir, holder(pin_dir))
        time.sleep(0.1)


def holder(pin_dir: str, locks_path: str = "/proc/locks") -> Optional[int]:
    """The pid holding the flock on `pin_dir`, as /proc/locks shows it (None: not held, or not
    shown)."""
    try:
        st = os.stat(pin_dir)
        with open(locks_path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 31392 00:28:24671086 0 EOF" (a blocked waiter has "->")
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or "->" in fields:
            continue
        try:
            major, minor, inode = fields[5].split(":")
            found = (int(major, 16), int(minor, 16), int(inode))
            pid = int(fields[4])
        except ValueError:
            continue
        if found == want:
            return pid or None
    return None


def for_command(pin_dir: str, force: bool = False) -> Optional[OwnerLock]:
    """For a one-shot writer: the lock while it works (so no agent starts halfway), None when
    there is no directory yet. Raises Owned when a live agent holds it, unless `force` (the
    command then acts under the agent, which notices and repairs what it needs)."""
    if not os.path.isdir(pin_dir):
        return None
    lock = _try_lock(pin_dir)
    if lock is None and not force:
        raise Owned(pin_dir, holder(pin_dir))
    return lock
