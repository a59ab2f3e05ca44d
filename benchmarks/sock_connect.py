"""Cost of one connect() through ebpflb's socket hooks (bpf/lb4_sock.c), measured with real
sockets: a C client (benchmarks/sock_connect.c) times blocking connect()+close() to a Service VIP,
which lb4_connect translates to a backend, against connect()+close() straight to a backend
address, sample by sample, in one process and one run; the difference is what the hook adds to a
translated connect(). A third kind, taking its turn with the other two, connects to a backend
from a socket of a cgroup with no hook attached: what an attached hook costs a connect() to no
frontend (one map lookup).

Set-up, all of it the benchmark's own and removed at the end whatever happens (also on SIGTERM,
and left-overs of a killed earlier run at the start):
  - a network namespace whose loopback holds the backends' addresses; the client listens on the
    backends' port there itself (no packet leaves the namespace);
  - a cgroup under the cgroup v2 root with two children: "hooked" (the socket hooks attached,
    never the root cgroup itself) and "plain" (nothing attached); the client makes each socket in
    the cgroup its kind needs (a socket stays in the cgroup it was made in);
  - the real data plane (load_programs, maps pinned in a directory of its own) programmed through
    the control-plane path the agent takes (manifest text -> model -> reconcile through
    BccMapWriter) with --services Services of 4 backends, the last one probed, as in the suite.
The hooks' verdict counter socket/new must grow by exactly the client's connect()s to the VIP.

    .venv/bin/python -m benchmarks.sock_connect [--rounds 15] [--iterations 3000]
        [--services 10000] [--no-write]   (root; `make bench` runs it)

Writes benchmarks/results/sock_connect.json and the section "Socket LB: cost per connect()" of
docs/benchmarks.md (other sections untouched).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

from benchmarks import common
from ebpflb.lab import kubeproxy_rules as kp

REPO = Path(__file__).resolve().parent.parent
C_SOURCE = REPO / "benchmarks" / "sock_connect.c"
RESULTS_FILE = "sock_connect.json"
SECTION = "## Socket LB: cost per connect()"
COMMAND = ".venv/bin/python -m benchmarks.sock_connect"
# One name for the namespace, the cgroup (under the cgroup v2 root) and the pin directory, so a
# run can remove what a killed earlier one left.
NAME = "ebpflb-bench-sock"
PIN_DIR = f"/sys/fs/bpf/{NAME}"
BACKENDS = ("10.244.91.1", "10.244.91.2", "10.244.91.3", "10.244.91.4")
PORT = 8080
KINDS = ("vip", "direct", "direct_nohook")


@dataclass
class Setup:
    """What the client needs: where it runs and what it connects to."""

    ns: str
    hooked: str  # cgroup with the socket hooks attached
    plain: str  # cgroup with nothing attached
    vip: str  # "address:port" of the probed Service
    progs: Any  # LoadedPrograms: the hooks and the maps (counters)


def build_client(tmpdir: str) -> str:
    out = os.path.join(tmpdir, "sock_connect")
    r = subprocess.run(["gcc", "-O2", "-Wall", "-o", out, str(C_SOURCE)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError(f"building {C_SOURCE.name} failed:\n{r.stderr}")
    return out


def cgroup_paths() -> Dict[str, str]:
    from ebpflb.dataplane.sock_attach import cgroup2_root

    root = cgroup2_root()
    if root is None:
        raise SystemExit("no cgroup v2 hierarchy is mounted: the socket hooks need one")
    parent = os.path.join(root, NAME)
    return {"parent": parent, "hooked": os.path.join(parent, "hooked"),
            "plain": os.path.join(parent, "plain")}


def remove_all() -> List[str]:
    """Removes the benchmark's cgroups (their processes stopped, the hooks go with them), its
    namespace and its pins, whichever exist; each step runs even if an earlier one failed."""
    from ebpflb.lab.nsops import kill_pids, netns_exists, netns_pids, remove_cgroup, remove_netns

    removed: List[str] = []
    errors: List[str] = []
    steps = [lambda: remove_cgroup(cgroup_paths()["parent"]),
             lambda: ([f"process {p}" for p in kill_pids(netns_pids(NAME))]
                      + ([f"netns {NAME}"] if netns_exists(NAME) and remove_netns(NAME) else [])),
             lambda: _remove_pins()]
    for step in steps:
        try:
            removed += step()
        except Exception as exc:  # noqa: BLE001 - the other steps must still run
            errors.append(str(exc))
    if errors:
        raise RuntimeError("cleanup incomplete: " + "; ".join(errors))
    return removed


def _remove_pins() -> List[str]:
    if not os.path.exists(PIN_DIR):
        return []
    shutil.rmtree(PIN_DIR)
    return [f"pins {PIN_DIR}"]


def make_namespace() -> None:
    """The namespace: loopback up with the backends' addresses. The client closes first and opens
    tens of thousands of connections, so no TIME_WAIT (it would pile up and slow the ephemeral
    port search as a run goes on) and the whole port range."""
    from ebpflb.lab.nsops import create_netns, write_sysctls

    create_netns(NAME)
    subprocess.run(["ip", "-n", NAME, "link", "set", "lo", "up"], check=True)
    for addr in BACKENDS:
        subprocess.run(["ip", "-n", NAME, "addr", "add", f"{addr}/32", "dev", "lo"], check=True)
    write_sysctls(NAME, {"net.ipv4.tcp_max_tw_buckets": "0",
                         "net.ipv4.ip_local_port_range": "1024 65000"})


def program(progs: Any, config: Any, services: List[kp.Svc]) -> float:
    """Programs the maps as the agent does from a manifest file; returns the seconds it took."""
    from ebpflb.dataplane.bcc_maps import BccMapWriter
    from ebpflb.manifests import parse_documents
    from ebpflb.model import desired_state
    from ebpflb.reconcile import reconcile

    t0 = time.perf_counter()
    m = parse_documents(kp.manifests(services), "<benchmark>")
    reconcile(desired_state(m.services, m.slices), BccMapWriter(progs.bpf), config.map_limits)
    return time.perf_counter() - t0


def set_up(n_services: int) -> Setup:
    """Namespace, data plane, cgroups and hooks; the caller removes them (remove_all)."""
    from ebpflb.dataplane.cleanup import owner_of
    from ebpflb.dataplane.config import DataplaneConfig
    from ebpflb.dataplane.loader import load_programs
    from ebpflb.dataplane.bcc_maps import BccMapWriter
    from ebpflb.dataplane.sock_attach import attach_sock_hooks, write_settings

    make_namespace()
    config = DataplaneConfig(pin_dir=PIN_DIR)
    progs = load_programs(config)
    services = kp.make_services(n_services, list(BACKENDS), PORT, per_service=len(BACKENDS))
    seconds = program(progs, config, services)
    print(f"programmed {n_services:,} Services in {seconds:.1f} s", file=sys.stderr)
    cg = cgroup_paths()
    for path in (cg["parent"], cg["hooked"], cg["plain"]):
        os.mkdir(path)
    write_settings(BccMapWriter(progs.bpf), "all")  # before the hooks: never run unconfigured
    attach_sock_hooks(cg["hooked"], progs.sock, owner_of(config))
    probe = services[-1]
    return Setup(NAME, cg["hooked"], cg["plain"], f"{probe.vip}:{probe.port}", progs)


def run_client(binary: str, s: Setup, rounds: int, iterations: int) -> Dict:
    """The C client in the namespace (nsenter --net: `ip netns exec` would remount /sys, and
    with it the cgroup hierarchy the client moves in) and, from its first instruction, in the
    hooked cgroup."""
    from ebpflb.lab.nsops import in_cgroup, netns_path

    argv = in_cgroup(s.hooked, ["nsenter", f"--net={netns_path(s.ns)}", binary, str(rounds),
                                str(iterations), s.hooked, s.plain, s.vip,
                                *[f"{b}:{PORT}" for b in BACKENDS]])
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60 + rounds * iterations / 100)
    if r.returncode != 0:
        raise RuntimeError(f"sock_connect client failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(r.stdout)


def check(raw: Dict, counted: Dict[str, int]) -> None:
    """The run measured what it says: every connect() to the VIP went through the hook (landed
    on a backend, reported the VIP as peer, counted once), none to a backend did."""
    c = raw["check"]
    problems = []
    if sum(c["landed"].values()) != c["vip_connects"] or c["peer_is_vip"] != c["vip_connects"]:
        problems.append(f"connect()s to the VIP not translated as expected: {c}")
    if c["direct_untouched"] != c["direct_connects"]:
        problems.append(f"connect()s to a backend were rewritten: {c}")
    if not c["plain_vip_unreachable"]:
        problems.append("a socket outside the hooked cgroup reached the VIP")
    if counted["socket_lb"] != raw["vip_connects"] or counted["socket_no_backend"]:
        problems.append(f"hook counters {counted} for {raw['vip_connects']} connect()s to the VIP")
    if problems:
        raise RuntimeError("; ".join(problems))


def summarize(raw: Dict) -> Dict:
    """Per kind: the per-round medians summarized over rounds; the costs: paired per round."""
    rounds = raw["rounds"]
    out: Dict[str, Any] = {}
    for kind in KINDS:
        out[kind] = {"pair": common.summary([r[kind]["median_ns"] for r in rounds]),
                     "connect": common.summary([r[kind]["connect_median_ns"] for r in rounds]),
                     "pair_mean": common.summary([r[kind]["mean_ns"] for r in rounds])}

    def diff(a: str, b: str, key: str) -> Dict[str, float]:
        return common.summary([r[a][key] - r[b][key] for r in rounds])

    out["hook_cost"] = {"pair": diff("vip", "direct", "median_ns"),
                        "connect": diff("vip", "direct", "connect_median_ns")}
    out["miss_cost"] = {"pair": diff("direct", "direct_nohook", "median_ns"),
                        "connect": diff("direct", "direct_nohook", "connect_median_ns")}
    return out


def section(results: Dict) -> str:
    s, meta = results["summary"], results["meta"]

    def cell(x: Dict[str, float], sign: str = "") -> str:
        return f"{x['median']:{sign}.0f} ({x['min']:{sign}.0f} to {x['max']:{sign}.0f})"

    names = {"vip": "to the VIP, through the hook (translated to a backend)",
             "direct": "to a backend, hook attached (no frontend: one lookup)",
             "direct_nohook": "to a backend, no hook attached"}
    rows = ["| connect() | connect()+close(), ns | connect() alone, ns |", "|---|---:|---:|"]
    rows += [f"| {names[k]} | {cell(s[k]['pair'])} | {cell(s[k]['connect'])} |" for k in KINDS]
    landed = ", ".join(f"{n}" for n in results["check"]["landed"].values())
    return f"""{SECTION}

