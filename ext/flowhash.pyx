# cython: language_level=3, boundscheck=False, wraparound=False
"""Cython build of the flow hash (twin: ebpflb/_flowhash_py.py; C: bpf/flow_hash.h).

MurmurHash3 x86_32 over four 32-bit words: saddr, daddr, sport << 16 | dport, proto (host order).
"""
from libc.stdint cimport uint32_t


cdef inline uint32_t _rotl(uint32_t x, int r) nogil:
    return (x << r) | (x >> (32 - r))


cdef inline uint32_t _mix(uint32_t h, uint32_t k) nogil:
    k *= 0xCC9E2D51u
    k = _rotl(k, 15)
    k *= 0x1B873593u
    h ^= k
    h = _rotl(h, 13)
    return h * 5u + 0xE6546B64u


cdef inline uint32_t _fmix(uint32_t h) nogil:
    h ^= h >> 16
    h *= 0x85EBCA6Bu
    h ^= h >> 13
    h *= 0xC2B2AE35u
    h ^= h >> 16
    return h


cdef inline uint32_t c_flow_hash(uint32_t saddr, uint32_t daddr, uint32_t sport, uint32_t dport,
                                 uint32_t proto, uint32_t seed) nogil:
    cdef uint32_t h = seed
    h = _mix(h, saddr)
    h = _mix(h, daddr)
    h = _mix(h, ((sport & 0xFFFFu) << 16) | (dport & 0xFFFFu))
    h = _mix(h, proto & 0xFFu)
    return _fmix(h ^ 16u)


def flow_hash(saddr, daddr, sport, dport, proto, seed):
    """Hash of an IPv4 5-tuple; addresses as host-order integers, ports as integers."""
    return c_flow_hash(<uint32_t>(saddr & 0xFFFFFFFF), <uint32_t>(daddr & 0xFFFFFFFF),
                       <uint32_t>(sport & 0xFFFF), <uint32_t>(dport & 0xFFFF),
                       <uint32_t>(proto & 0xFF), <uint32_t>(seed & 0xFFFFFFFF))
