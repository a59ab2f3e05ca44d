"""Pure-Python twin of ext/flowhash.pyx: the flow hash the data plane uses to pick a backend.

Sits under `ebpflb.flowhash` (which picks the Cython build when present). The algorithm is
MurmurHash3 x86_32 over four little-endian 32-bit words (saddr, daddr, sport << 16 | dport, proto),
all in host order, so any murmur3 library can check it. bpf/flow_hash.h is the same algorithm in C.
"""
import struct

from ._maglev_py import murmur3_32

_WORDS = struct.Struct("<4I")


def flow_hash(saddr: int, daddr: int, sport: int, dport: int, proto: int, seed: int) -> int:
    """Hash of an IPv4 5-tuple; addresses as host-order integers, ports as integers."""
    return murmur3_32(_WORDS.pack(saddr & 0xFFFFFFFF, daddr & 0xFFFFFFFF,
                                  ((sport & 0xFFFF) << 16) | (dport & 0xFFFF), proto & 0xFF),
                      seed & 0xFFFFFFFF)


def sock_hash(cookie: int, daddr: int, dport: int, proto: int, seed: int) -> int:
    """Hash of a socket balanced at connect() time (bpf/flow_hash.h, sock_hash4): its cookie
    stands for the source address and port, which are not chosen yet. Only `ebpflb explain`
    computes it, once per question: no Cython twin."""
    return murmur3_32(_WORDS.pack(cookie & 0xFFFFFFFF, (cookie >> 32) & 0xFFFFFFFF,
                                  daddr & 0xFFFFFFFF, ((dport & 0xFFFF) << 16) | (proto & 0xFF)),
                      seed & 0xFFFFFFFF)