What the cgroup socket hooks add to one `connect()`, with real sockets. A C client
(`benchmarks/sock_connect.c`, no interpreter in the timed path) in a network namespace of its own,
whose loopback holds the 4 backends' addresses and a listener on their port, times blocking
`connect()` + `close()` pairs: to the probed Service's VIP (the last of {meta['services']:,}
Services programmed through the agent's path, 4 backends each), which `lb4_connect` sends to a
backend, and straight to a backend address, from sockets of a cgroup of the benchmark's own with
the hooks attached; a third kind connects to a backend from sockets of a sibling cgroup with
nothing attached. The three take turns sample by sample, the order rotated every sample (a socket
stays in the cgroup it was made in, so the client makes them ahead, in batches, moving between
the two cgroups). On loopback the handshake completes inside `connect()`; the server side is
accepted after the clock stops. Nanoseconds: median over {meta['rounds']} rounds of each round's
median of {meta['iterations']:,} samples per kind (min to max over the rounds).

{chr(10).join(rows)}

- The hook's cost on a translated `connect()` (VIP minus backend, paired per round):
  **{cell(s['hook_cost']['pair'], '+')} ns** per `connect()`+`close()`, {cell(s['hook_cost']['connect'], '+')} ns on
  `connect()` alone: the frontend lookup, the slot and backend, the socket's record in
  `lb4_sock_nat`, the counters. It is paid once per connection; the TC path pays per packet.
