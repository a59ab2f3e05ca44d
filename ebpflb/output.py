"""How every command prints what it found (pure, the last step before the terminal): a table
for people (`-o table`, or `-o wide` with every column), or the same data as JSON or YAML for
tools, one shape per command whatever the other options, documented in docs/operations.md.
A watch prints JSON as one timestamped document per line, so a tool can read it as a stream."""
import json
import time
from typing import Any

import yaml

FORMATS = ("table", "wide", "json", "yaml")
STRUCTURED = ("json", "yaml")


def dump(data: Any, fmt: str) -> str:
    """The data as `fmt` (json or yaml)."""
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")
    return json.dumps(data, indent=2)


def watch_line(data: Any, now: float = None) -> str:
    """One document of a watch, on one line, with the time it was read (RFC 3339, UTC)."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    return json.dumps({"time": stamp, "data": data}, separators=(",", ":"))
