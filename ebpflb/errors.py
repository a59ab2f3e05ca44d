"""Errors about the input (pure core, shared by every step from sources to model).

A manifest or API object that cannot be programmed is reported with where it came from (file and
line, or the API server), which object, which field and what is wrong. The converter, the
document reader, the sources and the backend rules all raise or collect these, so this module
depends on nothing else in the package.
"""
from __future__ import annotations

import re
from typing import List, Optional, Tuple, Union

FieldPath = Tuple[Union[str, int], ...]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def format_path(path: FieldPath) -> str:
    """("spec", "ports", 0, "port") -> "spec.ports[0].port"; keys that are not identifiers (label
    names with dots or slashes) in brackets."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part}]"
    return out


class ManifestError(ValueError):
    """One problem: where (file, line), which object, which field, what is wrong."""

    def __init__(self, source: str, obj: Optional[str], field: Optional[str], message: str,
                 line: Optional[int] = None) -> None:
        super().__init__(source, obj, field, message, line)
        self.source = source
        self.obj = obj
        self.field = field
        self.message = message
        self.line = line

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return ": ".join(p for p in (where, self.obj, self.field, self.message) if p)


class ManifestErrors(ValueError):
    """Every problem of one load; str() gives one per line."""

    def __init__(self, errors: List[ManifestError]) -> None:
        super().__init__(errors)
        self.errors = list(errors)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)
