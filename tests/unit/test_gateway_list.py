"""`ebpflb gateway list` (ebpflb.cli.gateway_cmd, ebpflb.gateway_view): over manifest files, the
status an agent given them gives Gateway API objects of its class (Services hold their addresses
first), bad input reported and refused alone; from a running agent, its status file's view
(tests/lab/test_gateway.py reads a real agent's)."""
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ebpflb.cli import main
from ebpflb.documents import load_documents

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gateway-tcp.yaml"


def run(*args):
    return CliRunner(mix_stderr=False).invoke(main, ["gateway", "list", *args])


def by_type(conditions):
    return {c["type"]: (c["status"], c["reason"]) for c in conditions}


def test_the_example_canary_shows_its_status_and_its_90_10_weights():
    res = run("--manifests", str(EXAMPLE), "-o", "json")
    assert res.exit_code == 0, res.stderr
    view = json.loads(res.stdout)
    (gw,) = view["gateways"]
    assert gw["gateway"] == "demo/edge" and gw["addresses"] == ["192.168.77.10"]
    assert by_type(gw["conditions"]) == {"Accepted": ("True", "Accepted"),
                                         "Programmed": ("True", "Programmed")}
    (listener,) = gw["listeners"]
    assert listener["attached_routes"] == 1
    assert by_type(listener["conditions"])["Programmed"] == ("True", "Programmed")
    (route,) = view["routes"]
    assert by_type(route["parents"][0]["conditions"]) == {"Accepted": ("True", "Accepted"),
                                                          "ResolvedRefs": ("True", "ResolvedRefs")}
    (fe,) = view["frontends"]
    assert fe["frontend"] == "192.168.77.10:8443/TCP"
    assert [(b["backend"], b["weight"]) for b in fe["backends"]] == [
        ("10.244.0.11:8443", 6), ("10.244.0.12:8443", 6), ("10.244.0.13:8443", 6),
        ("10.244.0.14:8443", 1), ("10.244.0.15:8443", 1)]
    text = run("--manifests", str(EXAMPLE)).stdout
    assert "Programmed=True" in text and "10.244.0.14:8443 x1" in text


def test_a_service_on_the_gateway_address_and_port_wins_it(tmp_path):
    """As in the agent: the Service holds the frontend, the listener is PortUnavailable."""
    shutil.copy(EXAMPLE, tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: squatter, namespace: other}\n"
        "spec: {clusterIP: 10.96.0.99, externalIPs: [192.168.77.10], "
        "ports: [{port: 8443, targetPort: 8443}]}\n")
    view = json.loads(run("--manifests", str(tmp_path), "-o", "json").stdout)
    (listener,) = view["gateways"][0]["listeners"]
    accepted = next(c for c in listener["conditions"] if c["type"] == "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "PortUnavailable")
    assert "Service other/squatter" in accepted["message"]
    assert view["frontends"] == []


def test_without_manifests_it_reads_the_agent_and_says_when_there_is_none():
    res = run("--pin-dir", "/sys/fs/bpf/ebpflb-test-no-agent-here")
    assert res.exit_code == 1 and "no agent status" in res.stderr


def test_a_bad_object_is_refused_alone_and_a_broken_file_named(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text(
        "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: UDPRoute\n"
        "metadata: {name: dns, namespace: demo}\n"
        "spec: {parentRefs: [{name: edge}], rules: [{backendRefs: [{name: x, port: 99999}]}]}\n")
    (tmp_path / "c.yaml").write_text("kind: [unclosed\n")
    res = run("--manifests", str(tmp_path), "-o", "json")
    assert res.exit_code == 0
    assert "UDPRoute demo/dns" in res.stderr and "port" in res.stderr
    assert "c.yaml" in res.stderr and "invalid YAML" in res.stderr
    view = json.loads(res.stdout)
    assert [r["route"] for r in view["routes"]] == ["TCPRoute demo/app"]
    assert len(view["frontends"]) == 1


def test_load_documents_reads_json_yaml_and_lists():
    assert load_documents('{"kind": "List", "items": [{"kind": "A"}, {"kind": "B"}]}') == [
        {"kind": "A"}, {"kind": "B"}]
    assert load_documents("kind: A\n---\nkind: B\n") == [{"kind": "A"}, {"kind": "B"}]
