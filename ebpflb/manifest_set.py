"""A set of manifest files and the objects they define, kept up to date one file at a time (pure
core: the manifest source reads the files, this decides what they mean).

sources -> **manifest set** -> changes -> store -> model -> plan -> apply. Rules:
- an object is defined by (kind, namespace, name); when several definitions exist, the first in
  (file name, document, position) order is the one that counts, the others are refused as
  duplicates naming where the first one is (but for identical definitions of a cluster-scoped
  object, a GatewayClass or a Namespace, which many applications' manifests may each carry);
- a refused object keeps its last good version; an object whose every definition is gone (its
  file removed, the object deleted from its file) is deleted;
- a file that cannot be read or parsed keeps the objects it defined last time (the manifest
  source reads a file once its writer is done with it, so a half-written one is not seen);
- `take_changes()` returns the objects whose effective version changed since the last call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from .backend_rules import DEFAULT_SERVICE_CIDRS
from .changes import Change
from .convert import CLUSTER_SCOPED_KINDS, Converted, ModelObject, ObjectKey
from .documents import ObjectEntry, ReadCache, object_line, read_text
from .errors import FieldPath, ManifestError

DefKey = Tuple[str, ObjectKey]  # (kind, (namespace, name))


@dataclass(frozen=True, slots=True)
class Definition:
    file: str
    docno: int
    base: FieldPath
    converted: Converted
    line: Optional[int] = None  # known at read time for most objects

    @property
    def order(self) -> Tuple[str, int, FieldPath]:
        return (self.file, self.docno, self.base)


@dataclass
class _FileState:
    entries: Tuple[ObjectEntry, ...] = ()
    cache: ReadCache = field(default_factory=ReadCache)
    error: Optional[ManifestError] = None  # the file as it is now cannot be read
    refused: Tuple[ManifestError, ...] = ()  # the problems of its refused objects


def _claims(entries) -> Dict[DefKey, List[ObjectEntry]]:
    """The entries of a file that define one of ebpflb's objects, by (kind, key)."""
    out: Dict[DefKey, List[ObjectEntry]] = {}
    for entry in entries:
        c = entry.converted
        if c.claims and c.key is not None and c.kind is not None:
            out.setdefault((c.kind, c.key), []).append(entry)
    return out


