"""One owner per data plane, and readiness that tells the truth, with the real agent in a lab:
a second agent on the same pins is refused; `sync`, `cleanup` and `ct flush` refuse to act under
a running agent (and ask before acting at all); a forced cleanup under the agent is noticed,
reported and repaired (pins, filters, socket hooks) with traffic served again, as `ebpflb
status` shows; a node device named exactly that does not exist keeps the agent not ready; more
Services than the maps hold are served as far as they fit, and the agent is not ready meanwhile."""
import json
import os
import re

from ebpflb.dataplane.attach import EGRESS, INGRESS, _our_filters
from ebpflb.lab import lab as lablib
from ebpflb.lab import nsops
from ebpflb.lab.agent_runner import AgentProcess
from ebpflb.lab.topology import host_ifname
from ebpflb.status import read_status

from .agent_harness import (DEFAULT_ENDPOINTS, WEB_VIP, RunningAgent, ebpflb, force_cleanup,
                            manifest, scrape_metrics, wait_until)
from .test_kube_agent import http_get

HEALTH_PORT = 9404


def who(lab_name: str) -> str:
    r = lablib.run_in_pod(lab_name, "client", ["curl", "-sS", "--max-time", "3",
                                               f"http://{WEB_VIP}/"], timeout=10)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def pod_device_filters(lab) -> set:
    """The parents (ingress, egress) with an ebpflb filter on the client pod's node-side veth."""
    with nsops.netns_ipr(lab.node_ns) as ipr:
        ifindex = ipr.link_lookup(ifname=host_ifname("client"))[0]
        return {parent for parent, _ in _our_filters(ipr, ifindex)[0]}


