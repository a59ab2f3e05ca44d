"""Load manifests all at once, all or nothing (pure core apart from reading the files).

For `ebpflb sync`, the lab and tests: a file, or every *.yaml/*.yml/*.json directly in a directory
(sorted by name), read with the same reader, converter and duplicate rule as the agent's manifest
source (ebpflb.documents, ebpflb.convert, ebpflb.manifest_set). Where the agent refuses a bad object
alone and keeps its last good version, this loader has no last good version: any problem in any
file refuses the whole load, and every problem is reported together as ManifestErrors.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

from .backend_rules import DEFAULT_SERVICE_CIDRS, parse_service_cidrs
from .convert import ObjectKey
from .errors import ManifestError, ManifestErrors  # noqa: F401 - re-exported
from .manifest_set import ManifestSet
from .model import EndpointSlice, Service

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Manifests:
    services: Tuple[Service, ...]
    slices: Tuple[EndpointSlice, ...]
    ignored: Tuple[str, ...]  # e.g. "ConfigMap default/x (kind not used by ebpflb)"
    # The Gateway API objects (and Namespaces), as (kind, (namespace, name), object)
    gateway: Tuple[Tuple[str, ObjectKey, Any], ...] = ()


def manifest_files(directory: Path) -> List[Path]:
    """The manifest files of a directory: *.yaml, *.yml and *.json directly in it, sorted by
    name. Dotfiles are editor and ConfigMap-volume bookkeeping, never manifests."""
    return sorted(f for f in directory.iterdir()
                  if f.suffix in MANIFEST_SUFFIXES and not f.name.startswith("."))


def load_manifests(path: Union[str, Path],
                   service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS) -> Manifests:
    """Parse a file, or every manifest file of a directory. Endpoint addresses that must not be
    backends (ebpflb.backend_rules, with `service_cidrs` as the Service range) are errors; a bad
    `service_cidrs` entry is a ValueError."""
    parse_service_cidrs(tuple(service_cidrs))  # a bad range fails here, before any file is read
    p = Path(path)
    texts: Dict[str, str] = {}
    mset = ManifestSet(service_cidrs, text_of=texts.get)
    errors: List[ManifestError] = []
    if p.is_dir():
        files = [f for f in manifest_files(p) if f.is_file()]
        if not files:
            errors.append(ManifestError(str(p), None, None,
                                        "directory holds no *.yaml, *.yml or *.json file"))
    elif p.exists():
        files = [p]
    else:
        files = []
        errors.append(ManifestError(str(p), None, None, "no such file or directory"))
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            mset.file_error(str(f), ManifestError(str(f), None, None, f"cannot read: {e}"))
            continue
        texts[str(f)] = text
        mset.update_file(str(f), text)
    return _result(mset, errors)


def parse_documents(text: str, source: str,
                    service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS) -> Manifests:
    """Parse YAML (or JSON) text holding one or more documents; source names it in errors.
    `service_cidrs` as for load_manifests."""
    parse_service_cidrs(tuple(service_cidrs))
    mset = ManifestSet(service_cidrs, text_of={source: text}.get)
    mset.update_file(source, text)
    return _result(mset, [])


def _result(mset: ManifestSet, errors: List[ManifestError]) -> Manifests:
    errors = errors + mset.problems()
    if errors:
        raise ManifestErrors(errors)
    mset.take_changes()
    objects = list(mset.objects())
    return Manifests(tuple(o for _, o in objects if isinstance(o, Service)),
                     tuple(o for _, o in objects if isinstance(o, EndpointSlice)),
                     tuple(mset.ignored()),
                     tuple((kind, key, o) for (kind, key), o in objects
                           if not isinstance(o, (Service, EndpointSlice))))
