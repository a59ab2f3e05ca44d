"""Pure-Python twin of ext/flowhash.pyx: the flow hash the data plane uses to pick a backend.

Sits under `ebpflb.flowhash` (which picks the Cython build when present). The algorithm is
MurmurHash3 x86_32 over four little-endian 32-bit words (saddr, daddr, sport << 16 | dport, proto),
all in host order, so any murmur3 library can check it. bpf/flow_hash.h is the same algorithm in C.
"""

_M32 = 0xFFFFFFFF
_C1 = 0xCC9E2D51
_C2 = 0x1B873593


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def _mix(h: int, k: int) -> int:
    k = (k * _C1) & _M32
    k = _rotl(k, 15)
    k = (k * _C2) & _M32
    h ^= k
    h = _rotl(h, 13)
    return (h * 5 + 0xE6546B64) & _M32


def _fmix(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


def flow_hash(saddr: int, daddr: int, sport: int, dport: int, proto: int, seed: int) -> int:
    """Hash of an IPv4 5-tuple; addresses as host-order integers, ports as integers."""
    h = seed & _M32
    h = _mix(h, saddr & _M32)
    h = _mix(h, daddr & _M32)
    h = _mix(h, ((sport & 0xFFFF) << 16) | (dport & 0xFFFF))
    h = _mix(h, proto & 0xFF)
    return _fmix(h ^ 16)
