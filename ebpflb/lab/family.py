"""The IP family a conformance scenario runs in (ebpflb/lab/conformance.py): the scenarios are
written once, with the lab's IPv4 addresses, and their IPv6 twins run the same code in a
dual-stack lab through this lens, which maps every address the scenario writes (manifests, URLs,
socket addresses) to its IPv6 twin, and every address it reads back (frontends, backends, what a
pod saw) to the IPv4 one the scenario expects. Pure: no kernel, no process.

The twins, as the dual-stack lab numbers them (ebpflb/lab/topology.py):
  10.244.k.h       -> fd00:10:244:k::h   (a pod: topology.pod_ip6)
  10.96.a.b        -> fd00:10:96::ab     (a cluster IP: a and b the two bytes of the last
                                          word, inside topology.SERVICE_CIDR6, a /112)
  192.168.200.x    -> fd00:200::x        (the underlay: nodes, the external client, load balancer
                                          addresses; topology.node_address6)
  169.254.42.1     -> the IPv6 hairpin source (what a pod reaching itself sees)
  0.0.0.0          -> ::
(each number hex in the IPv6 form), and a CIDR of the underlay's /24 keeps its host bits
(192.168.200.8/29 -> fd00:200::8/125).
"""
from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any, Tuple

from ..maps import HAIRPIN_ADDR, HAIRPIN_ADDR6
from . import topology as topo

FAMILIES = ("ipv4", "ipv6")
_V4 = re.compile(r"(?<![\w.:])(\d{1,3}(?:\.\d{1,3}){3})(/\d{1,2})?(?![\w.])")
# An IPv6 address in text: in brackets ([fd00::1]:80) or bare, as the lab's twins spell them.
_V6_BRACKETED = re.compile(r"\[([0-9a-f:]+)\]")
# The lab's own IPv4 addresses: read back in an IPv6 twin's run, they mean IPv4 leaked through.
_LAB_V4 = re.compile(r"(?<![\w.])(?:10\.244|10\.96|192\.168\.200)\.\d{1,3}\.\d{1,3}(?![\w.])")


def ipv6_twin(ip: str) -> str:
    """The IPv6 twin of one of the lab's IPv4 addresses (ValueError for any other)."""
    a, b, c, d = ipaddress.IPv4Address(ip).packed
    if (a, b) == (10, 244):
        return topo.pod_ip6(ip)
    if (a, b) == (10, 96):
        return str(ipaddress.IPv6Address(f"fd00:10:96::{(c << 8) | d:x}"))
    if (a, b, c) == (192, 168, 200):
        return str(ipaddress.IPv6Address(f"fd00:200::{d:x}"))
    if ip == HAIRPIN_ADDR:
        return HAIRPIN_ADDR6
    if ip == "0.0.0.0":
        return "::"
    raise ValueError(f"{ip} has no IPv6 twin in the lab")


def ipv4_twin(ip6: str) -> str:
    """The IPv4 address whose twin `ip6` is (ValueError when it is none's)."""
    addr = ipaddress.IPv6Address(ip6)
    if str(addr) == HAIRPIN_ADDR6:
        return HAIRPIN_ADDR
    if int(addr) == 0:
        return "0.0.0.0"
    w = addr.packed
    last = int.from_bytes(w[14:16], "big")
    if w[:5] == bytes.fromhex("fd00001002") and w[5] == 0x44 and w[8:12] == bytes(4):
        four = f"10.244.{int.from_bytes(w[6:8], 'big')}.{last}"  # fd00:10:244:k::h
    elif w[:6] == bytes.fromhex("fd0000100096") and w[6:14] == bytes(8):
        four = f"10.96.{last >> 8}.{last & 255}"  # fd00:10:96::ab
    elif w[:4] == bytes.fromhex("fd000200") and w[4:14] == bytes(10):
        four = f"192.168.200.{last}"  # fd00:200::x
    else:
        raise ValueError(f"{ip6} is no twin of a lab address")
    if ipv6_twin(four) != str(addr):
        raise ValueError(f"{ip6} is no twin of a lab address")
    return four


def _cidr_twin(ip: str, prefix: int) -> str:
    if ip.startswith("192.168.200.") and prefix >= 24:
        return f"{ipv6_twin(ip)}/{128 - (32 - prefix)}"
    if ip == "10.244.0.0" and prefix == 16:
        return topo.POD_CIDR6
    raise ValueError(f"{ip}/{prefix} has no IPv6 twin in the lab")


class Family:
    """The lens: identity for "ipv4", IPv4 -> IPv6 twins (and back) for "ipv6"."""

    def __init__(self, name: str = "ipv4") -> None:
        if name not in FAMILIES:
            raise ValueError(f"IP family {name!r} is not one of {', '.join(FAMILIES)}")
        self.name = name
        self.ipv6 = name == "ipv6"

    # ---- what the scenario writes
    def ip(self, ip: str) -> str:
        if not self.ipv6:
            return ip
        return ipv6_twin(ip)

    def _sub(self, text: str, bracket: bool, quote: bool) -> str:
        if not self.ipv6:
            return text

        def one(m: "re.Match[str]") -> str:
            ip, prefix = m.group(1), m.group(2)
            if prefix and not bracket:  # a CIDR (in a URL, "/10" is a path)
                out = _cidr_twin(ip, int(prefix[1:]))
            else:
                out = self.ip(ip)
                if bracket:
                    out = f"[{out}]"
                out += prefix or ""
            quoted = m.start() > 0 and text[m.start() - 1] in "\"'"
            return f'"{out}"' if quote and not quoted else out

        return _V4.sub(one, text)

    def manifest(self, text: str) -> str:
        """A manifest with every address its twin (quoted for YAML) and IPv6 EndpointSlices."""
        if not self.ipv6:
            return text
        return self._sub(text, bracket=False, quote=True).replace("addressType: IPv4",
                                                                  "addressType: IPv6")

    def url(self, url: str) -> str:
        return self._sub(url, bracket=True, quote=False)

    def sockaddr(self, addr: Tuple[Any, ...]) -> Tuple[Any, ...]:
        return (self.ip(addr[0]), *addr[1:]) if self.ipv6 else addr

    def socket_family(self) -> int:
        return socket.AF_INET6 if self.ipv6 else socket.AF_INET

    # ---- what the scenario reads back
    def back(self, text: str) -> str:
        """What a scenario reads back, every IPv6 twin in it as its IPv4 address: in brackets
        ([fd00:10:244::2]:41000, as the lab's servers and frontends write HOST:PORT), or the
        whole text one bare address. An IPv4 lab address in it means the twin's traffic was
        IPv4 somewhere: an AssertionError, never a silent pass."""
        if not self.ipv6:
            return text
        leaked = _LAB_V4.search(text)
        if leaked:
            raise AssertionError(f"IPv4 address {leaked.group(0)} in an IPv6 twin's read-back: "
                                 f"{text!r}")
        stripped = text.strip()
        if stripped and ":" in stripped and "[" not in stripped:
            try:
                return text.replace(stripped, ipv4_twin(stripped))
            except ValueError:
                return text

        def one(m: "re.Match[str]") -> str:
            try:
                return ipv4_twin(m.group(1))
            except ValueError:
                return m.group(0)

        return _V6_BRACKETED.sub(one, text)

    def back_addr(self, addr: Tuple[Any, ...]) -> Tuple[Any, ...]:
        """A socket address read back ((host, port, ...)) as the IPv4 (host, port)."""
        if not self.ipv6:
            return addr
        return (ipv4_twin(addr[0]), addr[1])
