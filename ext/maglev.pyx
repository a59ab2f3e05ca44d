# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython build of Maglev consistent hashing (twin: ebpflb/_maglev_py.py; C reference for the
benchmark: benchmarks/maglev_ref.c).

Sits in the pure core: the control plane turns a service's backends into an M-slot selection table
that the data plane indexes with the flow hash. Input checks, constants and seeds are imported from
the twin so both builds reject the same inputs with the same words; here only the hot path is
compiled: MurmurHash3 x86_32 of the names, then the fill over C arrays without the GIL.
"""
cimport cython
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF

from ebpflb._maglev_py import (DEFAULT_M, MAX_M, MAX_WEIGHT, MIN_M, SEED_OFFSET, SEED_SKIP,
                               check_inputs, is_prime, validate_m)

__all__ = ["DEFAULT_M", "MIN_M", "MAX_M", "MAX_WEIGHT", "SEED_OFFSET", "SEED_SKIP",
           "murmur3_32", "is_prime", "validate_m", "maglev_table"]

cdef uint32_t _seed_offset = SEED_OFFSET
cdef uint32_t _seed_skip = SEED_SKIP


cdef inline uint32_t _rotl(uint32_t x, int r) noexcept nogil:
    return (x << r) | (x >> (32 - r))


cdef inline uint32_t _scramble(uint32_t k) noexcept nogil:
    k *= 0xCC9E2D51u
    k = _rotl(k, 15)
    return k * 0x1B873593u


cdef uint32_t c_murmur3_32(const unsigned char* data, Py_ssize_t n, uint32_t seed) noexcept nogil:
    cdef uint32_t h = seed
    cdef uint32_t k
    cdef Py_ssize_t i
    cdef Py_ssize_t body = n & ~(<Py_ssize_t>3)
    # Blocks assembled byte by byte: little-endian whatever the host, and no unaligned loads.
    for i in range(0, body, 4):
        k = (<uint32_t>data[i] | (<uint32_t>data[i + 1] << 8) | (<uint32_t>data[i + 2] << 16)
             | (<uint32_t>data[i + 3] << 24))
        h ^= _scramble(k)
        h = _rotl(h, 13)
        h = h * 5u + 0xE6546B64u
    k = 0
    if n & 3 == 3:
        k ^= <uint32_t>data[body + 2] << 16
    if n & 3 >= 2:
        k ^= <uint32_t>data[body + 1] << 8
    if n & 3:
        k ^= <uint32_t>data[body]
        h ^= _scramble(k)
    h ^= <uint32_t>n
    h ^= h >> 16
    h *= 0x85EBCA6Bu
    h ^= h >> 13
    h *= 0xC2B2AE35u
    h ^= h >> 16
    return h


cdef void c_fill(int32_t* table, uint32_t m, Py_ssize_t n_active, const int32_t* idx,
                 uint32_t* pos, const uint32_t* skip, uint64_t* credit, const uint64_t* weight,
                 uint64_t max_w) noexcept nogil:
    """Fill all m slots; arrays are per active backend (weight > 0), in index order."""
    cdef uint32_t k, p, s
    cdef uint32_t filled = 0
    cdef Py_ssize_t a
    cdef uint64_t c
    for k in range(m):
        table[k] = -1
    while True:
        # A round: each backend earns its weight; it takes a turn when its credit reaches the
        # largest weight. Equal weights: everyone takes a turn every round (plain Maglev).
        for a in range(n_active):
            c = credit[a] + weight[a]
            if c < max_w:
                credit[a] = c
                continue
            credit[a] = c - max_w
            p = pos[a]
            s = skip[a]
            while table[p] >= 0:
                # p + s < 2m: a conditional subtraction instead of a division per probe.
                p += s
                if p >= m:
                    p -= m
            table[p] = idx[a]
            p += s
            if p >= m:
                p -= m
            pos[a] = p
            filled += 1
            if filled == m:
                return


def murmur3_32(bytes data not None, seed: int) -> int:
    """MurmurHash3 x86_32 of `data` (little-endian blocks), as an unsigned 32-bit integer."""
    return c_murmur3_32(<const unsigned char*>data, len(data), <uint32_t>(seed & 0xFFFFFFFF))


# Hints document the API only: the twin's check_inputs does the checking, with the twin's words.
@cython.annotation_typing(False)
def maglev_table(names: Sequence[bytes], m: int,
                 weights: Optional[Sequence[int]] = None) -> List[int]:
    """The Maglev selection table: m slots, each the index in `names` of the backend it picks.

    Every slot is -1 when no backend has a weight above 0. Memory is O(N + M).
    """
    cdef list w = check_inputs(names, m, weights)
    cdef uint32_t cm = m
    cdef Py_ssize_t n = len(names)
    cdef Py_ssize_t n_active = 0
    cdef Py_ssize_t i, a
    cdef uint64_t wi
    cdef uint64_t max_w = 0
    cdef bytes name
    for i in range(n):
        wi = w[i]
        if wi > 0:
            n_active += 1
            if wi > max_w:
                max_w = wi
    if n_active == 0:
        return [-1] * cm

    cdef int32_t* table = <int32_t*>malloc(cm * sizeof(int32_t))
    cdef int32_t* idx = <int32_t*>malloc(n_active * sizeof(int32_t))
    cdef uint32_t* pos = <uint32_t*>malloc(n_active * sizeof(uint32_t))
    cdef uint32_t* skip = <uint32_t*>malloc(n_active * sizeof(uint32_t))
    cdef uint64_t* credit = <uint64_t*>malloc(n_active * sizeof(uint64_t))
    cdef uint64_t* weight = <uint64_t*>malloc(n_active * sizeof(uint64_t))
    cdef list out
    cdef list ints
    cdef object o
    try:
        if not (table and idx and pos and skip and credit and weight):
            raise MemoryError(f"Maglev table of {cm} slots for {n_active} backends")
        a = 0
        for i in range(n):
            wi = w[i]
            if wi == 0:
                continue
            name = names[i]
            idx[a] = <int32_t>i
            pos[a] = c_murmur3_32(<const unsigned char*>name, len(name), _seed_offset) % cm
            skip[a] = c_murmur3_32(<const unsigned char*>name, len(name), _seed_skip) % (cm - 1) + 1
            credit[a] = 0
            weight[a] = wi
            a += 1
        with nogil:
            c_fill(table, cm, n_active, idx, pos, skip, credit, weight, max_w)
        # One int object per backend, shared by its slots: no allocation per slot even when
        # indices pass CPython's small-int cache.
        ints = list(range(n))
        out = PyList_New(cm)
        for i in range(cm):
            o = ints[table[i]]
            Py_INCREF(o)  # PyList_SET_ITEM steals a reference
            PyList_SET_ITEM(out, i, o)
        return out
    finally:
        free(table)
        free(idx)
        free(pos)
        free(skip)
        free(credit)
        free(weight)
