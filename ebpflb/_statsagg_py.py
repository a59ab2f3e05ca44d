"""Pure-Python twin of ext/statsagg.pyx: folds per-CPU BPF counter maps into per-key totals.

Sits under `ebpflb.statsagg` (which picks the Cython build when present), between the map reads
of the data plane and what `ebpflb stats` and the Prometheus endpoint show. The kernel hands back
a per-CPU map's values as one flat buffer of native-endian uint64 laid out key-major:
for each key, for each possible CPU, `n_fields` counters.

The input checks (`_check_dims`, `_u64_view`, `_u64_values`, `_check_seconds`) are shared with the
Cython build, which imports them from here, so both accept and reject exactly the same inputs with
the same messages; only the loops differ.
"""
import math
import operator
import sys
from array import array
from itertools import compress
from typing import Any, List, Sequence, Union

_U64_MAX = 2**64 - 1

# Buffer formats read as raw bytes, and 8-byte integer formats read as uint64 (signed ones by
# their two's-complement bits, the same bits the kernel wrote).
_BYTE_CODES = frozenset("Bbc")
_INT64_CODES = frozenset("QqLlNn")
# Byte-order prefixes that mean "native" on this machine: struct's '<'/'>'/'!' are explicit,
# ctypes arrays report '<Q' on little-endian hosts.
_NATIVE_PREFIXES = frozenset(["", "@", "=", "<" if sys.byteorder == "little" else ">"]
                             + ([] if sys.byteorder == "little" else ["!"]))

U64Buffer = Any  # anything exporting the buffer protocol (bytes, bytearray, memoryview, array...)
U64Values = Union[U64Buffer, Sequence[int]]


def _check_dims(n_keys: int, n_cpus: int, n_fields: int) -> "tuple[int, int, int]":
    """The three sizes as ints; n_cpus and n_fields >= 1, n_keys >= 0 (an empty map is fine)."""
    n_keys, n_cpus, n_fields = (operator.index(n) for n in (n_keys, n_cpus, n_fields))
    if n_keys < 0 or n_cpus < 1 or n_fields < 1:
        raise ValueError(f"need n_keys >= 0, n_cpus >= 1, n_fields >= 1; got n_keys={n_keys}, "
                         f"n_cpus={n_cpus}, n_fields={n_fields}")
    return n_keys, n_cpus, n_fields


def _u64_view(obj: U64Buffer, name: str) -> memoryview:
    """A 1-D C-contiguous memoryview of format 'Q' over obj's bytes (copied only if obj is strided).

    Raises TypeError if obj is not a buffer or holds something other than bytes or 8-byte
    integers (floats, structs, 4-byte ints, foreign byte order), ValueError if its byte length is
    not a whole number of uint64.
    """
    try:
        view = memoryview(obj)
    except TypeError:
        raise TypeError(f"{name} must be a buffer of uint64 (bytes, bytearray, memoryview, "
                        f"array('Q'), ctypes c_uint64 array), not {type(obj).__name__}") from None
    fmt = view.format
    prefix, code = fmt[:-1], fmt[-1:]
    readable = prefix in _NATIVE_PREFIXES and (
        code in _BYTE_CODES and view.itemsize == 1 or code in _INT64_CODES and view.itemsize == 8)
    if not readable:
        raise TypeError(f"{name} has buffer format {fmt!r} (itemsize {view.itemsize}); "
                        f"expected native-endian uint64 or raw bytes")
    if view.nbytes % 8:
        raise ValueError(f"{name} holds {view.nbytes} bytes, not a whole number of uint64")
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return view.cast("B").cast("Q")


def _u64_values(obj: U64Values, name: str) -> memoryview:
    """Like _u64_view, but a non-buffer sequence of ints is accepted too (each in [0, 2**64))."""
    try:
        memoryview(obj)
    except TypeError:
        # array() raises TypeError for non-integers and OverflowError for ints out of range.
        return memoryview(array("Q", obj))
    return _u64_view(obj, name)


def _check_seconds(seconds: float) -> float:
    seconds = float(seconds)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"seconds must be a finite number > 0, got {seconds!r}")
    return seconds


def sum_per_cpu(values: U64Buffer, n_keys: int, n_cpus: int, n_fields: int) -> "array[int]":
    """Per-key totals of a per-CPU map: out[k*n_fields+f] = sum over cpu of
    values[(k*n_cpus+cpu)*n_fields+f], modulo 2**64, as array('Q') of n_keys*n_fields."""
    n_keys, n_cpus, n_fields = _check_dims(n_keys, n_cpus, n_fields)
    view = _u64_view(values, "values")
    expected = n_keys * n_cpus * n_fields
    if len(view) != expected:
        raise ValueError(f"values holds {len(view)} uint64, expected n_keys*n_cpus*n_fields = "
                         f"{n_keys}*{n_cpus}*{n_fields} = {expected}")
    out = array("Q", bytes(8 * n_keys * n_fields))
    if not n_keys:
        return out
    flat = view.tolist()
    stride = n_cpus * n_fields
    # Column (cpu, f) is every stride-th value from cpu*n_fields+f; adding the n_cpus columns of
    # field f element-wise gives that field's totals for all keys at once.
    for f in range(n_fields):
        columns = [flat[cpu * n_fields + f::stride] for cpu in range(n_cpus)]
        totals = columns[0] if n_cpus == 1 else list(map(sum, zip(*columns)))
        if max(totals) > _U64_MAX:
            totals = [t & _U64_MAX for t in totals]
        out[f::n_fields] = array("Q", totals)
    return out


def rates(prev: U64Values, cur: U64Values, seconds: float) -> List[float]:
    """Per-element (cur - prev) / seconds; a counter that went backwards (map recreated, id
    reused) is taken to have restarted from 0, so it counts cur / seconds."""
    seconds = _check_seconds(seconds)
    prev_view, cur_view = _u64_values(prev, "prev"), _u64_values(cur, "cur")
    if len(prev_view) != len(cur_view):
        raise ValueError(f"prev has {len(prev_view)} counters but cur has {len(cur_view)}")
    return [(c - p if c >= p else c) / seconds
            for p, c in zip(prev_view.tolist(), cur_view.tolist())]


def nonzero_keys(summed: U64Values, n_fields: int) -> List[int]:
    """Indices k of the keys whose n_fields counters in summed are not all zero."""
    n_fields = operator.index(n_fields)
    if n_fields < 1:
        raise ValueError(f"n_fields must be >= 1, got {n_fields}")
    view = _u64_values(summed, "summed")
    if len(view) % n_fields:
        raise ValueError(f"summed holds {len(view)} counters, not a multiple of "
                         f"n_fields={n_fields}")
    flat = view.tolist()
    n_keys = len(flat) // n_fields
    if n_fields == 1:
        return list(compress(range(n_keys), flat))
    rows = zip(*[flat[f::n_fields] for f in range(n_fields)])
    return list(compress(range(n_keys), map(any, rows)))
