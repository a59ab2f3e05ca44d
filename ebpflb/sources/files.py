"""The manifest source: a file, or a directory of *.yaml / *.yml / *.json, watched with inotify.

sources -> changes -> store -> model -> plan -> apply. The agent wakes on the inotify descriptor
(`fileno()`); `take()` then looks only at the files an event named, re-reads only those whose
file a close or a rename named, and hands over the objects whose effective version changed
(ebpflb.manifest_set decides; ebpflb.documents re-parses only the documents whose text changed).
A file is read once its writer closed it or renamed it into place, not while it is being written
(a new file only when it is closed). A `..` entry changing (a ConfigMap volume swapping its
`..data` link) makes every file be read again at once; a lost event queue, and a slow safety
rescan, look at every file's fingerprint (device, inode, size, mtime, ctime), and read one that
changed unannounced once it stopped changing. Where inotify is not available (or runs out of
watches) the source polls the same way.

Whatever the file system does, the answer is an error about that file, never a crash: a
symlink loop, a dangling link, an unreadable file, a directory or a FIFO where a file was, a file
that is not UTF-8 or is absurdly large. Such a file, like a file that does not parse, keeps the
objects it defined last time; only a file that is gone takes its objects with it. A manifest
directory that disappears keeps everything (an unmounted volume is not a deleted cluster).
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..backend_rules import DEFAULT_SERVICE_CIDRS
from ..changes import ChangeBatch
from ..errors import ManifestError
from ..manifest_set import ManifestSet
from ..manifests import MANIFEST_SUFFIXES

log = logging.getLogger(__name__)

Fingerprint = Tuple[int, int, int, int, int]  # device, inode, size, mtime ns, ctime ns
MAX_FILE_BYTES = 1 << 30  # a kubectl dump of 100,000 Services is ~150 MB
POLL_INTERVAL = 1.0  # seconds between polls without inotify
RESCAN_INTERVAL = 30.0  # seconds between safety rescans with inotify
SETTLE_RECHECK = 1.0  # seconds before a file that changed unannounced is looked at again
# After a take that handled events, one more take this soon (it reads nothing new, unless more
# came): its start becomes the revision, so the revision passes every write already read.
FOLLOW_UP = 0.01


def _inotify_mask():
    from inotify_simple import flags

    # No IN_MODIFY: a file is read when its writer is done (close or rename), not mid-write.
    return (flags.CLOSE_WRITE | flags.MOVED_TO | flags.MOVED_FROM | flags.CREATE | flags.DELETE
            | flags.ATTRIB | flags.DELETE_SELF | flags.MOVE_SELF)


class ManifestSource:
    def __init__(self, path: str, service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS,
                 poll_interval: float = POLL_INTERVAL, rescan_interval: float = RESCAN_INTERVAL,
                 use_inotify: bool = True) -> None:
        self.path = Path(path)
        self.service_cidrs = tuple(service_cidrs)
        self.description = f"manifests {self.path}"
        # A directory or a file: decided once the path exists (then for good).
        self.is_dir: Optional[bool] = self.path.is_dir() if self.path.exists() else None
        self.poll_interval = poll_interval
        self.rescan_interval = rescan_interval
        self.mset = ManifestSet(self.service_cidrs, text_of=self._text_for_lines)
        self._use_inotify = use_inotify
        self._inotify = None
        self._watch: Optional[int] = None
        self._fingerprints: Dict[str, Fingerprint] = {}
        self._settling: Dict[str, Fingerprint] = {}  # changed once unannounced, read if it stays so
        self._names: Dict[str, int] = {}  # names events mentioned since the last take: their masks
        self._rescan: Optional[str] = "start"  # why every file must be looked at: start, swap, lost
        self._next_scan = 0.0
        self._problems: Dict[str, str] = {}  # file -> its last reported problem (logged once)
        self.synced = False
        self.changed_at: Optional[float] = None
        self._revision = 0  # wall clock (ns): every file written before it has been read
        self._last_poll_ns = 0
        self._follow_up: Optional[float] = None  # time.monotonic() of a take due after events

    # --- lifecycle -----------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return "inotify" if self._watch is not None else "poll"

    def start(self) -> None:
        if self._use_inotify and self._inotify is None:
            try:
                from inotify_simple import INotify

                self._inotify = INotify(nonblocking=True)
            except (ImportError, OSError) as exc:
                log.warning("%s: inotify not available (%s): polling every %.1f s",
                            self.description, exc, self.poll_interval)
        self._add_watch()

    def _add_watch(self) -> None:
        if self._inotify is None or self._watch is not None:
            return
        if self.is_dir is None:
            if not self.path.exists():
                return  # not there yet: polled until it is
            self.is_dir = self.path.is_dir()
        target = self.path if self.is_dir else self.path.parent
        try:
            self._watch = self._inotify.add_watch(str(target), _inotify_mask())
        except OSError as exc:
            # ENOSPC: out of watches (fs.inotify.max_user_watches); ENOENT: gone meanwhile.
            self._report(f"watch {target}", f"cannot watch {target} ({exc.strerror or exc}): "
                                             f"polling every {self.poll_interval:.1f} s")
            self._watch = None

    def stop(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
            self._watch = None

    def fileno(self) -> Optional[int]:
        """Readable when a change may be waiting; None while polling."""
        return self._inotify.fileno() if self._inotify is not None and self._watch is not None else None

    def next_poll(self) -> float:
        """When (time.monotonic) `take()` should run even without an event."""
        if self._follow_up is not None:
            return min(self._next_scan, self._follow_up)
        return self._next_scan

    # --- the Source protocol -------------------------------------------------------------
    def take(self) -> ChangeBatch:
        """Reads what changed; the objects whose effective version changed."""
        now = time.monotonic()
        started_ns = time.time_ns()
        watching = self._watch is not None
        self._drain()
        self._follow_up = now + FOLLOW_UP if self._names else None
        if self._watch is None:
            self._add_watch()  # the directory may be back, or watches freed
        if self.is_dir is None and self.path.exists():
            self.is_dir = self.path.is_dir()
        due = now >= self._next_scan
        errors: List[ManifestError] = []
        if self.is_dir is None:
            self._report(str(self.path), "no such file or directory: waiting for it")
            ok = False
        elif self._rescan or due or not watching:
            # A scan reads at once what an atomic swap changed (start, a ConfigMap's ..data);
            # a file that changed unannounced (polling, a safety rescan, lost events) is read
            # once it stopped changing, so one caught mid-write is not.
            settle = self._rescan not in ("start", "swap")
            ok, errors = self._scan(settle)
            self._next_scan = now + (self.rescan_interval if self._watch is not None
                                     else self.poll_interval)
        else:
            ok, errors = True, self._check_names()
        if self._settling or not ok:
            self._next_scan = min(self._next_scan, now + min(SETTLE_RECHECK, self.poll_interval))
        if ok:
            self._rescan = None
            self.synced = True
            # With inotify, every file closed or renamed into place before the events were
            # drained has been read; polling reads a change one poll after it was seen.
            self._revision = max(self._revision, started_ns if watching else self._last_poll_ns)
            self._last_poll_ns = started_ns
        self._names.clear()
        changes = self.mset.take_changes()
        batch = ChangeBatch(changes, self.changed_at if changes else None, tuple(errors))
        if changes:
            self.changed_at = None
        return batch

    def own_node(self) -> None:
        return None  # no Node objects in manifests: the agent's --node-zone stands in

    def problems(self) -> List[ManifestError]:
        return self.mset.problems()

    def revision(self) -> int:
        """A wall-clock time (ns): every file written (closed, or renamed into place) before it
        has been read. Once the agent reports it applied, those files' objects are in the maps."""
        return self._revision

    # --- events --------------------------------------------------------------------------
    def _drain(self) -> None:
        if self._inotify is None or self._watch is None:
            return
        from inotify_simple import flags

        try:
            events = self._inotify.read(timeout=0)
        except OSError as exc:
            log.warning("%s: reading inotify events failed (%s): rescanning", self.description, exc)
            self._rescan = self._rescan or "lost"
            return
        for event in events:
            if event.mask & (flags.Q_OVERFLOW | flags.DELETE_SELF | flags.MOVE_SELF | flags.IGNORED):
                self._rescan = self._rescan or "lost"
                if event.mask & (flags.DELETE_SELF | flags.MOVE_SELF | flags.IGNORED):
                    self._watch = None  # the directory itself went: poll until it is back
            elif event.name.startswith(".."):
                self._rescan = "swap"  # a ConfigMap volume's ..data link swapped: all at once
            elif event.name.startswith("."):
                continue  # an editor's or a script's temporary file
            else:
                self._names[event.name] = self._names.get(event.name, 0) | event.mask

    # --- files ---------------------------------------------------------------------------
    def _listing(self) -> Optional[List[str]]:
        """The manifest files present now, or None when the path itself cannot be listed."""
        if not self.is_dir:
            return [str(self.path)]
        try:
            with os.scandir(self.path) as entries:
                return sorted(str(self.path / e.name) for e in entries
                              if e.name.endswith(MANIFEST_SUFFIXES) and not e.name.startswith("."))
        except OSError as exc:
            self._report(str(self.path), f"cannot list the directory ({_why(exc)}): every object "
                                         "read from it stays programmed")
            return None

    def _scan(self, settle: bool) -> Tuple[bool, List[ManifestError]]:
        """(whether the path could be read, the problems found)."""
        listing = self._listing()
        if listing is None:
            return False, []
        self._problems.pop(str(self.path), None)
        errors: List[ManifestError] = []
        for name in sorted(set(listing) | set(self.mset.files())):
            errors.extend(self._check(name, settle))
        ok = self.is_dir or str(self.path) in self._fingerprints
        return ok, errors

    def _check_names(self) -> List[ManifestError]:
        from inotify_simple import flags

        errors: List[ManifestError] = []
        for name, mask in sorted(self._names.items()):
            if self.is_dir:
                if not name.endswith(MANIFEST_SUFFIXES):
                    continue
                path = str(self.path / name)
            elif name == self.path.name:
                path = str(self.path)
            else:
                continue
            if mask & ~flags.CREATE == 0 and not os.path.islink(path):
                continue  # created, still being written: read once its writer closes it
            # Named by an event: read whatever its fingerprint says (a rewrite of the same size
            # within the file system's timestamp granularity looks unchanged).
            errors.extend(self._check(path, settle=False, force=True))
        return errors

    def _check(self, name: str, settle: bool, force: bool = False) -> List[ManifestError]:
        """Looks at one file; reads it when its fingerprint changed (or when `force`)."""
        try:
            st = os.stat(name)
        except FileNotFoundError:
            if os.path.lexists(name):
                return self._file_error(name, "dangling symlink (its target is missing)")
            if self.is_dir:
                self._gone(name)
                return []
            # The one file of a file source: an unmounted volume, not a deleted cluster.
            return self._file_error(name, "no such file: every object read from it stays "
                                          "programmed")
        except OSError as exc:
            return self._file_error(name, _why(exc))
        if stat.S_ISDIR(st.st_mode):
            return self._file_error(name, "is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            return self._file_error(name, "not a regular file (a FIFO, socket or device)")
        fp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if fp == self._fingerprints.get(name) and not force:
            return []
        if settle and self._settling.get(name) != fp:
            self._settling[name] = fp  # read at the next look if it stays so
            return []
        self._settling.pop(name, None)
        if st.st_size > MAX_FILE_BYTES:
            return self._file_error(name, f"{st.st_size} bytes: larger than {MAX_FILE_BYTES}")
        try:
            with open(name, "rb") as f:
                text = f.read(MAX_FILE_BYTES + 1).decode("utf-8")
        except UnicodeDecodeError as exc:
            return self._file_error(name, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
        except OSError as exc:
            return self._file_error(name, _why(exc))
        self._fingerprints[name] = fp
        self._revision = max(self._revision, st.st_mtime_ns)
        self._problems.pop(name, None)
        mtime = st.st_mtime_ns / 1e9
        self.changed_at = mtime if self.changed_at is None else min(self.changed_at, mtime)
        try:
            errors = self.mset.update_file(name, text)
        except Exception as exc:  # noqa: BLE001 - a reader defect must not take the agent down
            log.exception("%s: reading %s failed", self.description, name)
            return self._file_error(name, f"internal error while reading it ({exc!r}); please "
                                          "report it")
        for e in errors:
            if e.obj is None:
                log.error("%s: %s (the objects the file defined stay programmed)",
                          self.description, e)
            else:
                log.error("%s: refused, its last good version stays programmed: %s",
                          self.description, e)
        return errors

    def _gone(self, name: str) -> None:
        self._fingerprints.pop(name, None)
        self._settling.pop(name, None)
        self._problems.pop(name, None)
        if name in self.mset.files():
            log.info("%s: %s removed, its objects go with it", self.description, name)
            self.changed_at = time.time() if self.changed_at is None else self.changed_at
            self.mset.remove_file(name)

    def _file_error(self, name: str, message: str) -> List[ManifestError]:
        """The file cannot be read as it is now: its objects stay as they were."""
        error = ManifestError(name, None, None, f"cannot read: {message}")
        self._fingerprints.pop(name, None)  # read it again once it can be
        self.mset.file_error(name, error)
        self._report(name, str(error))
        return [error]

    def _report(self, name: str, message: str) -> None:
        """Logged once per new problem (a problem that persists is not logged every poll)."""
        if self._problems.get(name) != message:
            self._problems[name] = message
            log.error("%s: %s", self.description, message)

    def _text_for_lines(self, name: str) -> Optional[str]:
        try:
            with open(name, "rb") as f:
                return f.read(MAX_FILE_BYTES).decode("utf-8", errors="replace")
        except OSError:
            return None


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOTDIR:
        return "a path component is not a directory"
    return exc.strerror or str(exc)
