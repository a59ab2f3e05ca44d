"""`ebpflb agent --kubernetes` end to end against a FAKE API server (tests/kube/fake_apiserver.py,
real HTTP, list/watch as kube-apiserver speaks it; no real API server runs on this machine): the
real agent in the lab's node namespace reads it through a kubeconfig, programs real maps, and curl
from a pod follows adds, updates and deletes. The fake listens inside the node namespace on
127.0.0.1, so the agent reaches it on its own loopback. Also: 410 Gone relists with no map write
(the agent's ebpflb_map_writes_total does not move), and /healthz and /readyz answer. And the
Gateway API: a Gateway and a TCPRoute from the API are served to a pod, and the agent writes
their status back (Accepted, Programmed, ResolvedRefs, with observedGeneration), and writes it
again when a backendRef stops resolving."""
import json
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ebpflb.lab import lab as lablib
from ebpflb.lab import nsops
from ebpflb.lab.agent_runner import AgentProcess
from ebpflb.status import read_status

from ..kube.fake_apiserver import (FakeApiServer, endpointslice, gateway, gateway_class, node,
                                   service, tcproute)
from .agent_harness import force_cleanup, scrape_metrics, wait_until

VIP = "10.96.0.10"
VIP2 = "10.96.0.11"
METRICS_PORT = 9402
HEALTH_PORT = 9403
KUBE_PROXY_SERIES = {  # kube-proxy's mode-independent series (pkg/proxy/metrics), as scraped
    *(f"kubeproxy_{h}_{suffix}" for h in ("sync_proxy_rules_duration_seconds",
                                          "sync_full_proxy_rules_duration_seconds",
                                          "sync_partial_proxy_rules_duration_seconds",
                                          "network_programming_duration_seconds")
      for suffix in ("bucket", "count", "sum")),
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
    "kubeproxy_sync_proxy_rules_endpoint_changes_total",
    "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
    "kubeproxy_sync_proxy_rules_service_changes_total",
    "kubeproxy_sync_proxy_rules_service_changes_pending",
    "kubeproxy_proxy_healthz_total", "kubeproxy_proxy_livez_total"}
KUBE_PROXY_HEALTH_PORT = 10256  # the agent's default --healthz-bind-address, as kube-proxy's


def http_get(node_ns: str, port: int, path: str):
    with nsops.in_netns(node_ns):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    with sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def map_writes(node_ns: str) -> float:
    _, body = http_get(node_ns, METRICS_PORT, "/metrics")
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == "ebpflb_map_writes_total":
                return s.value
    raise AssertionError("ebpflb_map_writes_total not exported")


class KubeAgent(AgentProcess):
    def __init__(self, lab, workdir, fake: FakeApiServer, extra_args=()):
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(fake.kubeconfig())
        super().__init__(lab.name, workdir, [
            "--kubernetes", "--kubeconfig", str(kubeconfig), "--node-name", "node-1",
            "--metrics-address", f"127.0.0.1:{METRICS_PORT}",
            "--health-address", f"127.0.0.1:{HEALTH_PORT}", *extra_args])

    def backends(self, frontend: str):
        found = super().backends(frontend)
        return sorted(found) if found is not None else None


