"""The conformance matrix as tests (test_conformance.py and test_conformance_other_half.py):
every scenario of `ebpflb lab conformance` (named after the Kubernetes e2e network test it
mirrors) with the real agent and real traffic, for IPv4 and for its IPv6 twin
(ebpflb/lab/family.py), the two one after the other in one dual-stack lab (a scenario that
deletes pods gets a lab per family). Traffic from outside meets the node devices' programs: those
scenarios run at XDP and at TC; the socket hooks' scenarios never reach a node device's program,
so once is enough. The matrix is dealt into two files, every other case each, so that `make
test` (a file per worker) runs the halves side by side."""
from typing import List, Tuple

from ebpflb.lab.conformance import SCENARIOS, Scenario, run_families

CASES: List[Tuple[Scenario, str]] = (
    [(s, "xdp") for s in SCENARIOS]
    + [(s, "tc") for s in SCENARIOS if s.nodes > 1 and s.socket_lb == "off"])


def case_id(case: Tuple[Scenario, str]) -> str:
    scenario, mode = case
    return scenario.name + (f" [{mode}]" if scenario.nodes > 1 else "")


def check(scenario: Scenario, node_mode: str, lab_names) -> None:
    results = run_families(scenario, [lab_names.new(), lab_names.new()], node_mode)
    assert [r.family for r in results] == ["ipv4", "ipv6"]
    failed = [f"{r.family}: {r.detail}" for r in results if r.outcome != "pass"]
    assert not failed, "; ".join(failed)