class ManifestSet:
    """`text_of(file)` gives a file's current text, to find lines for duplicate errors (an
    error path; the texts are not kept)."""

    def __init__(self, service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS,
                 text_of: Optional[Callable[[str], Optional[str]]] = None) -> None:
        self.service_cidrs = tuple(service_cidrs)
        self._text_of = text_of
        self._files: Dict[str, _FileState] = {}
        self._defs: Dict[DefKey, List[Definition]] = {}
        self._effective: Dict[DefKey, ModelObject] = {}
        self._dirty: Set[DefKey] = set()
        self._duplicated: Set[DefKey] = set()  # keys with more than one definition
        self._lines: Dict[Tuple[str, int, FieldPath], Optional[int]] = {}
        self.parsed_bytes = 0  # bytes parsed over the set's life (not served from caches)

    # --- files in ------------------------------------------------------------------------
    def files(self) -> List[str]:
        return sorted(self._files)

    def update_file(self, name: str, text: str) -> List[ManifestError]:
        """A file's new text; the problems it has now (text errors, refused objects, duplicates
        it takes part in). A text that does not parse changes nothing but the file's error."""
        state = self._files.setdefault(name, _FileState())
        result = read_text(text, name, self.service_cidrs, state.cache)
        self.parsed_bytes += result.parsed_bytes
        if result.errors:
            state.error = result.errors[0]
            return list(result.errors)
        old_by_key = _claims(state.entries)
        new_by_key = _claims(result.entries)
        state.entries, state.cache, state.error = tuple(result.entries), result.cache, None
        state.refused = tuple(e for entry in state.entries for e in entry.errors)
        self._lines = {k: v for k, v in self._lines.items() if k[0] != name}
        touched = []
        for key in old_by_key.keys() | new_by_key.keys():
            before, after = old_by_key.get(key, []), new_by_key.get(key, [])
            # Unchanged content (the file rewritten around it): the object's verdict is the same
            # one, so nothing to hand over; only a move within the file updates its position.
            same = [e.digest for e in before] == [e.digest for e in after] and all(
                e.digest for e in after)
            if same and [(e.docno, e.base) for e in before] == [(e.docno, e.base) for e in after]:
                continue
            defs = self._defs.setdefault(key, [])
            defs[:] = [d for d in defs if d.file != name]
            defs.extend(Definition(name, e.docno, e.base, e.converted, e.line) for e in after)
            defs.sort(key=lambda d: d.order)
            if not defs:
                del self._defs[key]
            if len(defs) > 1:
                self._duplicated.add(key)
            else:
                self._duplicated.discard(key)
            if same:
                continue
            self._dirty.add(key)
            touched.append(key)
        problems = list(state.refused)
        problems += [e for key in touched for e in self._duplicate_errors(key)]
        return problems

    def file_error(self, name: str, error: ManifestError) -> None:
        """The file cannot be read (permissions, a symlink loop, a directory in its place): its
        objects stay as they were until it can be read again."""
        self._files.setdefault(name, _FileState()).error = error

    def remove_file(self, name: str) -> None:
        """The file is gone: so are the objects only it defined."""
        state = self._files.pop(name, None)
        if state is not None:
            self._drop_definitions(name, state)
            self._lines = {k: v for k, v in self._lines.items() if k[0] != name}

    def _drop_definitions(self, name: str, state: _FileState) -> None:
        for entry in state.entries:
            c = entry.converted
            if not (c.claims and c.key is not None and c.kind is not None):
                continue
            key = (c.kind, c.key)
            defs = self._defs.get(key, [])
            defs[:] = [d for d in defs if d.file != name]
            if not defs:
                self._defs.pop(key, None)
            if len(defs) < 2:
                self._duplicated.discard(key)
            self._dirty.add(key)

    # --- changes out ---------------------------------------------------------------------
    def take_changes(self) -> List[Change]:
        out = []
        for key in sorted(self._dirty):
            defs = self._defs.get(key)
            old = self._effective.get(key)
            if not defs:
                new = None
            else:
                first = defs[0].converted
                if first.obj is not None:
                    new = first.obj
                elif first.refused:
                    new = old  # the last good version stays
                else:
                    new = None  # well-formed but not used (a slice that names no Service)
            if new is None:
                self._effective.pop(key, None)
            else:
                self._effective[key] = new
            if new is not old and new != old:
                out.append(Change(key[0], key[1], new))
        self._dirty.clear()
        return out

    def objects(self) -> List[Tuple[DefKey, ModelObject]]:
        """The effective objects in definition order (file, document, position)."""
        def order(item: Tuple[DefKey, ModelObject]) -> Tuple[str, int, FieldPath]:
            defs = self._defs.get(item[0])
            return defs[0].order if defs else ("", 0, ())
        return sorted(self._effective.items(), key=order)

    # --- problems ------------------------------------------------------------------------
    def problems(self) -> List[ManifestError]:
        """Every current problem: unreadable files, refused objects, duplicates; per file in
        file order, by line. Costs the problems, not the files' objects (the agent's status
        shows them after every sync)."""
        by_file: Dict[str, List[ManifestError]] = {}
        for name, state in self._files.items():
            if state.error is None and not state.refused:
                continue
            errs = by_file.setdefault(name, [])
            if state.error is not None:
                errs.append(state.error)
            errs.extend(state.refused)
        for key in self._duplicated:
            for e in self._duplicate_errors(key):
                by_file.setdefault(e.source, []).append(e)
        out = []
        for name in sorted(by_file):
            out.extend(sorted(by_file[name], key=lambda e: e.line if e.line is not None else 0))
        return out

    def ignored(self) -> List[str]:
        """Objects read but not used, e.g. "ConfigMap default/x (kind not used by ebpflb)"."""
        return [f"{e.converted.label} ({e.converted.ignored})"
                for name in sorted(self._files) for e in self._files[name].entries
                if e.converted.ignored]

    def _duplicate_errors(self, key: DefKey) -> List[ManifestError]:
        defs = self._defs.get(key, [])
        if len(defs) < 2:
            return []
        if key[0] in CLUSTER_SCOPED_KINDS and defs[0].converted.obj is not None and all(
                d.converted.obj == defs[0].converted.obj for d in defs[1:]):
            # A GatewayClass or a Namespace is shared by the manifests of many applications,
            # each of which may carry it: the same object defined twice is one object.
            return []
        first = defs[0]
        where = first.file
        line = self._line(first)
        if line is not None:
            where = f"{first.file}:{line}"
        return [ManifestError(d.file, d.converted.label, None,
                              f"duplicate object: already defined at {where}", self._line(d))
                for d in defs[1:]]

    def _line(self, d: Definition) -> Optional[int]:
        if d.line is not None:
            return d.line
        at = (d.file, d.docno, d.base)
        if at not in self._lines:
            text = self._text_of(d.file) if self._text_of is not None else None
            self._lines[at] = object_line(text, d.docno, d.base) if text is not None else None
        return self._lines[at]
