"""Per-CPU stats aggregation: the Cython build and its pure-Python twin give the same results as a
plain reference loop, on random data and on values at the edge of uint64 (sums wrap mod 2**64),
over every kind of buffer a map read can hand back, and reject bad input the same way."""
import ctypes
import importlib
import os
import subprocess
import sys
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb import _statsagg_py

pytestmark = pytest.mark.unit

U64_MAX = 2**64 - 1
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cython():
    try:
        return importlib.import_module("ebpflb._statsagg")
    except ImportError:  # pragma: no cover - the set-up builds it; say so loudly if not
        pytest.fail("Cython extension ebpflb._statsagg is not built (run `make setup`)")


IMPLEMENTATIONS = {"cython": _cython, "python": lambda: _statsagg_py}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def agg(request):
    return IMPLEMENTATIONS[request.param]()


def reference_sum(values, n_keys, n_cpus, n_fields):
    return [sum(values[(k * n_cpus + cpu) * n_fields + f] for cpu in range(n_cpus)) % 2**64
            for k in range(n_keys) for f in range(n_fields)]


# Counters as the kernel leaves them: mostly small, some zero, some close enough to 2**64 that
# adding two CPUs wraps.
u64 = st.one_of(st.integers(0, 1000), st.just(0), st.integers(0, U64_MAX),
                st.integers(U64_MAX - 2**16, U64_MAX))


@st.composite
def per_cpu_maps(draw):
    n_keys = draw(st.integers(0, 12))
    n_cpus = draw(st.integers(1, 8))
    n_fields = draw(st.integers(1, 4))
    values = draw(st.lists(u64, min_size=n_keys * n_cpus * n_fields,
                           max_size=n_keys * n_cpus * n_fields))
    return values, n_keys, n_cpus, n_fields


# --- sum_per_cpu ------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(per_cpu_maps())
def test_sum_cython_and_twin_equal_reference(case):
    values, n_keys, n_cpus, n_fields = case
    expected = reference_sum(values, n_keys, n_cpus, n_fields)
    buf = array("Q", values)
    for impl in (_cython(), _statsagg_py):
        out = impl.sum_per_cpu(buf, n_keys, n_cpus, n_fields)
        assert isinstance(out, array) and out.typecode == "Q"
        assert out.tolist() == expected


def test_sum_hand_built(agg):
    # 2 keys x 3 CPUs x (packets, bytes, new connections)
    values = array("Q", [
        1, 100, 1,   2, 200, 0,   3, 300, 1,      # key 0: cpu0, cpu1, cpu2
        0, 0, 0,     10, 1500, 2, 0, 0, 0,        # key 1
    ])
    assert agg.sum_per_cpu(values, 2, 3, 3).tolist() == [6, 600, 2, 10, 1500, 2]


def test_sum_wraps_mod_2_64(agg):
    values = array("Q", [U64_MAX, 7, 2, 1, U64_MAX, U64_MAX])  # 1 key x 3 CPUs x 2 fields
    assert agg.sum_per_cpu(values, 1, 3, 2).tolist() == [(U64_MAX + 2 + U64_MAX) % 2**64,
                                                         (7 + 1 + U64_MAX) % 2**64]


def test_sum_single_cpu_and_single_field(agg):
    values = array("Q", [4, 5, 6])
    assert agg.sum_per_cpu(values, 3, 1, 1).tolist() == [4, 5, 6]
    assert agg.sum_per_cpu(values, 1, 3, 1).tolist() == [15]
    assert agg.sum_per_cpu(values, 1, 1, 3).tolist() == [4, 5, 6]


def test_sum_no_keys_is_empty(agg):
    out = agg.sum_per_cpu(b"", 0, 4, 3)
    assert out.typecode == "Q" and len(out) == 0


VALUES = [1, 2, 3, 4, U64_MAX, 6, 7, 8, 9, 10, 11, 12]  # 2 keys x 2 CPUs x 3 fields
EXPECTED = reference_sum(VALUES, 2, 2, 3)
RAW = array("Q", VALUES).tobytes()

