"""The manifest source: a file, or a directory of *.yaml / *.yml / *.json, read again whenever a
file in it is added, removed or changed. Change detection compares (name, size, mtime, inode) of
every file, so an editor's rename-over-write is seen too."""
import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

from ..backend_rules import DEFAULT_SERVICE_CIDRS
from ..manifests import Manifests, load_manifests

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

Fingerprint = Tuple[Tuple[str, int, int, int], ...]


class ManifestSource:
    def __init__(self, path: str, service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS):
        self.path = Path(path)
        self.service_cidrs = tuple(service_cidrs)
        self.description = f"manifests {self.path}"
        self._seen: Optional[Fingerprint] = None
        # Wall-clock time of the newest file change: where programming latency starts.
        self.changed_at: Optional[float] = None

    def _fingerprint(self) -> Fingerprint:
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir() if p.suffix in MANIFEST_SUFFIXES)
        else:
            files = [self.path]
        out = []
        for p in files:
            try:
                st = os.stat(p)
            except FileNotFoundError:
                continue  # removed between listing and stat: the next poll sees the new state
            out.append((str(p), st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(out)

    def poll(self) -> Optional[Manifests]:
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such file or directory")
        fp = self._fingerprint()
        if fp == self._seen:
            return None
        # Remember the fingerprint before parsing, so a bad edit is reported once, not every poll.
        self._seen = fp
        self.changed_at = max((mtime_ns for _, _, mtime_ns, _ in fp), default=0) / 1e9 or None
        return load_manifests(self.path, service_cidrs=self.service_cidrs)
