"""The modes the suite compares, each able to load its configuration for a scale, switch its
data path on and off in the lab's node namespace, and say what loading cost.

  direct        no load balancer: the client connects to the pod IPs (the limit)
  ebpflb        ebpflb TC: the real agent (`python -m ebpflb.cli agent --netns <lab>-node ...
                --socket-lb off`), started for each measurement and stopped with --on-exit remove
                (then `ebpflb cleanup`); its TC programs on the pod veths translate every packet
  ebpflb-sock   ebpflb socket LB: the same agent with `--socket-lb all --cgroup <lab node-0
                cgroup>`: its cgroup hooks send the client's connect() to a backend, so no
                packet needs translating (the TC programs stay attached for the rest)
  iptables      kube-proxy's iptables shape loaded with iptables-legacy-restore
  iptables-nft  the same rules through the nft backend of iptables (iptables-nft-restore)
  nftables      kube-proxy's nftables-mode shape loaded with `nft -f`

and the IPv6 measure beside them (issue 16; the lab runs dual-stack, every Service has an IPv6
cluster IP in the lab's IPv6 Service range and an IPv6 EndpointSlice of the same pods):

  direct6       the client connects to the pods' IPv6 addresses
  ebpflb6       ebpflb TC, the client connecting to the IPv6 cluster IP (the lb6 TC programs)
  ebpflb-sock6  ebpflb socket LB, the same IPv6 connections translated by the IPv6 cgroup hooks

The IPv6 modes' agent reads the dual-stack manifest (each Service with both families); the IPv4
ebpflb modes keep reading the IPv4 halves only, as before the IPv6 measure, so their figures and
their programming time compare with earlier runs and with the kube-proxy shapes, which stay IPv4
only (kube-proxy runs a separate ip6tables/ip6 proxier for IPv6; not measured here).

The rule sets stay loaded for a whole scale (loading nftables at 10,000 Services takes minutes);
"off" removes only the hook into them (the PREROUTING jump, the nat-prerouting base chain), so
at any time exactly one mode translates VIP traffic. Everything lives in the lab's node
namespace and goes with it.

Socket hooks act on every process of the cgroup they are attached to, whatever its network
namespace: the agents are therefore always given the lab node's cgroup (`--cgroup`), never the
machine's root one, and the load client of every mode runs in that cgroup (run.py), so the
modes differ only in what the agent attaches.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from ebpflb.lab import kubeproxy_rules as kp
from ebpflb import abi

REPO = Path(__file__).absolute().parents[2]  # not resolved: the suite may run from a snapshot
PREROUTING_JUMP = ["PREROUTING", "-m", "comment", "--comment", "kubernetes service portals",
                   "-j", "KUBE-SERVICES"]


def ns_run(ns: str, argv: List[str], stdin: Optional[str] = None, timeout: float = 900,
           check: bool = True) -> subprocess.CompletedProcess:
    """Run argv in network namespace ns (the lab's node), output captured."""
    return subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True,
                          text=True, timeout=timeout, check=check)


def timed(ns: str, argv: List[str], stdin: Optional[str] = None, timeout: float = 900) -> float:
    """Seconds one command takes in ns (the `ip netns exec` wrapper included: ~2 ms)."""
    t0 = time.perf_counter()
    r = ns_run(ns, argv, stdin, timeout, check=False)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {ns} failed ({r.returncode}): {r.stderr[-2000:]}")
    return dt


class Mode:
    name = ""
    vip_traffic = True  # the client targets the VIP (False: the pod IPs)
    family = 4  # the client's IP family: 4 targets IPv4 addresses, 6 their IPv6 twins

    def __init__(self, node_ns: str):
        self.node_ns = node_ns

    def load(self, services: List[kp.Svc]) -> float:
        """Program the scale's configuration (off); return the seconds it took."""
        return 0.0

    def on(self) -> None:
        pass

    def off(self) -> None:
        pass

    def verdicts(self) -> Optional[Dict[str, int]]:
        """The data plane's verdict counters while on (None: the mode has none)."""
        return None

    def log_tail(self) -> str:
        """What the mode's own process logged, for an error message ("": nothing)."""
        return ""

    def check_verdicts(self, v: Dict[str, int]) -> None:
        pass


class Direct(Mode):
    name = "direct"
    vip_traffic = False


class Direct6(Direct):
    name = "direct6"
    family = 6


class Iptables(Mode):
    """kube-proxy's iptables shape; `backend` "legacy" or "nft" picks iptables-<backend>-restore."""

    def __init__(self, node_ns: str, backend: str):
        super().__init__(node_ns)
        self.backend = backend
        self.name = "iptables" if backend == "legacy" else "iptables-nft"
        self.tool = f"iptables-{backend}"

    def load(self, services: List[kp.Svc]) -> float:
        # kube-proxy restores without the hook rules; the suite adds the PREROUTING jump to switch
        # on, so the restore here holds OUTPUT/POSTROUTING hooks and everything else.
        text = kp.iptables_restore(services).replace(
            '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n', "")
        return timed(self.node_ns, [f"{self.tool}-restore"], text)

    def restore_noflush(self, text: str) -> float:
        return timed(self.node_ns, [f"{self.tool}-restore", "--noflush"], text)

    def on(self) -> None:
        ns_run(self.node_ns, [self.tool, "-w", "-t", "nat", "-I", *PREROUTING_JUMP])

    def off(self) -> None:
        ns_run(self.node_ns, [self.tool, "-w", "-t", "nat", "-D", *PREROUTING_JUMP])


