"""Field checks for one Kubernetes object (pure core, used by ebpflb.convert).

sources -> **convert** -> model -> plan -> apply. A `FieldChecker` reads one object's fields the
way the API server validates them and records every problem as (field path, message); it knows
nothing of files or lines, so the manifest source and the Kubernetes API source share it and the
manifest reader adds file and line only when it reports a problem.
"""
from __future__ import annotations

import ipaddress
import json
import re
import socket
from typing import Any, Dict, List, Optional, Tuple

from .errors import FieldPath

PROTOCOLS = ("TCP", "UDP", "SCTP")

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# An address and a decimal prefix length: no netmask form, no IPv6 zone, no bare address.
_CIDR = re.compile(r"([0-9A-Fa-f:.]+)/([0-9]{1,3})")


def show(value: Any) -> str:
    """A value as the user wrote it (JSON spelling: true, null, "80"), at most 60 characters.
    Bounded for any value YAML can build: huge, deeply nested or self-referencing."""
    text = _render(value, 64, 0)
    return text if len(text) <= 60 else text[:57] + "..."


def _render(value: Any, budget: int, depth: int) -> str:
    """JSON-like text of value, cut once it exceeds budget characters."""
    if isinstance(value, (bool, type(None), float)):
        return json.dumps(value)
    if isinstance(value, int):
        # str() of an integer past 4300 digits raises; hex has no such limit
        return str(value) if value.bit_length() < 1000 else f"{value:#x}"[:budget] + "..."
    if isinstance(value, str):
        return json.dumps(value[:budget]) + ("..." if len(value) > budget else "")
    if isinstance(value, (list, tuple, dict)):
        if depth >= 8:
            return "..."
        pairs = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        parts: List[str] = []
        used = 0
        for k, v in pairs:
            if used > budget:
                parts.append("...")
                break
            item = _render(v, budget - used, depth + 1)
            if isinstance(value, dict):
                item = f"{json.dumps(key_text(k)[:budget])}: {item}"
            parts.append(item)
            used += len(item) + 2
        ends = "{}" if isinstance(value, dict) else "[]"
        return ends[0] + ", ".join(parts) + ends[1]
    return json.dumps(str(value)[:budget])  # dates, timestamps, bytes, sets


def key_text(key: Any) -> str:
    """A mapping key as a string (what YAML-to-JSON conversion makes of 1, true or null)."""
    if isinstance(key, str):
        return key
    return _render(key, 253, 7) if isinstance(key, (bool, int, float, type(None))) else str(key)[:253]


def a_type(value: Any) -> str:
    """The JSON type of a value with its article, for "must be X, not Y" messages."""
    for t, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                    (list, "a list"), (dict, "a mapping"), (type(None), "null")):
        if isinstance(value, t):
            return name
    return f"a {type(value).__name__}"


def ip_version(value: str) -> Optional[int]:
    """4 or 6 for a valid address (as strict as Go's parser: no leading zeros, no zone), else
    None. inet_pton is the fast path: every endpoint address of every slice comes through here."""
    try:
        socket.inet_pton(socket.AF_INET, value)
        return 4
    except (OSError, ValueError):
        pass
    if ":" not in value or "%" in value:  # no zone: ipaddress takes "fe80::1%eth0"
        return None
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return None
    return 6


def canonical_ip(value: str) -> str:
    """A valid address as the kernel's maps give it back (inet_ntop): an IPv6 address compressed
    and in lower case, so "FD00:0::A" and "fd00::a" are one frontend or backend. IPv4 text is
    already canonical (no leading zeros are accepted)."""
    if ":" not in value:
        return value
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, value))
    except OSError:
        raise ValueError(f"{value!r} is not a valid IPv6 address") from None


def canonical_cidr(cidr: str) -> str:
    """A CIDR with its address as canonical_ip writes it (Python writes an IPv4-mapped network
    one way, the maps give it back another)."""
    addr, _, prefix = cidr.partition("/")
    return f"{canonical_ip(addr)}/{prefix}"


