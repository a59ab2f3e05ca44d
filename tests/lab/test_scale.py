"""10,000 Services in a manifest directory (100 files of 100 Services, 4 endpoints each, every one
pointing at the lab's real pods), served by the real agent; one endpoint of the probed Service is
removed. Once the agent reports the change applied (its status file's applied revision, a time
before which every file written has been read and programmed, passes the write), no new
connection reaches the removed pod: the change was planned for
that one Service, and the maps held it before the agent said so."""
import os
import socket
import time
from pathlib import Path
from typing import List

from ebpflb.lab import nsops
from ebpflb.status import read_status

from .agent_harness import WEB_VIP, wait_until
from ebpflb.lab.agent_runner import AgentProcess, wait_applied

SERVICES = 10000
PER_FILE = 100
WEB = {"web-1": "10.244.0.11", "web-2": "10.244.0.12", "web-3": "10.244.0.13"}


def service(i: int, vip: str, endpoints: List[str]) -> str:
    name = "web" if i == 0 else f"s{i}"
    eps = "".join(f"- addresses: [{a}]\n" for a in endpoints)
    return (f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\n"
            f"spec:\n  clusterIP: {vip}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
            f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            f"metadata: {{name: {name}-x, namespace: demo, labels: {{kubernetes.io/service-name: {name}}}}}\n"
            f"addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{eps}")


def filler_vip(i: int) -> str:
    return f"10.96.{1 + i // 250}.{1 + i % 250}"


def write_file(path: Path, first: int, web_endpoints: List[str]) -> None:
    docs = []
    for i in range(first, first + PER_FILE):
        if i == 0:
            docs.append(service(0, WEB_VIP, web_endpoints))
        else:
            docs.append(service(i, filler_vip(i), list(WEB.values()) + ["10.244.0.14"]))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("---\n".join(docs))
    os.replace(tmp, path)


def who(client_ns: str) -> str:
    """One new connection to the web VIP from the client pod: the pod that answers."""
    with nsops.in_netns(client_ns):
        sock = socket.create_connection((WEB_VIP, 80), timeout=3)
    with sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode().strip()


def test_one_endpoint_removed_among_10000_services(lab, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for f in range(SERVICES // PER_FILE):
        write_file(manifests / f"f{f:03d}.yaml", f * PER_FILE, list(WEB.values()))
    ready = tmp_path / "ready"
    agent = AgentProcess(lab.name, tmp_path, ["--manifests", str(manifests)],
                         extra_args=["--ready-file", str(ready)])
    try:
        wait_until(lambda: ready.exists() or agent.proc.poll() is not None, 120, "the agent to start")
        assert agent.proc.poll() is None, agent.log()
        status = read_status(agent.pin_dir)
        assert status["last_sync"]["counts"]["lb4_services upsert"] == SERVICES, status["last_sync"]
        client = lab.pod_ns("client")
        assert {who(client) for _ in range(40)} == set(WEB)

        write_file(manifests / "f000.yaml", 0, [WEB["web-1"], WEB["web-3"]])
        written = time.monotonic()
        applied_after = wait_applied(agent.pin_dir, manifests / "f000.yaml") - written
        seen = [who(client) for _ in range(60)]
        assert "web-2" not in seen and set(seen) == {"web-1", "web-3"}, seen
        last = read_status(agent.pin_dir)["last_sync"]
        # Planned for the one Service: its backend record, slots and counter (not the cluster).
        assert last["kind"] == "incremental" and last["services"] == 1, last
        assert last["writes"] <= 6, last
        print(f"change applied {applied_after * 1000:.0f} ms after the rename "
              f"(plan + apply {last['ms']} ms)")
    finally:
        assert agent.stop() == 0, agent.log()