class Nftables(Mode):
    name = "nftables"

    def load(self, services: List[kp.Svc]) -> float:
        return timed(self.node_ns, ["nft", "-f", "-"], kp.nft_ruleset(services, with_prerouting=False))

    def apply(self, text: str) -> float:
        return timed(self.node_ns, ["nft", "-f", "-"], text)

    def on(self) -> None:
        ns_run(self.node_ns, ["nft", "-f", "-"], "\n".join(kp.NFT_PREROUTING) + "\n")

    def off(self) -> None:
        t = kp.NFT_TABLE
        ns_run(self.node_ns, ["nft", "-f", "-"],
               f"flush chain ip {t} nat-prerouting\ndelete chain ip {t} nat-prerouting\n")


_PROGRAMMED = re.compile(r"(\d+) frontends programmed, (\d+) map writes in ([\d.]+) ms")


class Ebpflb(Mode):
    """The real agent on a manifest file; one agent run per measurement slot.

    `socket_lb` is the agent's --socket-lb: "off" is ebpflb TC (key "ebpflb", as in results from
    before the socket hooks existed, so they still compare), "all" is ebpflb socket LB (key
    "ebpflb-sock"). Both get the lab node's `cgroup`: with "off" the agent detaches hooks a
    crashed socket-LB run left there, and nothing of it ever touches the machine's root cgroup.
    `family` 6: the IPv6 twin of the mode (key suffix "6"), its agent on the dual-stack manifest.
    """

    NAMES = {("off", 4): "ebpflb", ("all", 4): "ebpflb-sock",
             ("off", 6): "ebpflb6", ("all", 6): "ebpflb-sock6"}
    # The counters a slot keeps, under the names results files have used since before the
    # verdicts were counted per hook: which path translated the slot's connections.
    VERDICTS = {"socket_lb": ("verdicts", "socket", "new"),
                "socket_no_backend": ("verdicts", "socket", "reject"),
                "dnat_new": ("verdicts", "from_pod", "new"),
                "no_backend": ("drops", "no_backend"),
                "pass": ("verdicts", "from_pod", "pass")}

    def __init__(self, node_ns: str, lab: str, workdir: Path, cgroup: Optional[str],
                 socket_lb: str = "off", family: int = 4):
        super().__init__(node_ns)
        if socket_lb != "off" and cgroup is None:
            raise RuntimeError("socket LB mode needs the lab node's cgroup (is cgroup v2 mounted?)")
        if (socket_lb, family) not in self.NAMES:
            raise ValueError(f"socket_lb {socket_lb!r} / family {family!r}: no such ebpflb mode "
                             f"(socket_lb: off or all; family: 4 or 6)")
        self.name = self.NAMES[(socket_lb, family)]
        self.socket_lb = socket_lb
        self.family = family
        self.cgroup = cgroup
        self.lab = lab
        self.pin_dir = f"/sys/fs/bpf/ebpflb-lab-{lab}"
        self.workdir = workdir
        # One file per family, shared by the TC and socket modes (their slots never overlap).
        self.manifest = workdir / ("services.json" if family == 4 else "services-dual.json")
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = workdir / f"agent-{self.name}.log"
        self.runs: List[Dict] = []  # per agent start: programming, RSS, map memory
        self.max_backends: Optional[int] = None  # --max-backends when the default is too small

    def cgroup_args(self) -> List[str]:
        """--cgroup, so the agent and `ebpflb cleanup` act on the lab node's cgroup (without it
        both default to the machine's root cgroup; with no cgroup v2 only "off" runs, which
        attaches nothing)."""
        return ["--cgroup", self.cgroup] if self.cgroup else []

    def load(self, services: List[kp.Svc]) -> float:
        # Backend ids are one space for both families (ebpflb/plan.py check_capacity): 10,000
        # dual-stack Services of 4 endpoints need 80,000, over the default; size the maps up
        # (a power of two) only when needed, so the IPv4 modes keep the maps of earlier runs.
        need = sum(len(s.endpoints) + (len(s.endpoints6) if self.family == 6 else 0)
                   for s in services)
        self.max_backends = None if need <= abi.LB4_MAX_BACKENDS else 1 << (need - 1).bit_length()
        self.write_manifest(services)
        return 0.0  # measured at each agent start instead (the log's "map writes in X ms")

    def write_manifest(self, services: List[kp.Svc]) -> None:
        tmp = self.manifest.with_suffix(".tmp")
        tmp.write_text(kp.manifests(services, dual_stack=self.family == 6))
        os.replace(tmp, self.manifest)

    def log_tail(self) -> str:
        text = self.log_path.read_text() if self.log_path.exists() else ""
        return f"\nagent log ({self.log_path}), last lines:\n{text[-4000:]}" if text else ""

    def programmed(self) -> List[Dict]:
        text = self.log_path.read_text() if self.log_path.exists() else ""
        return [{"frontends": int(m[0]), "writes": int(m[1]), "ms": float(m[2])}
                for m in _PROGRAMMED.findall(text)]

    def on(self) -> None:
        ready = self.workdir / f"agent-{self.name}.ready"
        if ready.exists():
            ready.unlink()
        self._log = open(self.log_path, "w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ebpflb.cli", "agent", "--netns", self.node_ns,
             "--manifests", str(self.manifest), "--pin-dir", self.pin_dir, "--on-exit", "remove",
             "--metrics-address", "", "--poll-interval", "0.2", "--ready-file", str(ready),
             "--socket-lb", self.socket_lb, *self.cgroup_args(),
             *(["--max-backends", str(self.max_backends)] if self.max_backends else [])],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=str(REPO))
        deadline = time.monotonic() + 180
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = (f"{self.name}: agent did not become ready:\n"
                       f"{self.log_path.read_text()[-3000:]}")
                try:
                    self.off()
                except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                    # The agent's log stays the cause reported; the cleanup failure goes with it.
                    why += f"\n(and the cleanup after it failed: {exc})"
                raise RuntimeError(why)
            time.sleep(0.05)
        startup = time.perf_counter() - t0
        prog = self.programmed()
        if not prog:
            # The agent reports ready even when its first sync was refused (e.g. capacity): a
            # slot on unprogrammed maps would measure nothing, so stop here with its log.
            why = f"{self.name}: agent ready but its first sync programmed nothing{self.log_tail()}"
            self.off()
            raise RuntimeError(why)
        self.runs.append({"startup_s": startup, "programming": prog[0] if prog else None,
                          **memory(self.proc.pid)})

    def wait_programmed(self, count: int, timeout: float = 120) -> Dict:
        """Wait for the count-th "map writes in X ms" line of the current agent run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            prog = self.programmed()
            if len(prog) >= count:
                return prog[count - 1]
            if self.proc is None or self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"agent: no programming line {count}:\n{self.log_path.read_text()[-3000:]}")

    def off(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self._log.close()
            self.proc = None
        # Belt and braces: nothing of ebpflb may stay attached while another mode is measured.
        # --yes: cleanup asks first, and there is no terminal to answer it here.
        r = subprocess.run([sys.executable, "-m", "ebpflb.cli", "cleanup", "--yes",
                            "--netns", self.node_ns, "--pin-dir", self.pin_dir, *self.cgroup_args()],
                           capture_output=True, text=True, timeout=60, cwd=str(REPO))
        if r.returncode != 0:
            raise RuntimeError(f"{self.name}: ebpflb cleanup in {self.node_ns} failed "
                               f"({r.returncode}): {(r.stderr or r.stdout)[-2000:]}")

    def verdicts(self) -> Dict[str, int]:
        """The running agent's global verdict counters (`ebpflb stats --verdicts`), those of
        VERDICTS. The maps are the agent's (--on-exit remove): they count from its start."""
        r = subprocess.run([sys.executable, "-m", "ebpflb.cli", "stats", "--verdicts", "-o", "json",
                            "--pin-dir", self.pin_dir], capture_output=True, text=True, timeout=60,
                           cwd=str(REPO), check=True)
        counters = json.loads(r.stdout)
        out = {}
        for name, path in self.VERDICTS.items():
            value = counters
            for key in path:
                value = value[key]
            out[name] = value
        return out

    def check_verdicts(self, v: Dict[str, int]) -> None:
        """The slot measured the path the mode is named for: in socket LB mode the hooks
        translated the connections, in TC mode the TC programs did and no hook ran."""
        if self.socket_lb == "off" and (v["socket_lb"] or not v["dnat_new"]):
            raise RuntimeError(f"{self.name}: expected TC translations only, counters {v}")
        if self.socket_lb != "off" and not v["socket_lb"]:
            raise RuntimeError(f"{self.name}: no connect() went through the socket hooks, "
                               f"counters {v}")


def memory(pid: int) -> Dict[str, int]:
    """VmRSS of pid and the memlock of the BPF maps it holds open (each map counted once)."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    maps: Dict[int, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        if "map_id:" not in info:
            continue
        fields = dict(l.split(":", 1) for l in info.splitlines() if ":" in l)
        maps[int(fields["map_id"])] = int(fields.get("memlock", "0").strip())
    return {"rss_bytes": rss, "map_memlock_bytes": sum(maps.values()), "maps": len(maps)}


def build_loadgen(tmpdir: str) -> str:
    out = os.path.join(tmpdir, "loadgen")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", out, str(REPO / "benchmarks" / "loadgen.c")],
                   check=True, capture_output=True, text=True)
    return out


def tool_version(*argv: str) -> str:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError as exc:
        return f"unavailable ({exc})"


