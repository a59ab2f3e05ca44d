"""The conformance matrix, every other case from the second (tests/lab/conformance_matrix.py):
each case for IPv4 and its IPv6 twin, with the real agent and real traffic."""
import pytest

from .conformance_matrix import CASES, case_id, check

HALF = CASES[1::2]


@pytest.mark.parametrize("scenario,node_mode", HALF, ids=[case_id(c) for c in HALF])
def test_conformance(scenario, node_mode, lab_names):
    check(scenario, node_mode, lab_names)
