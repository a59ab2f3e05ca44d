"""The flow hash: the Cython build and its pure-Python twin agree with each other and with an
independent MurmurHash3 implementation (mmh3), and spread curl-like source ports evenly."""
import importlib
import struct

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb import _flowhash_py
from ebpflb.flowhash import FLOW_HASH_SEED

pytestmark = pytest.mark.unit

u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 2**16 - 1)


def _cython():
    try:
        return importlib.import_module("ebpflb._flowhash").flow_hash
    except ImportError:  # pragma: no cover - the set-up builds it; say so loudly if not
        pytest.fail("Cython extension ebpflb._flowhash is not built (run `make setup`)")


IMPLEMENTATIONS = {"cython": _cython, "python": lambda: _flowhash_py.flow_hash}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def flow_hash(request):
    return IMPLEMENTATIONS[request.param]()


@settings(max_examples=500, deadline=None)
@given(saddr=u32, daddr=u32, sport=u16, dport=u16, proto=st.sampled_from([6, 17]), seed=u32)
def test_cython_and_twin_equal_murmur3(saddr, daddr, sport, dport, proto, seed):
    expected = mmh3.hash(struct.pack("<4I", saddr, daddr, (sport << 16) | dport, proto), seed,
                         signed=False)
    assert _cython()(saddr, daddr, sport, dport, proto, seed) == expected
    assert _flowhash_py.flow_hash(saddr, daddr, sport, dport, proto, seed) == expected


def test_known_value(flow_hash):
    # 10.244.0.2:40000 -> 10.96.0.10:80/TCP, pinned so a silent change of algorithm is caught.
    assert flow_hash(0x0AF40002, 0x0A60000A, 40000, 80, 6, FLOW_HASH_SEED) == mmh3.hash(
        struct.pack("<4I", 0x0AF40002, 0x0A60000A, (40000 << 16) | 80, 6), FLOW_HASH_SEED,
        signed=False)


def test_sequential_source_ports_spread(flow_hash):
    """Nearly sequential source ports (curl) spread over 3 backends within 15% of even."""
    counts = [0, 0, 0]
    n = 3000
    for sport in range(40000, 40000 + n):
        counts[flow_hash(0x0AF40002, 0x0A60000A, sport, 80, 6, FLOW_HASH_SEED) % 3] += 1
    assert max(counts) - min(counts) < 0.15 * n / 3, counts
    # and no run of 6 consecutive ports lands on one backend more than a few times
    picks = [flow_hash(0x0AF40002, 0x0A60000A, s, 80, 6, FLOW_HASH_SEED) % 3
             for s in range(40000, 40000 + n)]
    runs = sum(1 for i in range(n - 6) if len(set(picks[i:i + 6])) == 1)
    assert runs < 30, runs


def test_inputs_are_masked(flow_hash):
    assert flow_hash(2**32 + 5, 7, 2**16 + 1, 2, 6, 9) == flow_hash(5, 7, 1, 2, 6, 9)