class FieldChecker:
    """The problems of one object, as (path from the object's root, message)."""

    __slots__ = ("label", "problems")

    def __init__(self, label: str) -> None:
        self.label = label
        self.problems: List[Tuple[FieldPath, str]] = []

    @property
    def errors(self) -> int:
        return len(self.problems)

    def error(self, path: FieldPath, message: str) -> None:
        self.problems.append((path, message))

    def mapping(self, value: Any, path: FieldPath, required: bool = False) -> Optional[Dict[str, Any]]:
        if value is None:
            if required:
                self.error(path, "missing")
            return None
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, not {a_type(value)}")
            return None
        return value

    def list(self, value: Any, path: FieldPath) -> List[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(path, f"must be a list, not {a_type(value)}")
            return []
        return value

    def string(self, value: Any, path: FieldPath, default: str = "") -> str:
        if value is None:
            return default
        if not isinstance(value, str):
            self.error(path, f"{show(value)} must be a string, not {a_type(value)}")
            return default
        return value

    def name(self, value: str, path: FieldPath, rule: "re.Pattern[str]", max_len: int, what: str) -> None:
        if len(value) > max_len or not rule.fullmatch(value):
            self.error(path, f"{show(value)} is not a valid {what}")

    def port(self, value: Any, path: FieldPath) -> Optional[int]:
        if value is None:
            self.error(path, "missing")
            return None
        # bool is an int in Python; `port: true` must not become port 1.
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"{show(value)} is not a valid port (an integer 1-65535, not {a_type(value)})")
            return None
        if not 1 <= value <= 65535:
            self.error(path, f"{show(value)} is not a valid port (1-65535)")
            return None
        return value

    def protocol(self, value: Any, path: FieldPath) -> Optional[str]:
        if value is None:
            return "TCP"
        if value not in PROTOCOLS:
            self.error(path, f"{show(value)} is not a valid protocol (TCP, UDP or SCTP)")
            return None
        return value

    def boolean(self, value: Any, path: FieldPath) -> Optional[bool]:
        if value is not None and not isinstance(value, bool):
            self.error(path, f"{show(value)} is not a boolean")
            return None
        return value

    def ip(self, value: Any, path: FieldPath, version: Optional[int] = None) -> Optional[str]:
        if not isinstance(value, str):
            self.error(path, f"{show(value)} is not a valid IP address (not a string)")
            return None
        found = ip_version(value)
        if found is None or (version is not None and found != version):
            what = f"IPv{version} address" if version else "IP address"
            self.error(path, f"{show(value)} is not a valid {what}")
            return None
        if found == 6 and ipaddress.IPv6Address(value).ipv4_mapped is not None:
            # As the API server: an IPv4-mapped address is not an IPv6 one (and the kernel drops
            # IPv6 packets to one).
            self.error(path, f"{show(value)} is an IPv4-mapped IPv6 address: write the IPv4 "
                             "address")
            return None
        return canonical_ip(value) if found == 6 else value

    def cidr(self, value: Any, path: FieldPath) -> Optional[str]:
        """A CIDR as Kubernetes accepts it for loadBalancerSourceRanges (surrounding spaces,
        host bits, IPv4 octets with leading zeros), normalized: "10.0.0.1/8" -> "10.0.0.0/8"."""
        if not isinstance(value, str):
            self.error(path, f"{show(value)} is not a valid CIDR (not a string)")
            return None
        match = _CIDR.fullmatch(value.strip())
        net = None
        if match:
            addr, prefix = match.groups()
            if "." in addr and ":" not in addr:
                # Go's sloppy parser reads "010.1.1.0" as decimal; Python refuses leading zeros.
                addr = ".".join(str(int(octet)) if octet.isdigit() else octet
                                for octet in addr.split("."))
            try:
                net = ipaddress.ip_network(f"{addr}/{int(prefix)}", strict=False)
            except ValueError:
                net = None
        if net is None:
            self.error(path, f"{show(value)} is not a valid CIDR (e.g. 10.240.0.0/24)")
            return None
        return canonical_cidr(str(net))
