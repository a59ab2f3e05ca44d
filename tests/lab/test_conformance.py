"""The conformance matrix as tests: every scenario of `ebpflb lab conformance` (named after the
Kubernetes e2e network test it mirrors), each in a fresh lab with the real agent and real traffic.
The scenarios live in ebpflb/lab/conformance.py so users can run them on their own kernels."""
import pytest

from ebpflb.lab.conformance import SCENARIOS, run_scenario


# Traffic from outside meets the node devices' programs: those scenarios run at XDP and at TC.
# The socket hooks' scenarios never reach a node device's program: once is enough. The IPv6 twins
# are in test_conformance_ipv6.py (a file of their own: `make test` gives each file to one worker).
CASES = [(s, "xdp") for s in SCENARIOS] + [(s, "tc") for s in SCENARIOS
                                           if s.nodes > 1 and s.socket_lb == "off"]


@pytest.mark.parametrize("scenario,node_mode", CASES,
                         ids=[s.name + (f" [{m}]" if s.nodes > 1 else "") for s, m in CASES])
def test_conformance(scenario, node_mode, lab_names):
    """The two-node scenarios about traffic from outside run with the node devices at XDP and
    at TC."""
    result = run_scenario(scenario, lab_names.new(), node_mode=node_mode)
    assert result.outcome == "pass", result.detail