- An attached hook on a `connect()` to no frontend (backend, hook attached, minus no hook, paired
  per round): {cell(s['miss_cost']['pair'], '+')} ns ({cell(s['miss_cost']['connect'], '+')} ns on `connect()` alone),
  paid by every `connect()` of the cgroup the hooks are attached to.
- Checked before timing: {results['check']['vip_connects']} `connect()`s to the VIP landed on
  the backends ({landed}) and `getpeername()` gave the VIP for all of them; a socket of the cgroup
  with nothing attached did not reach the VIP. After: the hooks' `socket/new` verdict counter grew by
  exactly the client's {results['vip_connects']:,} `connect()`s to the VIP.

Machine: nproc {meta['machine']['nproc']}, {meta['machine']['cpu_model']}, kernel
{meta['machine']['kernel']}, gcc {meta['machine']['gcc']}; other work on this shared VM moves
absolute figures, the paired differences less. Measured {meta['measured']}. Reproduce: `{COMMAND}`
(root). Raw results: `benchmarks/results/{RESULTS_FILE}`.
"""


def measure(binary: str, n_services: int, rounds: int, iterations: int) -> Dict:
    """Set up, run the client, check, tear down (whatever happens)."""
    from ebpflb.dataplane.bcc_maps import read_verdicts

    remove_all()  # a killed earlier run
    try:
        s = set_up(n_services)
        before = read_verdicts(s.progs.bpf)
        raw = run_client(binary, s, rounds, iterations)
        after = read_verdicts(s.progs.bpf)
        # The socket hooks' verdicts: connect()s balanced, and refused.
        counted = {name: after[("socket", v)] - before[("socket", v)]
                   for name, v in (("socket_lb", "new"), ("socket_no_backend", "reject"))}
        check(raw, counted)
        return {**raw, "counted": counted}
    finally:
        print("removed: " + ", ".join(remove_all() or ["nothing"]), file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("needs root (BPF programs, namespaces, cgroups)")
    # SIGTERM ends the run through the finally blocks, so nothing stays attached or pinned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="ebpflb-sockbench-") as tmp:
        raw = measure(build_client(tmp), args.services, args.rounds, args.iterations)
    gcc = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
    results = {"meta": {"rounds": args.rounds, "iterations": args.iterations,
                        "services": args.services, "backends": len(BACKENDS),
                        "client": "C (benchmarks/sock_connect.c)",
                        "machine": common.machine(gcc=gcc),
                        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
               **raw, "summary": summarize(raw)}
    text = section(results)
    print(text)
    if not args.no_write:
        common.RESULTS.mkdir(exist_ok=True)
        (common.RESULTS / RESULTS_FILE).write_text(json.dumps(results, indent=1))
        common.write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
