"""Maglev tables: the Cython build and its pure-Python twin agree with each other and with a literal
transcription of the paper's pseudo-code over mmh3; slots are balanced, weights honoured, removals
barely disturb the other backends, and bad input is refused with the bad value named."""
import importlib
import random
from collections import Counter
from types import ModuleType
from typing import List, Optional, Sequence

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb import _maglev_py
from ebpflb import maglev as maglev_api

pytestmark = pytest.mark.unit

PRIMES = [251, 257, 509, 1021, 2039, 4093, 16381]
BIG_M = 65537


def _cython() -> ModuleType:
    try:
        return importlib.import_module("ebpflb._maglev")
    except ImportError:  # pragma: no cover - the set-up builds it; say so loudly if not
        pytest.fail("Cython extension ebpflb._maglev is not built (run `make setup`)")


IMPLEMENTATIONS = {"cython": _cython, "python": lambda: _maglev_py}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def impl(request) -> ModuleType:
    return IMPLEMENTATIONS[request.param]()


def pod_names(n: int, port: int = 8080) -> List[bytes]:
    """Backend names as the control plane passes them: pod IP and port."""
    return [f"10.244.{i // 250}.{i % 250 + 1}:{port}".encode() for i in range(n)]


def reference_table(names: Sequence[bytes], m: int,
                    weights: Optional[Sequence[int]] = None) -> List[int]:
    """The paper's Populate(), written plainly and hashed with mmh3: an independent oracle."""
    w = [1] * len(names) if weights is None else list(weights)
    entry = [-1] * m
    if not any(w):
        return entry
    offset = [mmh3.hash(n, _maglev_py.SEED_OFFSET, signed=False) % m for n in names]
    skip = [mmh3.hash(n, _maglev_py.SEED_SKIP, signed=False) % (m - 1) + 1 for n in names]
    nxt = [0] * len(names)
    credit = [0] * len(names)
    top = max(w)
    filled = 0
    while True:
        for i in range(len(names)):
            if w[i] == 0:
                continue
            credit[i] += w[i]
            if credit[i] < top:
                continue
            credit[i] -= top
            c = (offset[i] + nxt[i] * skip[i]) % m
            while entry[c] >= 0:
                nxt[i] += 1
                c = (offset[i] + nxt[i] * skip[i]) % m
            entry[c] = i
            nxt[i] += 1
            filled += 1
            if filled == m:
                return entry


def moved_share(before: List[int], after: List[int], removed: int) -> float:
    """Share of the slots the other backends owned before that changed owner after `removed`
    left (indices above it shift down by one in `after`)."""
    others = moved = 0
    for b, a in zip(before, after):
        if b == removed:
            continue
        others += 1
        if (a if a < removed else a + 1) != b:
            moved += 1
    return moved / others


@st.composite
def table_inputs(draw):
    names = draw(st.lists(st.binary(max_size=24), unique=True, max_size=40))
    m = draw(st.sampled_from(PRIMES))
    weights = draw(st.one_of(st.none(), st.lists(st.integers(0, 20), min_size=len(names),
                                                 max_size=len(names))))
    return names, m, weights


# --- parity -------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(table_inputs())
def test_cython_twin_and_reference_build_identical_tables(args):
    names, m, weights = args
    expected = reference_table(names, m, weights)
    assert _cython().maglev_table(names, m, weights) == expected
    assert _maglev_py.maglev_table(names, m, weights) == expected


@pytest.mark.parametrize("n, m, weighted", [(1000, 16381, False), (300, BIG_M, True)])
def test_cython_and_twin_identical_on_large_inputs(n, m, weighted):
    rng = random.Random(n)
    names = pod_names(n)
    weights = [rng.randrange(0, 50) for _ in names] if weighted else None
    assert _cython().maglev_table(names, m, weights) == _maglev_py.maglev_table(names, m, weights)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64), seed=st.integers(0, 2**32 - 1))
def test_murmur3_32_equals_mmh3(data, seed):
    expected = mmh3.hash(data, seed, signed=False)
    assert _cython().murmur3_32(data, seed) == expected
    assert _maglev_py.murmur3_32(data, seed) == expected


def test_murmur3_32_every_tail_length_with_the_table_seeds(impl):
    for data in (b"", b"1", b"10", b"10.", b"10.2", b"10.244.0.11:8080", b"\xff" * 7):
        for seed in (_maglev_py.SEED_OFFSET, _maglev_py.SEED_SKIP):
            assert impl.murmur3_32(data, seed) == mmh3.hash(data, seed, signed=False)


def test_api_module_picks_cython_unless_forced(monkeypatch):
    try:
        monkeypatch.delenv("EBPFLB_PURE_PYTHON", raising=False)
        default = importlib.reload(maglev_api)
        assert default.IMPLEMENTATION == "cython"
        assert default.maglev_table is _cython().maglev_table
        monkeypatch.setenv("EBPFLB_PURE_PYTHON", "1")
        forced = importlib.reload(maglev_api)
        assert forced.IMPLEMENTATION == "python"
        assert forced.maglev_table is _maglev_py.maglev_table
    finally:
        monkeypatch.undo()  # the environment first, so the reload leaves the module as it was
        importlib.reload(maglev_api)