BUFFERS = {
    "array('Q')": lambda: array("Q", VALUES),
    "bytes": lambda: RAW,
    "bytearray": lambda: bytearray(RAW),
    "memoryview of bytes": lambda: memoryview(RAW),
    "memoryview 'Q'": lambda: memoryview(array("Q", VALUES)),
    "read-only memoryview": lambda: memoryview(bytearray(RAW)).toreadonly(),
    "ctypes c_uint64 array": lambda: (ctypes.c_uint64 * len(VALUES))(*VALUES),
    "ctypes c_char buffer": lambda: ctypes.create_string_buffer(RAW, len(RAW)),
    "2-D memoryview": lambda: memoryview(RAW).cast("Q", (2, 6)),
    "array('q') (signed bits)": lambda: array("q", memoryview(RAW).cast("q").tolist()),
    # A slice one byte into a buffer: the uint64 are misaligned in memory.
    "misaligned memoryview": lambda: memoryview(b"\0" + RAW)[1:],
    # Every other uint64 of an interleaved buffer: not contiguous, read in logical order.
    "strided memoryview": lambda: memoryview(array("Q", [x for v in VALUES for x in (v, 99)]))[::2],
}


@pytest.mark.parametrize("make", BUFFERS.values(), ids=list(BUFFERS))
def test_sum_accepts_every_buffer(agg, make):
    assert agg.sum_per_cpu(make(), 2, 2, 3).tolist() == EXPECTED


@pytest.mark.parametrize("n_keys, n_cpus, n_fields", [(3, 2, 3), (1, 2, 3), (2, 3, 3), (2, 2, 2)])
def test_sum_size_mismatch_names_the_sizes(agg, n_keys, n_cpus, n_fields):
    with pytest.raises(ValueError) as err:
        agg.sum_per_cpu(array("Q", VALUES), n_keys, n_cpus, n_fields)
    expected = n_keys * n_cpus * n_fields
    assert f"holds 12 uint64, expected n_keys*n_cpus*n_fields = " \
           f"{n_keys}*{n_cpus}*{n_fields} = {expected}" in str(err.value)


def test_sum_partial_uint64_is_rejected(agg):
    with pytest.raises(ValueError, match="13 bytes, not a whole number of uint64"):
        agg.sum_per_cpu(bytes(13), 1, 1, 1)


@pytest.mark.parametrize("n_keys, n_cpus, n_fields", [(-1, 2, 3), (1, 0, 3), (1, 2, 0)])
def test_sum_bad_dimensions(agg, n_keys, n_cpus, n_fields):
    with pytest.raises(ValueError, match="need n_keys >= 0, n_cpus >= 1, n_fields >= 1"):
        agg.sum_per_cpu(b"", n_keys, n_cpus, n_fields)


@pytest.mark.parametrize("values, match", [
    ([1, 2, 3], "must be a buffer of uint64"),
    ("abc", "must be a buffer of uint64"),
    (array("d", [1.0]), "format 'd'"),
    (array("I", [1, 2]), "format 'I'"),
    ((ctypes.c_uint32 * 2)(), "format '<I'"),
    (memoryview(bytes(8)).cast("Q").cast("B").cast("c"), None),  # 'c' is raw bytes: accepted
])
def test_sum_rejects_non_uint64_buffers(agg, values, match):
    if match is None:
        assert agg.sum_per_cpu(values, 1, 1, 1).tolist() == [0]
        return
    with pytest.raises(TypeError, match=match):
        agg.sum_per_cpu(values, 1, 1, 1)


def test_sum_rejects_non_integer_dimensions(agg):
    with pytest.raises(TypeError):
        agg.sum_per_cpu(bytes(8), 1.0, 1, 1)


def test_sum_does_not_modify_input(agg):
    buf = bytearray(RAW)
    agg.sum_per_cpu(buf, 2, 2, 3)
    assert bytes(buf) == RAW


# --- rates ------------------------------------------------------------------------------------

def test_rates_basic(agg):
    assert agg.rates([0, 10, 100], [50, 10, 400], 10) == [5.0, 0.0, 30.0]


def test_rates_counter_reset_counts_from_zero(agg):
    # The map was recreated between reads: 1000 -> 30 means 30 new since the reset.
    assert agg.rates([1000, 5], [30, 9], 2.0) == [15.0, 2.0]
    assert agg.rates([U64_MAX], [0], 1.0) == [0.0]


