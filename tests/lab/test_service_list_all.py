"""`ebpflb service list --all`: the Services the agent skipped, and why, next to what is
programmed; and a Service whose type changes is unprogrammed and programmed again. (The other
Service semantics are the conformance scenarios: tests/lab/test_conformance.py.)"""
import json

import pytest

from ebpflb.lab import lab as lablib

from .agent_harness import (DEFAULT_ENDPOINTS, ECHO_VIP, WEB_VIP, RunningAgent, ebpflb,
                            force_cleanup, manifest, wait_until)

READY3 = DEFAULT_ENDPOINTS[:3]


@pytest.fixture
def agent(lab, tmp_path):
    running = RunningAgent(lab.name, tmp_path, READY3)
    try:
        yield running
    finally:
        running.stop()
        force_cleanup(lab.name)


def curl(lab_name, url, timeout=3):
    return lablib.run_in_pod(lab_name, "client", ["curl", "-sS", "--max-time", str(timeout), url],
                             timeout=timeout + 10)


OTHERS = """
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: demo}
spec: {type: ExternalName, externalName: example.invalid}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: demo}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: theirs, namespace: demo, labels: {service.kubernetes.io/service-proxy-name: other}}
spec: {clusterIP: 10.96.0.40, ports: [{port: 80}]}
"""


def test_services_that_are_not_ours_are_skipped_and_type_changes_reprogram(lab, agent):
    """ExternalName, headless and another proxy's Services are ignored and listed as skipped;
    a Service switching ClusterIP -> ExternalName -> NodePort is unprogrammed, then programmed."""
    agent.write_manifest(text=manifest(READY3) + OTHERS)
    wait_until(lambda: "demo/theirs" in agent.log(), 10, "the skipped services")
    out = json.loads(ebpflb("service", "list", "--all", "-o", "json", "--pin-dir",
                            agent.pin_dir).stdout)
    reasons = {s["service"]: s["reason"] for s in out["skipped"]}
    assert reasons == {"demo/ext": "type ExternalName", "demo/headless": "headless (clusterIP: None)",
                       "demo/theirs": "label service.kubernetes.io/service-proxy-name=other: "
                                      "served by another proxy"}
    assert {s["frontend"] for s in out["services"]} == {f"{WEB_VIP}:80/TCP", f"{ECHO_VIP}:53/UDP"}

    base = manifest(READY3)
    as_external = base.replace(f"spec:\n  clusterIP: {WEB_VIP}\n",
                               "spec:\n  type: ExternalName\n  externalName: example.invalid\n", 1)
    agent.write_manifest(text=as_external)
    wait_until(lambda: f"{WEB_VIP}:80/TCP" not in {s["frontend"] for s in agent.services()}, 10,
               "web to be unprogrammed")
    assert curl(lab.name, f"http://{WEB_VIP}/", timeout=1).returncode != 0
    as_nodeport = base.replace(f"spec:\n  clusterIP: {WEB_VIP}\n",
                               f"spec:\n  type: NodePort\n  clusterIP: {WEB_VIP}\n", 1)
    agent.write_manifest(text=as_nodeport)
    wait_until(lambda: agent.backends(f"{WEB_VIP}:80/TCP") == ["10.244.0.11", "10.244.0.12",
                                                               "10.244.0.13"], 10, "web again")
    assert curl(lab.name, f"http://{WEB_VIP}/").stdout.strip() in {"web-1", "web-2", "web-3"}
