"""The conformance matrix as tests: every scenario of `ebpflb lab conformance` (named after the
Kubernetes e2e network test it mirrors), each in a fresh lab with the real agent and real traffic.
The scenarios live in ebpflb/lab/conformance.py so users can run them on their own kernels."""
import pytest

from ebpflb.lab.conformance import SCENARIOS, run_scenario


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_conformance(scenario, lab_names):
    result = run_scenario(scenario, lab_names.new())
    assert result.outcome == "pass", result.detail
