# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Cython build of the per-CPU stats aggregation (twin: ebpflb/_statsagg_py.py).

Same API and results as the twin; the input checks are the twin's own functions, imported from
it, so both builds accept and reject the same inputs with the same messages. Only the loops live
here, typed over the caller's buffer and run without the GIL.
"""
import operator

from cpython.array cimport array, clone, resize
from libc.stdint cimport int64_t, uint64_t, uintptr_t

from ebpflb._statsagg_py import _check_dims, _check_seconds, _u64_values, _u64_view

cdef array _U64_TEMPLATE = array("Q")
cdef array _F64_TEMPLATE = array("d")
cdef array _I64_TEMPLATE = array("q")


cdef object _aligned(object view):
    """view itself when its data is 8-byte aligned, else an aligned copy (a slice such as
    bytes[1:] is legal input; reading uint64 through a misaligned pointer is not)."""
    cdef const unsigned char[::1] raw = view.cast("B")
    if raw.shape[0] == 0 or (<uintptr_t>&raw[0]) % 8 == 0:
        return view
    cdef array copy = array("Q")
    copy.frombytes(raw)
    return copy


def sum_per_cpu(values, n_keys, n_cpus, n_fields):
    """Per-key totals of a per-CPU map: out[k*n_fields+f] = sum over cpu of
    values[(k*n_cpus+cpu)*n_fields+f], modulo 2**64, as array('Q') of n_keys*n_fields."""
    n_keys, n_cpus, n_fields = _check_dims(n_keys, n_cpus, n_fields)
    view = _u64_view(values, "values")
    expected = n_keys * n_cpus * n_fields
    if len(view) != expected:
        raise ValueError(f"values holds {len(view)} uint64, expected n_keys*n_cpus*n_fields = "
                         f"{n_keys}*{n_cpus}*{n_fields} = {expected}")
    cdef array out = clone(_U64_TEMPLATE, n_keys * n_fields, zero=True)
    if not n_keys:
        return out
    cdef const uint64_t[::1] src = _aligned(view)
    cdef uint64_t[::1] dst = out
    cdef Py_ssize_t nk = n_keys, nc = n_cpus, nf = n_fields
    cdef Py_ssize_t k, cpu, f, row, base
    with nogil:
        if nf == 1:
            for k in range(nk):
                base = k * nc
                for cpu in range(nc):
                    dst[k] += src[base + cpu]
        else:
            # Walk the input in memory order: each CPU's row of fields adds into the key's row.
            for k in range(nk):
                row = k * nf
                base = k * nc * nf
                for cpu in range(nc):
                    for f in range(nf):
                        dst[row + f] += src[base + f]
                    base += nf
    return out


def rates(prev, cur, seconds):
    """Per-element (cur - prev) / seconds; a counter that went backwards (map recreated, id
    reused) is taken to have restarted from 0, so it counts cur / seconds."""
    cdef double secs = _check_seconds(seconds)
    prev_view, cur_view = _u64_values(prev, "prev"), _u64_values(cur, "cur")
    if len(prev_view) != len(cur_view):
        raise ValueError(f"prev has {len(prev_view)} counters but cur has {len(cur_view)}")
    cdef Py_ssize_t n = len(cur_view), i
    if not n:
        return []
    cdef const uint64_t[::1] p = _aligned(prev_view)
    cdef const uint64_t[::1] c = _aligned(cur_view)
    cdef array out = clone(_F64_TEMPLATE, n, zero=False)
    cdef double[::1] r = out
    with nogil:
        for i in range(n):
            # uint64 -> double rounds to nearest, as Python's int / float does; so the twin's
            # results are bit-for-bit the same.
            r[i] = <double>(c[i] - p[i] if c[i] >= p[i] else c[i]) / secs
    return out.tolist()


def nonzero_keys(summed, n_fields):
    """Indices k of the keys whose n_fields counters in summed are not all zero."""
    n_fields = operator.index(n_fields)
    if n_fields < 1:
        raise ValueError(f"n_fields must be >= 1, got {n_fields}")
    view = _u64_values(summed, "summed")
    if len(view) % n_fields:
        raise ValueError(f"summed holds {len(view)} counters, not a multiple of "
                         f"n_fields={n_fields}")
    cdef Py_ssize_t nf = n_fields, nk = len(view) // n_fields
    if not nk:
        return []
    cdef array out = clone(_I64_TEMPLATE, nk, zero=False)
    resize(out, _fill_nonzero(_aligned(view), nk, nf, out))
    return out.tolist()


cdef Py_ssize_t _fill_nonzero(const uint64_t[::1] s, Py_ssize_t nk, Py_ssize_t nf,
                              int64_t[::1] idx):
    """Writes the non-empty key indices to the front of idx and returns how many there are (the
    memoryviews are released on return, so the caller may then shrink idx's array)."""
    cdef Py_ssize_t k, f, count = 0
    with nogil:
        for k in range(nk):
            for f in range(nf):
                if s[k * nf + f]:
                    idx[count] = k
                    count += 1
                    break
    return count
