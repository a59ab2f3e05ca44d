"""Running the real agent against a lab (used by `ebpflb lab conformance` and the lab tests):
`ebpflb agent` as a subprocess in the lab's node namespace, a manifest file the caller rewrites,
and `ebpflb service list` to see what the maps hold. Stopping it (always, in a finally) removes
its programs and pins."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from ebpflb.dataplane.cleanup import remove_pins
from ebpflb.dataplane.config import DataplaneConfig, lab_pin_dir, lab_pin_dirs
from ebpflb.lab.lab import get_lab
from ebpflb.lab.topology import node_netns
from ebpflb.status import read_status

WEB_VIP = "10.96.0.10"
ECHO_VIP = "10.96.0.20"
# Their twins in an IPv6-only lab (inside topology.SERVICE_CIDR6).
WEB_VIP6 = "fd00:10:96::10"
ECHO_VIP6 = "fd00:10:96::20"

Endpoint = Tuple[str, str, bool]  # pod name, IP, ready


def manifest(endpoints: Sequence[Endpoint], annotations: str = "{}", ip_family: str = "ipv4") -> str:
    """Service demo/web (80/TCP -> named port http = 8080) and demo/echo (53/UDP -> 9053), with the
    given endpoints in one EndpointSlice each; `annotations` (a YAML flow mapping) on demo/web.
    `ip_family` "ipv6": single-stack IPv6 Services (WEB_VIP6, ECHO_VIP6) and IPv6 slices, for an
    IPv6-only lab, whose endpoints are then IPv6 addresses."""
    if ip_family not in ("ipv4", "ipv6"):
        raise ValueError(f"manifest: invalid ip_family {ip_family!r}: use ipv4 or ipv6")
    six = ip_family == "ipv6"
    web_vip, echo_vip = (WEB_VIP6, ECHO_VIP6) if six else (WEB_VIP, ECHO_VIP)
    # YAML reads an unquoted IPv6 address fine, but a quoted one cannot turn into anything else.
    quote = (lambda ip: f'"{ip}"') if six else (lambda ip: ip)
    families = "\n  ipFamilies: [IPv6]" if six else ""
    address_type = "IPv6" if six else "IPv4"
    eps = "\n" + "".join(
        f"- addresses: [{quote(ip)}]\n  conditions: {{ready: {str(ready).lower()}}}\n"
        f"  targetRef: {{kind: Pod, name: {pod}, namespace: demo}}\n"
        for pod, ip, ready in endpoints) if endpoints else " []\n"
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo, annotations: {annotations}}}
spec:
  clusterIP: {quote(web_vip)}{families}
  ports: [{{name: http, port: 80, protocol: TCP, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: demo}}
spec:
  clusterIP: {quote(echo_vip)}{families}
  ports: [{{name: udp-echo, port: 53, protocol: UDP, targetPort: 9053}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abcde
  namespace: demo
  labels: {{kubernetes.io/service-name: web}}
addressType: {address_type}
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:{eps}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-abcde
  namespace: demo
  labels: {{kubernetes.io/service-name: echo}}
addressType: {address_type}
ports: [{{name: udp-echo, port: 9053, protocol: UDP}}]
endpoints:{eps}"""


DEFAULT_ENDPOINTS: List[Endpoint] = [
    ("web-1", "10.244.0.11", True), ("web-2", "10.244.0.12", True),
    ("web-3", "10.244.0.13", True), ("web-4", "10.244.0.14", False)]


def ebpflb(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ebpflb.cli", *args], capture_output=True,
                          text=True, timeout=60, check=check)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition",
               interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def node_pin_dir(lab_name: str, node: int = 0) -> str:
    """Pin directory of node `node`'s agent: lab_pin_dir for node 0, then "<that>-node<k>"."""
    return lab_pin_dir(lab_name) + (f"-node{node}" if node else "")


def _node_file(workdir: Path, name: str, node: int) -> Path:
    """Node 0 keeps the single-node file names; node k's agent gets "<stem>-node<k><suffix>"
    so agents of several nodes can share one workdir."""
    if not node:
        return workdir / name
    stem, dot, suffix = name.partition(".")
    return workdir / f"{stem}-node{node}{dot}{suffix}"


def socket_lb_args(lab_name: str, node: int, extra_args: Sequence[str]) -> List[str]:
    """The socket hooks of a lab node's agent attach to the node's cgroup, never the machine's
    root. Lab agents take the packet path (--socket-lb off) unless `extra_args` ask for socket
    load balancing: most lab tests are about the packet path, which traffic from outside the
    cluster always takes."""
    args: List[str] = []
    if "--cgroup" not in extra_args:
        cgroup = get_lab(lab_name).cgroup(node)
        if cgroup is None:
            asked = list(extra_args)
            if "--socket-lb" in asked and asked[asked.index("--socket-lb") + 1] != "off":
                raise AssertionError("socket load balancing needs cgroup v2, which is not mounted")
            return [] if "--socket-lb" in asked else ["--socket-lb", "off"]
        args += ["--cgroup", cgroup]
    if "--socket-lb" not in extra_args:
        args += ["--socket-lb", "off"]
    return args


