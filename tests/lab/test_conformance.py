"""The conformance matrix as tests: every scenario of `ebpflb lab conformance` (named after the
Kubernetes e2e network test it mirrors), each in a fresh lab with the real agent and real traffic.
The scenarios live in ebpflb/lab/conformance.py so users can run them on their own kernels."""
import pytest

from ebpflb.lab.conformance import SCENARIOS, run_scenario


# Traffic from outside meets the node devices' programs: those scenarios run at XDP and at TC.
# The socket hooks' scenarios never reach a node device's program: once is enough. Every scenario
# has an IPv6 twin (ebpflb/lab/family.py), run once: the XDP program hands IPv6 to TC, so both
# node modes run the same IPv6 path.
CASES = ([(s, "xdp", "ipv4") for s in SCENARIOS]
         + [(s, "tc", "ipv4") for s in SCENARIOS if s.nodes > 1 and s.socket_lb == "off"]
         + [(s, "xdp", "ipv6") for s in SCENARIOS])


@pytest.mark.parametrize("scenario,node_mode,family", CASES,
                         ids=[s.name + (f" [{m}]" if s.nodes > 1 and f == "ipv4" else "")
                              + (" [ipv6]" if f == "ipv6" else "") for s, m, f in CASES])
def test_conformance(scenario, node_mode, family, lab_names):
    """The two-node scenarios about traffic from outside run with the node devices at XDP and
    at TC; every scenario also runs as its IPv6 twin in a dual-stack lab."""
    result = run_scenario(scenario, lab_names.new(), node_mode=node_mode, family=family)
    assert result.outcome == "pass", result.detail
