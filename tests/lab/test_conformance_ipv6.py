"""The IPv6 twin of every conformance scenario (ebpflb/lab/family.py): the same scenario in a
dual-stack lab, every address it writes given its IPv6 twin and every address it reads mapped
back. Run once, with the node devices at XDP: the XDP program hands IPv6 to TC, so both node
modes run the same IPv6 path. A file apart from test_conformance.py so that `make test` runs the
two on different workers."""
import pytest

from ebpflb.lab.conformance import SCENARIOS, run_scenario


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name + " [ipv6]" for s in SCENARIOS])
def test_conformance_ipv6(scenario, lab_names):
    result = run_scenario(scenario, lab_names.new(), node_mode="xdp", family="ipv6")
    assert result.outcome == "pass", result.detail