class AgentProcess:
    """`ebpflb agent` for a lab node (node 0 unless `node` says otherwise), as a subprocess logging
    to a file; `source_args` says where its Services come from (--manifests ... or --kubernetes ...)."""

    def __init__(self, lab_name: str, workdir: Path, source_args: Sequence[str],
                 on_exit: str = "remove", extra_args: Sequence[str] = (), node: int = 0):
        self.lab = lab_name
        self.node = node
        self.pin_dir = node_pin_dir(lab_name, node)
        self.log_path = _node_file(workdir, "agent.log", node)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ebpflb.cli", "agent", "--netns", node_netns(lab_name, node),
             *source_args, "--pin-dir", self.pin_dir, "--on-exit", on_exit,
             "--poll-interval", "0.1", *socket_lb_args(lab_name, node, extra_args), *extra_args],
            stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def services(self, draining: bool = False) -> list:
        """The frontends in service (`draining`: also those kept only for their open flows)."""
        views = json.loads(ebpflb("service", "list", "-o", "json", "--pin-dir",
                                  self.pin_dir).stdout)["services"]
        return [v for v in views if draining or not v["draining"]]

    def backends(self, frontend: str) -> Optional[List[str]]:
        """The programmed backend addresses of a frontend in service, or None when it is not
        (absent, or draining)."""
        for svc in self.services():
            if svc["frontend"] == frontend:
                return [b["address"] for b in svc["backends"]]
        return None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class RunningAgent(AgentProcess):
    """The agent on a manifest file the caller rewrites; returns once the agent serves."""

    def __init__(self, lab_name: str, workdir: Path, endpoints: Sequence[Endpoint],
                 on_exit: str = "remove", extra_args: Sequence[str] = (), annotations: str = "{}",
                 node: int = 0, text: Optional[str] = None):
        """`text`: the manifest to start on, instead of manifest(endpoints, annotations)."""
        self.manifest_path = _node_file(workdir, "services.yaml", node)
        # An IPv6-only lab has no IPv4 pods to send to: its manifests are IPv6 ones.
        self.ip_family = "ipv6" if get_lab(lab_name).ip_family == "ipv6" else "ipv4"
        self.ready_path = _node_file(workdir, "agent.ready", node)
        self.ready_path.unlink(missing_ok=True)  # an earlier agent's, in the same workdir
        self.write_manifest(endpoints, text=text, annotations=annotations)
        super().__init__(lab_name, workdir, ["--manifests", str(self.manifest_path)], on_exit,
                         ["--ready-file", str(self.ready_path), *extra_args], node=node)
        try:
            wait_until(lambda: self.ready_path.exists() or self.proc.poll() is not None, 60,
                       "the agent to start")
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log()}")
        except BaseException:
            self.stop()
            raise

    def write_manifest(self, endpoints: Sequence[Endpoint] = (), text: Optional[str] = None,
                       annotations: str = "{}") -> None:
        """Replaces the manifest atomically, as kubectl-style tooling would."""
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(text if text is not None else manifest(endpoints, annotations, self.ip_family))
        os.replace(tmp, self.manifest_path)

    def wait_applied(self, timeout: float = 10.0) -> float:
        """Returns (time.monotonic()) once the agent reports in its status file that every
        manifest written before this call is in the maps: from then on the data path serves
        what was written, however slow the machine was to get there."""
        return wait_applied(self.pin_dir, self.manifest_path, timeout)


def start_node_agents(lab_name: str, workdir: Path, nodes: int,
                      args_of: Callable[[int], Sequence[str]]) -> List[RunningAgent]:
    """One RunningAgent per lab node (node k gets `args_of(k)` as its extra arguments), started
    at once: each compiles its programs, which is most of a start. If one fails to start, the
    others are stopped and its error is raised."""
    import threading

    started: List[Optional[RunningAgent]] = [None] * nodes
    errors: List[BaseException] = []

    def start(k: int) -> None:
        try:
            started[k] = RunningAgent(lab_name, workdir, [], node=k, extra_args=list(args_of(k)))
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after every start ended
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(k,)) for k in range(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for agent in started:
            if agent is not None:
                agent.stop()
        raise errors[0]
    return [a for a in started if a is not None]


def wait_applied(pin_dir: str, path: Path, timeout: float = 10.0) -> float:
    """Waits for the agent on `pin_dir` to report that it read and programmed every manifest
    written before this call (its revision, a wall-clock time: see ManifestSource.revision);
    returns time.monotonic() then. The agent may have read `path` before this call took the
    time, and then has no reason to read again: after a while the file's times are touched,
    which makes it read (and report) once more."""
    deadline = time.monotonic() + timeout
    threshold = time.time_ns()
    poke_at = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        if ((read_status(pin_dir) or {}).get("applied_revision") or 0) >= threshold:
            return time.monotonic()
        if time.monotonic() >= poke_at:
            threshold = time.time_ns()
            os.utime(path)
            poke_at = time.monotonic() + 1.0
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for the agent to report "
                         f"{path} applied")


def force_cleanup(lab_name: str) -> None:
    """Last resort for a finalizer: the pins of a lab's agents, every node's (the lab's own
    teardown kills the agent processes and removes the namespaces, which takes the programs
    with them)."""
    for path in lab_pin_dirs(lab_name):
        remove_pins(DataplaneConfig(pin_dir=path))
