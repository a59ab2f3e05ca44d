"""The flow hash, as the control plane sees it: the Cython build when it is importable, else the
pure-Python twin. Set EBPFLB_PURE_PYTHON=1 to force the twin (tests run both).

The data plane (bpf/flow_hash.h) computes the same value with FLOW_HASH_SEED, which the loader
passes from here, so the control plane can predict every backend choice.
"""
import ipaddress
import os

from . import _flowhash_py

FLOW_HASH_SEED = 0x5EED1B0B

if os.environ.get("EBPFLB_PURE_PYTHON") == "1":
    flow_hash = _flowhash_py.flow_hash
    IMPLEMENTATION = "python"
else:
    try:
        from ._flowhash import flow_hash  # type: ignore[no-redef]
        IMPLEMENTATION = "cython"
    except ImportError:
        flow_hash = _flowhash_py.flow_hash
        IMPLEMENTATION = "python"

sock_hash = _flowhash_py.sock_hash


def address_word(address: str) -> int:
    """The one 32-bit word the hash takes for an address: an IPv4 address itself, an IPv6 one
    folded (the XOR of its four words, as bpf/flow_hash.h's fh_fold6)."""
    packed = ipaddress.ip_address(address).packed
    if len(packed) == 4:
        return int.from_bytes(packed, "big")
    return (int.from_bytes(packed[0:4], "big") ^ int.from_bytes(packed[4:8], "big")
            ^ int.from_bytes(packed[8:12], "big") ^ int.from_bytes(packed[12:16], "big"))


def packet_hash(saddr: str, sport: int, daddr: str, dport: int, proto: int) -> int:
    """The flow hash of a packet of either family, as the programs compute it."""
    return flow_hash(address_word(saddr), address_word(daddr), sport, dport, proto, FLOW_HASH_SEED)


__all__ = ["flow_hash", "sock_hash", "packet_hash", "address_word", "FLOW_HASH_SEED",
           "IMPLEMENTATION"]
