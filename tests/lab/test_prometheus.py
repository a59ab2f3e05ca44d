"""A real Prometheus (Debian's `prometheus` package, installed by scripts/setup.sh) scrapes a lab
agent, from the lab node's own namespace over its loopback, and PromQL through Prometheus's HTTP
API returns the agent's `ebpflb_` and kube-proxy's `kubeproxy_` series with the values the
traffic and the changes made. Prometheus runs for the test only, with its data in the test's
temporary directory, and is stopped (then killed) afterwards, whatever happens."""
import json
import shutil
import socket
import subprocess
import time
import urllib.parse

import pytest

from ebpflb.lab import lab as lablib
from ebpflb.lab import nsops

from .agent_harness import DEFAULT_ENDPOINTS, WEB_VIP, RunningAgent, force_cleanup, wait_until

PROMETHEUS_PORT = 9090  # in the lab node's namespace, on its loopback
METRICS_PORT = 9402  # the agent's default --metrics-address, 127.0.0.1


def query(node_ns: str, promql: str) -> list:
    """The result vector of an instant query through Prometheus's HTTP API."""
    with nsops.in_netns(node_ns):
        sock = socket.create_connection(("127.0.0.1", PROMETHEUS_PORT), timeout=5)
    path = "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert body["status"] == "success", body
    return body["data"]["result"]


def value(node_ns: str, promql: str):
    result = query(node_ns, promql)
    return float(result[0]["value"][1]) if result else None


@pytest.fixture
def prometheus(lab, tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run scripts/setup.sh (make test does)")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: ebpflb\n    static_configs: [{{targets: ['127.0.0.1:{METRICS_PORT}']}}]\n")
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{lab.node_ns}", binary, f"--config.file={config}",
         f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_prometheus_scrapes_the_agent(lab, tmp_path, prometheus):
    (tmp_path / "agent").mkdir()
    agent = RunningAgent(lab.name, tmp_path / "agent", DEFAULT_ENDPOINTS)
    node = lab.node_ns
    try:
        def scraped() -> bool:
            try:
                return value(node, 'up{job="ebpflb"}') == 1.0
            except OSError:
                return False  # Prometheus not listening yet

        wait_until(scraped, 30, "Prometheus to scrape the agent", interval=0.5)
        for _ in range(10):
            r = lablib.run_in_pod(lab.name, "client", ["curl", "-sS", "--max-time", "3",
                                                      f"http://{WEB_VIP}/"], timeout=10)
            assert r.returncode == 0, r.stderr
        agent.write_manifest(DEFAULT_ENDPOINTS[:2])  # a change after the start: programmed
        agent.wait_applied()
        connections = 'sum(ebpflb_service_connections_total{namespace="demo",name="web"})'
        wait_until(lambda: value(node, connections) == 10.0, 15, "the 10 connections scraped")
        wait_until(lambda: (value(node, "kubeproxy_network_programming_duration_seconds_count")
                            or 0) >= 1, 15, "the change's programming latency scraped")
        last_sync = value(node, "kubeproxy_sync_proxy_rules_last_timestamp_seconds")
        assert last_sync is not None and abs(last_sync - time.time()) < 120
        assert value(node, 'sum(kubeproxy_sync_partial_proxy_rules_duration_seconds_count)') >= 1
        assert value(node, "kubeproxy_sync_proxy_rules_endpoint_changes_total") >= 1
        assert value(node, 'ebpflb_drops_total{reason="no_backend"}') == 0.0
        build = query(node, "ebpflb_build_info")
        assert build and build[0]["metric"]["version"]
    finally:
        assert agent.stop() == 0, agent.log()
        force_cleanup(lab.name)