def test_a_second_agent_on_the_same_pins_is_refused(lab, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = RunningAgent(lab.name, tmp_path / "a", DEFAULT_ENDPOINTS)
    second = AgentProcess(lab.name, tmp_path / "b", ["--manifests", str(first.manifest_path)])
    try:
        assert second.proc.wait(timeout=60) == 1, second.log()
        assert (f"is owned by a running ebpflb process (pid {first.proc.pid}: ebpflb agent)"
                in second.log())
        # The first agent and its data plane are untouched.
        assert first.proc.poll() is None
        assert who(lab.name) in {"web-1", "web-2", "web-3"}
        assert os.path.exists(os.path.join(first.pin_dir, "lb4_services"))
    finally:
        second.stop()
        assert first.stop() == 0, first.log()
        force_cleanup(lab.name)


def test_one_shot_writers_refuse_under_a_running_agent(lab, tmp_path):
    agent = RunningAgent(lab.name, tmp_path, DEFAULT_ENDPOINTS)
    pin = ["--pin-dir", agent.pin_dir]
    try:
        owned = f"owned by a running ebpflb process (pid {agent.proc.pid}: ebpflb agent)"
        r = ebpflb("sync", "--manifests", str(agent.manifest_path), *pin, check=False)
        assert r.returncode == 1 and owned in r.stderr and "--force" in r.stderr, r.stderr
        r = ebpflb("ct", "flush", "--yes", *pin, check=False)
        assert r.returncode == 1 and owned in r.stderr, r.stderr
        r = ebpflb("cleanup", "--yes", "--netns", lab.node_ns, *pin, check=False)
        assert r.returncode == 1 and owned in r.stderr, r.stderr
        # Not on a terminal, nothing destructive happens without --yes (owned or not).
        r = ebpflb("cleanup", "--netns", lab.node_ns, *pin, check=False)
        assert r.returncode == 1 and "give --yes" in r.stderr, r.stderr
        # A dry run changes nothing, so it is allowed.
        assert ebpflb("sync", "--dry-run", "--manifests", str(agent.manifest_path), *pin).returncode == 0
        assert os.path.exists(os.path.join(agent.pin_dir, "lb4_services"))
        assert pod_device_filters(lab) == {INGRESS, EGRESS}
        assert who(lab.name) in {"web-1", "web-2", "web-3"}
    finally:
        assert agent.stop() == 0, agent.log()
        force_cleanup(lab.name)


def test_forced_cleanup_under_the_agent_is_noticed_and_repaired(lab, tmp_path):
    agent = RunningAgent(lab.name, tmp_path, DEFAULT_ENDPOINTS,
                         extra_args=["--health-address", f"127.0.0.1:{HEALTH_PORT}",
                                     "--socket-lb", "all"])
    try:
        assert http_get(lab.node_ns, HEALTH_PORT, "/readyz")[0] == 200
        r = ebpflb("cleanup", "--yes", "--force", "--netns", lab.node_ns,
                   "--cgroup", lab.cgroup(0), "--pin-dir", agent.pin_dir)
        assert "socket hooks on cgroup" in r.stdout and "programs on" in r.stdout, r.stdout
        # The directory itself went: the agent must take the lock on the one it makes again.
        assert f"removed {agent.pin_dir}\n" in r.stdout, r.stdout

        def repaired() -> bool:
            status = read_status(agent.pin_dir) or {}
            return status.get("ready") and {"pins", "device", "socket_hooks"} <= set(
                status.get("repairs", {}))

        wait_until(repaired, 15, "the agent to repair its data plane")
        assert os.path.exists(os.path.join(agent.pin_dir, "lb4_services"))
        assert pod_device_filters(lab) == {INGRESS, EGRESS}
        assert http_get(lab.node_ns, HEALTH_PORT, "/readyz")[0] == 200
        # The maps kept their contents: traffic is served as before, and the CLI sees them.
        assert {who(lab.name) for _ in range(20)} <= {"web-1", "web-2", "web-3"}
        views = json.loads(ebpflb("service", "list", "-o", "json", "--pin-dir",
                                  agent.pin_dir).stdout)["services"]
        assert {v["frontend"] for v in views} >= {f"{WEB_VIP}:80/TCP"}
        metrics = scrape_metrics(lab.node_ns)
        for what in ("pins", "device", "socket_hooks"):
            assert metrics[("ebpflb_dataplane_repairs_total", (("what", what),))] >= 1
        log = agent.log()
        assert "repaired: maps re-pinned" in log and "repaired: programs re-attached" in log
        # The agent owns the new pin directory: a writer is refused again.
        r = ebpflb("ct", "flush", "--yes", "--pin-dir", agent.pin_dir, check=False)
        assert r.returncode == 1 and "(pid %d: ebpflb agent)" % agent.proc.pid in r.stderr, r.stderr
        # `ebpflb status` tells the whole story from the kernel and the agent's status file.
        view = json.loads(ebpflb("status", "-o", "json", "--netns", lab.node_ns,
                                 "--pin-dir", agent.pin_dir).stdout)
        assert view["agent"]["pid"] == agent.proc.pid and view["agent"]["ready"] is True
        assert set(view["agent"]["repairs"]) == {"pins", "device", "socket_hooks"}
        assert {d["device"]: d["tc"] for d in view["devices"]}[host_ifname("client")] == [
            "ingress", "egress"]
        assert len(view["socket_hooks"]["hooks"]) == 8  # four per IP family
        fill = {m["map"]: m for m in view["maps"]}
        assert fill["lb4_services"]["entries"] == 2 and fill["lb_stats"]["entries"] is None
        assert view["warnings"] == []
    finally:
        assert agent.stop() == 0, agent.log()
        force_cleanup(lab.name)


def test_a_missing_node_device_keeps_the_agent_not_ready(lab, tmp_path):
    agent = RunningAgent(lab.name, tmp_path, DEFAULT_ENDPOINTS,
                         extra_args=["--health-address", f"127.0.0.1:{HEALTH_PORT}",
                                     "--node-device", "nosuch0", "--device", "lxc*",
                                     "--device", "nomatch*"])
    try:
        code, body = http_get(lab.node_ns, HEALTH_PORT, "/readyz")
        assert code == 503 and "node device nosuch0 not found" in body, (code, body)
        status = read_status(agent.pin_dir)
        assert status["ready"] is False
        assert set(status["unmatched_devices"]) >= {"--node-device nosuch0", "--device nomatch*"}
        assert "--device nomatch* matches no device yet" in agent.log()
        text = ebpflb("status", "--netns", lab.node_ns, "--pin-dir", agent.pin_dir).stdout
        assert f"Agent       pid {agent.proc.pid}" in text and ", not ready" in text, text
        assert "  - the agent is not ready: node device nosuch0 not found" in text, text
        # The device appears: the agent attaches to it and becomes ready.
        nsops.run_cmd(["ip", "-n", lab.node_ns, "link", "add", "nosuch0", "type", "veth",
                       "peer", "name", "nosuch0p"])
        nsops.run_cmd(["ip", "-n", lab.node_ns, "link", "set", "nosuch0", "up"])
        wait_until(lambda: http_get(lab.node_ns, HEALTH_PORT, "/readyz")[0] == 200, 15,
                   "the agent to become ready")
    finally:
        assert agent.stop() == 0, agent.log()
        force_cleanup(lab.name)


def _filler(i: int) -> str:
    """Service demo/zz-<i> (sorting after demo/echo and demo/web) on web-1..web-3."""
    eps = "".join(f"- {{addresses: [\"10.244.0.1{k}\"], conditions: {{ready: true}}}}\n"
                  for k in (1, 2, 3))
    return f"""---
apiVersion: v1
kind: Service
metadata: {{name: zz-{i}, namespace: demo}}
spec: {{clusterIP: 10.96.1.{i + 1}, ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: zz-{i}-a, namespace: demo, labels: {{kubernetes.io/service-name: zz-{i}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{eps}"""


def test_more_services_than_the_maps_hold_are_served_as_far_as_they_fit(lab, tmp_path):
    """The agent starts on 8 Services of 3 backends each and room for 16 backend ids
    (`--max-backends 16`): the first 5 by namespace and name (demo/echo, demo/web, demo/zz-0..2)
    are programmed and served, the other 3 are not, and the agent says so and is not ready.
    Before, the whole first sync was refused and the node served no Service at all. Once room
    is made (Services removed from the manifest), the refused ones go in and the agent is
    ready."""
    base = manifest(DEFAULT_ENDPOINTS)
    agent = RunningAgent(lab.name, tmp_path, DEFAULT_ENDPOINTS, text=base + "".join(
        _filler(i) for i in range(6)), extra_args=["--health-address", f"127.0.0.1:{HEALTH_PORT}",
                                                   "--max-backends", "16"])
    try:
        def programmed():
            out = ebpflb("service", "list", "-o", "json", "--pin-dir", agent.pin_dir).stdout
            # (a removed frontend drains until the conntrack GC has seen it has no flows)
            return sorted({r["service"].split(":")[0] for r in json.loads(out)["services"]
                           if not r.get("draining")})

        wait_until(lambda: http_get(lab.node_ns, HEALTH_PORT, "/readyz")[0] == 503, 15,
                   "the agent to say it is not ready")
        body = http_get(lab.node_ns, HEALTH_PORT, "/readyz")[1]
        assert re.search(r"3 (of 8 )?Services not programmed", body), body
        assert programmed() == ["demo/echo", "demo/web", "demo/zz-0", "demo/zz-1", "demo/zz-2"]
        assert who(lab.name) in {"web-1", "web-2", "web-3"}  # served meanwhile
        assert "demo/zz-3" in agent.log()
        # Room made: zz-0 and zz-1 go (and zz-5), the refused zz-3 and zz-4 go in.
        agent.write_manifest(text=base + "".join(_filler(i) for i in (2, 3, 4)))
        wait_until(lambda: http_get(lab.node_ns, HEALTH_PORT, "/readyz")[0] == 200, 20,
                   "the agent to become ready")
        assert programmed() == ["demo/echo", "demo/web", "demo/zz-2", "demo/zz-3", "demo/zz-4"]
    finally:
        agent.stop()