@pytest.fixture
def fake(lab):
    pytest.importorskip("kubernetes")
    server = FakeApiServer(netns=lab.node_ns, bookmark_interval=0.5).start()
    server.put("services", service("web", VIP, target="http"))
    server.put("endpointslices", endpointslice("web", ["10.244.0.11", "10.244.0.12"]))
    server.put("nodes", node("node-1", "192.168.200.1"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def kube_agent(lab, fake, tmp_path):
    running = KubeAgent(lab, tmp_path, fake)
    try:
        yield running
    finally:
        code = running.stop()
        force_cleanup(lab.name)
        assert code == 0, f"agent exited {code}:\n{running.log()}"


def who(lab_name, url=f"http://{VIP}/"):
    r = lablib.run_in_pod(lab_name, "client", ["curl", "-sS", "--max-time", "3", url], timeout=10)
    assert r.returncode == 0, f"curl {url} failed: {r.stderr}"
    return r.stdout.strip()


def ready(lab, agent):
    def check():
        assert agent.proc.poll() is None, agent.log()
        try:
            return http_get(lab.node_ns, HEALTH_PORT, "/readyz")[0] == 200
        except OSError:
            return False
    wait_until(check, 60, "the agent to become ready")


def test_api_changes_reach_the_data_plane_and_traffic_follows(lab, fake, kube_agent):
    ready(lab, kube_agent)
    assert http_get(lab.node_ns, HEALTH_PORT, "/healthz") == (200, "ok\n")
    assert {who(lab.name) for _ in range(30)} == {"web-1", "web-2"}

    # Update: endpoints change.
    fake.put("endpointslices", endpointslice("web", ["10.244.0.13", "10.244.0.14"]))
    wait_until(lambda: kube_agent.backends(f"{VIP}:80/TCP") == ["10.244.0.13", "10.244.0.14"],
               10, "the new endpoints")
    assert {who(lab.name) for _ in range(30)} == {"web-3", "web-4"}

    # Zone hints follow this node's Node: ignored while it has no zone label, applied once it
    # gets one (the agent watches its own Node only).
    hinted = endpointslice("web", ["10.244.0.13", "10.244.0.14"])
    for endpoint, zone in zip(hinted["endpoints"], ("zone-a", "zone-b")):
        endpoint.update(zone=zone, hints={"forZones": [{"name": zone}]})
    fake.put("endpointslices", hinted)
    revision = fake.rv
    wait_until(lambda: ((read_status(kube_agent.pin_dir) or {}).get("applied_revision") or {})
               .get("EndpointSlice", 0) >= revision, 10, "the hinted slice handled")
    assert kube_agent.backends(f"{VIP}:80/TCP") == ["10.244.0.13", "10.244.0.14"]  # no zone yet
    labelled = node("node-1", "192.168.200.1")
    labelled["metadata"]["labels"]["topology.kubernetes.io/zone"] = "zone-a"
    fake.put("nodes", labelled)
    wait_until(lambda: kube_agent.backends(f"{VIP}:80/TCP") == ["10.244.0.13"], 10,
               "the zone's endpoint only")
    assert fake.selectors["nodes"] == "metadata.name=node-1"
    assert {who(lab.name) for _ in range(10)} == {"web-3"}

    # kube-proxy's health server on :10256: healthy, then 503 on /healthz (not /livez) once the
    # cluster autoscaler taints the node for deletion, as load balancers expect.
    code, text = http_get(lab.node_ns, KUBE_PROXY_HEALTH_PORT, "/healthz")
    assert code == 200 and json.loads(text)["nodeEligible"] is True
    labelled["spec"]["taints"] = [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]
    fake.put("nodes", labelled)
    wait_until(lambda: http_get(lab.node_ns, KUBE_PROXY_HEALTH_PORT, "/healthz")[0] == 503, 10,
               "/healthz 503 on a node being deleted")
    code, text = http_get(lab.node_ns, KUBE_PROXY_HEALTH_PORT, "/healthz")
    assert json.loads(text)["nodeEligible"] is False
    assert http_get(lab.node_ns, KUBE_PROXY_HEALTH_PORT, "/livez")[0] == 200
    series = scrape_metrics(lab.node_ns, METRICS_PORT)
    assert series[("kubeproxy_proxy_healthz_total", (("code", "503"),))] >= 1
    assert series[("kubeproxy_proxy_livez_total", (("code", "200"),))] >= 1
    # Every series kube-proxy exports whatever its mode, with kube-proxy's names, fed by what
    # happened above (two slice changes after the start, the first one moving backends).
    names = {name for name, _ in series}
    assert KUBE_PROXY_SERIES <= names, KUBE_PROXY_SERIES - names
    family = (("ip_family", "IPv4"),)
    assert series[("kubeproxy_sync_proxy_rules_duration_seconds_count", family)] >= 3
    assert series[("kubeproxy_sync_full_proxy_rules_duration_seconds_count", family)] >= 1
    assert series[("kubeproxy_sync_partial_proxy_rules_duration_seconds_count", family)] >= 2
    assert series[("kubeproxy_network_programming_duration_seconds_count", family)] >= 1
    assert series[("kubeproxy_sync_proxy_rules_endpoint_changes_total", ())] >= 2
    assert series[("kubeproxy_sync_proxy_rules_endpoint_changes_pending", ())] == 0
    assert abs(series[("kubeproxy_sync_proxy_rules_last_timestamp_seconds", ())] - time.time()) < 60
    assert not [n for n in names if n.endswith("_created")]
    (build,) = [labels for name, labels in series if name == "ebpflb_build_info"]
    assert dict(build)["version"] and dict(build)["kernel"]

    # Add: a second Service with its slice.
    fake.put("services", service("web2", VIP2, target=8080))
    fake.put("endpointslices", endpointslice("web2", ["10.244.0.11"]))
    wait_until(lambda: kube_agent.backends(f"{VIP2}:80/TCP") == ["10.244.0.11"], 10, "web2")
    assert who(lab.name, f"http://{VIP2}/") == "web-1"

    # Delete: the first Service goes; its VIP stops answering.
    fake.delete("services", "default", "web")
    wait_until(lambda: kube_agent.backends(f"{VIP}:80/TCP") is None, 10, "web removed")
    r = lablib.run_in_pod(lab.name, "client", ["curl", "-sS", "--max-time", "1",
                                               f"http://{VIP}/"], timeout=10)
    assert r.returncode != 0
    assert who(lab.name, f"http://{VIP2}/") == "web-1"


def test_410_relists_without_map_writes_and_a_dropped_watch_resumes(lab, fake, kube_agent):
    ready(lab, kube_agent)
    writes = map_writes(lab.node_ns)
    lists = fake.counts["list endpointslices"]

    fake.drop_watches()  # resume without relist
    fake.put("endpointslices", endpointslice("web", ["10.244.0.13"]))
    wait_until(lambda: kube_agent.backends(f"{VIP}:80/TCP") == ["10.244.0.13"], 10, "web-3")
    assert fake.counts["list endpointslices"] == lists
    assert who(lab.name) == "web-3"

    writes = map_writes(lab.node_ns)
    fake.go_away()  # gone long enough for its history to be compacted: 410 on return
    fake.put("nodes", node("node-2", "192.168.200.2"))
    fake.compact()
    fake.come_back()
    wait_until(lambda: fake.counts["list endpointslices"] > lists
               and fake.counts["list services"] > 1, 15, "the relists after 410")
    time.sleep(1.0)  # several agent poll intervals after the relists
    assert map_writes(lab.node_ns) == writes, "an unchanged relist wrote to the maps"
    assert "410" in kube_agent.log()
    assert who(lab.name) == "web-3"


GATEWAY_IP = "192.0.2.10"


def conditions(obj) -> dict:
    """An object's status conditions (or a route parent entry's own) by type."""
    found = obj["conditions"] if "conditions" in obj else (obj.get("status") or {}).get(
        "conditions", [])
    return {c["type"]: (c["status"], c["reason"]) for c in found}


def test_gateway_objects_are_served_and_their_status_written_back(lab, fake, tmp_path):
    fake.install_crds()
    fake.put("gatewayclasses", gateway_class())
    fake.put("gateways", gateway(addresses=(GATEWAY_IP,)))
    fake.put("tcproutes", tcproute())
    agent = KubeAgent(lab, tmp_path, fake, ["--external-ip-allow", f"{GATEWAY_IP}/32"])
    try:
        ready(lab, agent)

        def gateway_programmed() -> bool:
            return conditions(fake.get("gateways", "default", "gw")).get("Programmed") == (
                "True", "Programmed")

        wait_until(gateway_programmed, 20, "the Gateway's status written: Programmed")
        gw = fake.get("gateways", "default", "gw")
        assert gw["status"]["addresses"] == [{"type": "IPAddress", "value": GATEWAY_IP}]
        assert all(c["observedGeneration"] == gw["metadata"].get("generation", 0)
                   for c in gw["status"]["conditions"]), gw["status"]
        (parent,) = fake.get("tcproutes", "default", "r")["status"]["parents"]
        assert parent["controllerName"] == "ebpflb.io/gateway-controller"
        assert conditions(parent) == {"Accepted": ("True", "Accepted"),
                                      "ResolvedRefs": ("True", "ResolvedRefs")}
        assert conditions(fake.get("gatewayclasses", "", "ebpflb"))["Accepted"][0] == "True"
        assert {who(lab.name, f"http://{GATEWAY_IP}:9000/") for _ in range(20)} == {"web-1", "web-2"}

        fake.put("tcproutes", tcproute(backends=(("gone", 80),)))

        def not_found() -> bool:
            st = fake.get("tcproutes", "default", "r").get("status") or {}
            return any(conditions(p).get("ResolvedRefs") == ("False", "BackendNotFound")
                       for p in st.get("parents", []))

        wait_until(not_found, 20, "the route's ResolvedRefs False (BackendNotFound) written")
        r = lablib.run_in_pod(lab.name, "client", ["curl", "-sS", "--max-time", "2",
                                                   f"http://{GATEWAY_IP}:9000/"], timeout=10)
        assert r.returncode == 7, r  # refused (a RST): the whole share is the reject share
    finally:
        code = agent.stop()
        force_cleanup(lab.name)
        assert code == 0, f"agent exited {code}:\n{agent.log()}"
