"""The IPv6 twin of every conformance scenario (ebpflb/lab/family.py): the same scenario in a
dual-stack lab, every address it writes given its IPv6 twin and every address it reads mapped
back. As in test_conformance.py, the scenarios about traffic from outside run with the node
devices at XDP and at TC (lb6_node_xdp and lb6_node_in). A file apart from test_conformance.py
so that `make test` runs the two on different workers."""
import pytest

from ebpflb.lab.conformance import SCENARIOS, run_scenario


CASES = [(s, "xdp") for s in SCENARIOS] + [(s, "tc") for s in SCENARIOS
                                           if s.nodes > 1 and s.socket_lb == "off"]


@pytest.mark.parametrize("scenario,node_mode", CASES,
                         ids=[s.name + (f" [{m}]" if s.nodes > 1 else "") + " [ipv6]"
                              for s, m in CASES])
def test_conformance_ipv6(scenario, node_mode, lab_names):
    result = run_scenario(scenario, lab_names.new(), node_mode=node_mode, family="ipv6")
    assert result.outcome == "pass", result.detail