# --- balance, disruption, weights ---------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 10, 100, 1000])
def test_equal_weights_balance_within_one_slot(impl, n):
    counts = Counter(impl.maglev_table(pod_names(n), BIG_M))
    assert sorted(counts) == list(range(n))
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_equal_explicit_weights_are_plain_maglev(impl):
    names = pod_names(37)
    assert impl.maglev_table(names, 4093, [7] * 37) == impl.maglev_table(names, 4093)


@pytest.mark.parametrize("n", [10, 100, 500])
def test_removing_one_backend_moves_at_most_one_percent_of_the_others(impl, n):
    names = pod_names(n)
    assert BIG_M >= 100 * n
    before = impl.maglev_table(names, BIG_M)
    rng = random.Random(n)
    for removed in sorted({0, n // 2, n - 1, *rng.sample(range(n), 3)}):
        after = impl.maglev_table(names[:removed] + names[removed + 1:], BIG_M)
        share = moved_share(before, after, removed)
        assert share <= 0.01, (removed, share)


@pytest.mark.parametrize("m", [251, 16381, BIG_M])
@pytest.mark.parametrize("weights", [(1, 2, 3, 4), (0, 5), (5, 0, 5), (1, 100), (3, 1, 0, 2, 9)])
def test_weights_honoured_within_one_percent(impl, weights, m):
    table = impl.maglev_table(pod_names(len(weights)), m, list(weights))
    counts = Counter(table)
    assert -1 not in counts
    for i, w in enumerate(weights):
        assert abs(counts.get(i, 0) - m * w / sum(weights)) <= 0.01 * m, (i, counts)
        if w == 0:
            assert i not in counts


def test_all_zero_weights_and_no_backends_give_all_minus_one(impl):
    assert impl.maglev_table(pod_names(3), 251, [0, 0, 0]) == [-1] * 251
    assert impl.maglev_table([], 251) == [-1] * 251
    assert impl.maglev_table([], 251, []) == [-1] * 251


def test_single_backend_owns_every_slot(impl):
    assert impl.maglev_table([b"10.244.0.11:8080"], 509) == [0] * 509


def test_table_depends_only_on_names_m_weights(impl):
    names = pod_names(20)
    first = impl.maglev_table(names, 1021, [2] * 20)
    impl.maglev_table(pod_names(50), 4093)  # no state may carry over from another call
    assert impl.maglev_table(tuple(names), 1021, tuple([2] * 20)) == first


# --- validation ---------------------------------------------------------------------------------

def test_is_prime_matches_a_sieve(impl):
    limit = 3000
    sieve = [True] * limit
    sieve[0] = sieve[1] = False
    for p in range(2, limit):
        if sieve[p]:
            for q in range(p * p, limit, p):
                sieve[q] = False
    assert [n for n in range(limit) if impl.is_prime(n)] == [n for n in range(limit) if sieve[n]]
    assert impl.is_prime(impl.DEFAULT_M) and impl.is_prime(impl.MIN_M) and impl.is_prime(impl.MAX_M)


@pytest.mark.parametrize("m, words", [(65536, "65536 is not prime"), (16383, "16383 is not prime"),
                                      (241, "241 is out of bounds"),
                                      (131101, "131101 is out of bounds"),
                                      (0, "0 is out of bounds")])
def test_bad_table_size_is_named(impl, m, words):
    with pytest.raises(ValueError, match=words):
        impl.validate_m(m)
    with pytest.raises(ValueError, match=words):
        impl.maglev_table([b"a"], m)


def test_non_int_table_size_is_refused(impl):
    for m in (65537.0, "65537", True):
        with pytest.raises(TypeError, match="must be an int"):
            impl.maglev_table([b"a"], m)


def test_good_table_sizes_pass(impl):
    for m in (impl.MIN_M, impl.DEFAULT_M, BIG_M, impl.MAX_M):
        impl.validate_m(m)


def test_duplicate_name_is_named(impl):
    with pytest.raises(ValueError, match=r"duplicate backend name b'10.244.0.2:8080'"):
        impl.maglev_table([b"10.244.0.1:8080", b"10.244.0.2:8080", b"10.244.0.2:8080"], 251)


def test_negative_weight_is_named(impl):
    with pytest.raises(ValueError, match=r"weight -3 of backend b'b' is negative"):
        impl.maglev_table([b"a", b"b"], 251, [1, -3])


def test_weight_above_u32_is_named(impl):
    with pytest.raises(ValueError, match=str(2**32)):
        impl.maglev_table([b"a"], 251, [2**32])


def test_weight_count_must_match(impl):
    with pytest.raises(ValueError, match="2 weights given for 3 backends"):
        impl.maglev_table([b"a", b"b", b"c"], 251, [1, 1])


def test_non_bytes_name_and_weight_are_named(impl):
    with pytest.raises(TypeError, match="'10.244.0.1:8080' is not bytes"):
        impl.maglev_table(["10.244.0.1:8080"], 251)
    with pytest.raises(TypeError, match=r"weight 1.5 of backend b'a' is not an int"):
        impl.maglev_table([b"a"], 251, [1.5])