def test_rates_accept_buffers_and_sequences(agg):
    prev, cur = array("Q", [1, 2, 3]), array("Q", [2, 4, 9])
    expected = [0.5, 1.0, 3.0]
    for p, c in [(prev, cur), (prev.tolist(), cur.tolist()), (bytes(prev), bytearray(cur)),
                 (memoryview(prev), (ctypes.c_uint64 * 3)(*cur)), (tuple(prev), cur)]:
        assert agg.rates(p, c, 2) == expected
    assert agg.rates([], b"", 1) == []


def test_rates_types(agg):
    out = agg.rates(array("Q", [0]), array("Q", [U64_MAX]), 1)
    assert isinstance(out, list) and type(out[0]) is float
    assert out == [float(U64_MAX)]


@pytest.mark.parametrize("seconds", [0, -1, 0.0, float("nan"), float("inf")])
def test_rates_bad_seconds(agg, seconds):
    with pytest.raises(ValueError, match="seconds must be a finite number > 0"):
        agg.rates([1], [2], seconds)


def test_rates_length_mismatch(agg):
    with pytest.raises(ValueError, match="prev has 2 counters but cur has 3"):
        agg.rates([1, 2], [1, 2, 3], 1)


@pytest.mark.parametrize("bad, error", [([-1], OverflowError), ([2**64], OverflowError),
                                         ([1.5], TypeError)])
def test_rates_out_of_range_counters(agg, bad, error):
    with pytest.raises(error):
        agg.rates(bad, [1], 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(u64, u64), max_size=50),
       st.one_of(st.floats(1e-6, 1e6), st.integers(1, 3600), st.just(0.1)))
def test_rates_cython_and_twin_equal_reference(pairs, seconds):
    prev = [p for p, _ in pairs]
    cur = [c for _, c in pairs]
    expected = [float(c - p if c >= p else c) / float(seconds) for p, c in pairs]
    assert _cython().rates(prev, cur, seconds) == expected
    assert _statsagg_py.rates(prev, cur, seconds) == expected


# --- nonzero_keys -----------------------------------------------------------------------------

def test_nonzero_keys(agg):
    summed = array("Q", [0, 0, 0,  0, 5, 0,  0, 0, 0,  1, 0, 0,  0, 0, U64_MAX])
    assert agg.nonzero_keys(summed, 3) == [1, 3, 4]
    assert agg.nonzero_keys(summed, 1) == [4, 9, 14]
    assert agg.nonzero_keys(array("Q"), 3) == []
    assert agg.nonzero_keys(array("Q", [0] * 6), 2) == []
    assert agg.nonzero_keys([0, 0, 7, 0], 2) == [1]
    assert agg.nonzero_keys(bytes(summed), 5) == [0, 1, 2]
    assert agg.nonzero_keys(bytes(array("Q", [0, 0, 3, 0, 0, 0])), 2) == [1]


def test_nonzero_keys_bad_input(agg):
    with pytest.raises(ValueError, match="summed holds 5 counters, not a multiple of n_fields=3"):
        agg.nonzero_keys([1, 2, 3, 4, 5], 3)
    with pytest.raises(ValueError, match="n_fields must be >= 1"):
        agg.nonzero_keys([1], 0)


@settings(max_examples=300, deadline=None)
@given(per_cpu_maps())
def test_sum_then_nonzero_cython_and_twin_agree(case):
    values, n_keys, n_cpus, n_fields = case
    summed = reference_sum(values, n_keys, n_cpus, n_fields)
    expected = [k for k in range(n_keys) if any(summed[k * n_fields:(k + 1) * n_fields])]
    for impl in (_cython(), _statsagg_py):
        assert impl.nonzero_keys(impl.sum_per_cpu(array("Q", values), n_keys, n_cpus, n_fields),
                                 n_fields) == expected


# --- picking the build ------------------------------------------------------------------------

@pytest.mark.parametrize("env, expected", [("1", "python"), ("", "cython")])
def test_statsagg_picks_build(env, expected):
    code = ("from ebpflb import statsagg as s; "
            "print(s.IMPLEMENTATION, s.sum_per_cpu.__module__)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "EBPFLB_PURE_PYTHON": env},
                         cwd=REPO).stdout.split()
    module = "ebpflb._statsagg_py" if expected == "python" else "ebpflb._statsagg"
    assert out == [expected, module]
