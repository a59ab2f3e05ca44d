"""Pure-Python twin of ext/maglev.pyx: Maglev consistent hashing (Eisenbud et al., NSDI 2016).

Sits in the pure core between the model and the plan: for each service the control plane turns its
backends into a selection table of M slots (`maglev_table`), which the plan writes into the data
plane's selection map; the data plane then picks `table[flow_hash % M]`. `ebpflb.maglev` picks the
Cython build when present; this module is the reference and the fallback.

The input checks (`check_inputs`, `validate_m`, `is_prime`) and the seeds live here only: the
Cython build imports them, so both builds reject the same inputs with the same messages. Only the
hash and the table fill, the hot path, exist twice, and the tests hold the two to identical output.
"""
import operator
import struct
from typing import List, Optional, Sequence

DEFAULT_M = 16381
MIN_M = 251
MAX_M = 131071
# Weights are unsigned 32-bit, like every other counter the maps carry; the Cython build keeps
# credits in 64 bits, which this bound keeps from overflowing.
MAX_WEIGHT = 0xFFFFFFFF

# Two fixed seeds give two independent hashes of a backend name: one picks where its permutation
# starts, the other its stride. Fixed so that every agent, on every node, builds the same table.
SEED_OFFSET = 0xA5A5A5A5
SEED_SKIP = 0x5A5A5A5A

_M32 = 0xFFFFFFFF
_C1 = 0xCC9E2D51
_C2 = 0x1B873593
_BLOCKS = struct.Struct("<I")


def murmur3_32(data: bytes, seed: int) -> int:
    """MurmurHash3 x86_32 of `data` (little-endian blocks), as an unsigned 32-bit integer."""
    h = seed & _M32
    n = len(data)
    body = n & ~3
    for (k,) in _BLOCKS.iter_unpack(data[:body]):
        k = (k * _C1) & _M32
        k = ((k << 15) | (k >> 17)) & _M32
        k = (k * _C2) & _M32
        h ^= k
        h = ((h << 13) | (h >> 19)) & _M32
        h = (h * 5 + 0xE6546B64) & _M32
    rest = n & 3
    if rest:
        k = 0
        if rest == 3:
            k ^= data[body + 2] << 16
        if rest >= 2:
            k ^= data[body + 1] << 8
        k ^= data[body]
        k = (k * _C1) & _M32
        k = ((k << 15) | (k >> 17)) & _M32
        k = (k * _C2) & _M32
        h ^= k
    h ^= n & _M32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


def is_prime(n: int) -> bool:
    """Trial division; M is at most MAX_M, so this is a few hundred divisions at worst."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    d = 3
    while d * d <= n:
        if n % d == 0:
            return False
        d += 2
    return True


def validate_m(m: int) -> None:
    """Raise ValueError unless `m` is a prime table size in [MIN_M, MAX_M].

    Prime, because every skip in 1..m-1 is then coprime with m, so each backend's permutation
    visits every slot and the fill always terminates.
    """
    if isinstance(m, bool) or not isinstance(m, int):
        raise TypeError(f"Maglev table size must be an int, got {m!r}")
    if not MIN_M <= m <= MAX_M:
        raise ValueError(f"Maglev table size {m} is out of bounds [{MIN_M}, {MAX_M}]")
    if not is_prime(m):
        raise ValueError(f"Maglev table size {m} is not prime")


def check_inputs(names: Sequence[bytes], m: int,
                 weights: Optional[Sequence[int]] = None) -> List[int]:
    """Validate a table request and return the weights as a list of ints (default all 1)."""
    validate_m(m)
    seen = set()
    for name in names:
        # Exactly bytes: a subclass could hash or compare differently from its byte content.
        if type(name) is not bytes:
            raise TypeError(f"backend name {name!r} is not bytes")
        if name in seen:
            raise ValueError(f"duplicate backend name {name!r}")
        seen.add(name)
    if weights is None:
        return [1] * len(names)
    if len(weights) != len(names):
        raise ValueError(f"{len(weights)} weights given for {len(names)} backends")
    out = []
    for name, weight in zip(names, weights):
        try:
            w = operator.index(weight)
        except TypeError:
            raise TypeError(f"weight {weight!r} of backend {name!r} is not an int") from None
        if w < 0:
            raise ValueError(f"weight {w} of backend {name!r} is negative")
        if w > MAX_WEIGHT:
            raise ValueError(f"weight {w} of backend {name!r} is above {MAX_WEIGHT}")
        out.append(w)
    return out


def maglev_table(names: Sequence[bytes], m: int,
                 weights: Optional[Sequence[int]] = None) -> List[int]:
    """The Maglev selection table: m slots, each the index in `names` of the backend it picks.

    Every slot is -1 when no backend has a weight above 0. Memory is O(N + M): each backend's
    permutation (offset + j * skip) % m is walked on the fly, its position kept per backend.
    """
    w = check_inputs(names, m, weights)
    table = [-1] * m
    active = [i for i, wi in enumerate(w) if wi > 0]
    if not active:
        return table
    max_w = max(w)
    n = len(names)
    pos = [0] * n
    skip = [0] * n
    credit = [0] * n
    for i in active:
        pos[i] = murmur3_32(names[i], SEED_OFFSET) % m
        skip[i] = murmur3_32(names[i], SEED_SKIP) % (m - 1) + 1
    filled = 0
    while True:
        # One round: every active backend earns its weight in credit; each time its credit
        # reaches the largest weight it takes one turn, so turns (and slots) follow the weights,
        # and with equal weights every backend takes a turn every round (plain Maglev).
        for i in active:
            c = credit[i] + w[i]
            if c < max_w:
                credit[i] = c
                continue
            credit[i] = c - max_w
            p = pos[i]
            s = skip[i]
            while table[p] >= 0:
                # p + s < 2m, so one conditional subtraction is the modulo.
                p += s
                if p >= m:
                    p -= m
            table[p] = i
            p += s
            if p >= m:
                p -= m
            pos[i] = p
            filled += 1
            if filled == m:
                return table
