"""Runs the side-by-side suite: builds a (dual-stack) lab per scale, loads every mode's
configuration, then measures traffic mode by mode, interleaved (the mode order rotates every
repetition; the IPv6 modes of issue 16 take their turns with the IPv4 ones), and the
programming cost and memory of each mode. Writes benchmarks/results/suite.json, the plots and
the suite's sections of docs/benchmarks.md (benchmarks/suite/report.py).

    .venv/bin/python -m benchmarks.suite [--scales 100,1000,10000] [--reps 5] [--no-write]   (root)

Bounded: every client run lasts a fixed number of seconds; every step has a timeout. Cleaned
up whatever happens: the agent is stopped and `ebpflb cleanup` run after each slot, and the
lab (namespaces, rules, servers) is taken down in a finally block.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from benchmarks import common
from ebpflb.lab import kubeproxy_rules as kp
from benchmarks.suite import modes as md

log = logging.getLogger("benchmarks.suite")

LAB = "bsuite"
SERVER_PORT = 8081  # the C server of benchmarks/loadgen.c in every web pod
N_WEB = 4
LAT_S, RATE_S, KEEP_S, WARM_S = 1.0, 2.0, 1.5, 0.3
CONC = 16
WARM_RETRIES, WARM_RETRY_S = 2, 1.5  # a warm-up without any connection is retried, longer
# nftables and iptables-nft loads are slow at scale (ENVIRONMENT.md: iptables-nft-restore of 10k
# Services took 829 s here); the suite skips iptables-nft above this scale and loads nftables
# fewer times.
IPTABLES_NFT_MAX_SCALE = 1000


def cpu_sample() -> List[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def busy_fraction(a: List[int], b: List[int]) -> float:
    d = [y - x for x, y in zip(a, b)]
    idle = d[3] + d[4]  # idle + iowait
    total = sum(d[:8])
    return (total - idle) / total if total else 0.0


def client(loadgen: str, kind: str, seconds: float, conc: int, targets: List[str]) -> Dict:
    """One load client run in the client pod. run_in_pod starts it in the cgroup of the pod's
    node (node 0), where ebpflb socket LB attaches its hooks: every mode's client runs there,
    so only what a mode attaches differs (check_client_cgroup makes sure)."""
    from ebpflb.lab import run_in_pod

    c0 = cpu_sample()
    r = run_in_pod(LAB, "client", [loadgen, kind, str(seconds), str(conc), *targets],
                   timeout=seconds + 30)
    c1 = cpu_sample()
    if r.returncode != 0:
        raise RuntimeError(f"loadgen {kind} failed: {r.stderr[-1000:]}")
    out = json.loads(r.stdout)
    out["machine_busy"] = busy_fraction(c0, c1)
    return out


def check_client_cgroup(cgroup: str) -> str:
    """The cgroup v2 path a process started like the load client runs in, which must be the lab
    node-0 cgroup the socket hooks attach to (else socket LB would measure nothing)."""
    from ebpflb.dataplane.sock_attach import cgroup2_root
    from ebpflb.lab import run_in_pod

    r = run_in_pod(LAB, "client", ["cat", "/proc/self/cgroup"], timeout=10, check=True)
    seen = next((line[3:] for line in r.stdout.splitlines() if line.startswith("0::")), "")
    root = cgroup2_root()
    want = "/" + os.path.relpath(cgroup, root) if root else None
    if seen != want:
        raise RuntimeError(f"the load client runs in cgroup {seen!r}, not the lab node's {want!r}")
    return seen


def start_servers(loadgen: str, web: List[str]) -> None:
    from ebpflb.lab import run_in_pod

    for pod in web:
        # setsid + nohup-style detach: the lab's teardown kills every process in its namespaces.
        r = run_in_pod(LAB, pod, ["sh", "-c", f"setsid {loadgen} server {SERVER_PORT} "
                                  f"</dev/null >/dev/null 2>&1 &"], timeout=10)
        if r.returncode != 0:
            raise RuntimeError(f"server in {pod}: {r.stderr}")


def slot(mode: md.Mode, loadgen: str, targets: List[str], node_ns: str) -> Dict:
    """One measurement of one mode: on, conntrack flushed, warm-up, three client runs, off."""
    mode.on()
    try:
        md.ns_run(node_ns, ["conntrack", "-F"], check=False)
        warm = client(loadgen, "conn", WARM_S, 4, targets)
        retries = 0
        while warm["count"] == 0:
            # A lost first SYN waits 1 s for its retransmit, longer than the warm-up: retry
            # with a warm-up longer than that before calling the mode broken. The retries are
            # kept with the slot and logged with the data path's counters (which tell a mode
            # that translated nothing from one that lost a packet), never hidden.
            state = mode.verdicts()
            log.warning("%s: no connection through %s in the warm-up (retry %d); counters %s",
                        mode.name, targets, retries + 1, state)
            if retries == WARM_RETRIES:
                raise RuntimeError(f"{mode.name}: no connection succeeded through {targets} "
                                   f"({retries + 1} warm-ups; counters {state}){mode.log_tail()}")
            retries += 1
            warm = client(loadgen, "conn", WARM_RETRY_S, 4, targets)
        out = {"warmup_retries": retries,
               "lat": client(loadgen, "conn", LAT_S, 1, targets),
               "rate": client(loadgen, "conn", RATE_S, CONC, targets),
               "keep": client(loadgen, "keepalive", KEEP_S, CONC, targets)}
        verdicts = mode.verdicts()  # read while on: the agent's maps go when it stops
        if verdicts is not None:
            mode.check_verdicts(verdicts)
            out["verdicts"] = verdicts
        return out
    finally:
        mode.off()


def agent_memory(mode: md.Ebpflb) -> List[Dict]:
    """Memory and start-up time of each agent run of an ebpflb mode."""
    return [{k: r[k] for k in ("rss_bytes", "map_memlock_bytes", "maps", "startup_s")}
            for r in mode.runs]


def change_pair(svc: kp.Svc):
    """The probed Service with one endpoint removed (of each family), and back."""
    less = dataclasses.replace(svc, endpoints=svc.endpoints[:-1], endpoints6=svc.endpoints6[:-1])
    return less, svc


def target(ip: str, port: int) -> str:
    """A load client target: ip:port, [ip]:port for IPv6 (benchmarks/loadgen.c)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def mode_targets(mode: md.Mode, probe: kp.Svc) -> List[str]:
    """What a mode's client connects to: the probed Service's cluster IP of the mode's family, or
    (direct modes) its endpoints of that family."""
    if mode.vip_traffic:
        vip = probe.vip if mode.family == 4 else probe.vip6
        if vip is None:
            raise RuntimeError(f"{mode.name}: the probed Service has no IPv{mode.family} cluster IP")
        return [target(vip, probe.port)]
    eps = probe.endpoints if mode.family == 4 else probe.endpoints6
    return [target(ip, port) for ip, port in eps]


def run_scale(n: int, reps: int, loadgen: str, workdir: Path) -> Dict:
    from ebpflb.lab import lab_up
    from ebpflb.lab.nsops import write_sysctls
    from ebpflb.lab.topology import default_pods, pod_ip6

    pods = default_pods(N_WEB)
    web = [p for p in pods if p.name != "client"]
    # Dual-stack Services: an IPv6 cluster IP each (inside the lab's IPv6 Service range) and an
    # IPv6 EndpointSlice of the same pods' IPv6 addresses, for the IPv6 modes.
    services = kp.make_services(n, [p.ip for p in web], SERVER_PORT,
                                pod_ips6=[pod_ip6(p.ip) for p in web])
    probe = services[-1]
    lab = lab_up(LAB, pods, ip_family="dual")
    node = lab.node_ns
    # The client opens tens of thousands of connections: give it the whole port range (the
    # net.ipv4 knobs here are the netns's TCP settings for both families).
    write_sysctls(lab.pod_ns("client"), {"net.ipv4.ip_local_port_range": "1024 65000"})
    # The servers close first, so TIME_WAIT would sit on the server pods, and a later SYN from a
    # reused client port whose timestamp clock differs (the client's TCP timestamp offset is
    # per destination address: VIP in one mode, pod IP in another) would be refused by PAWS
    # and wait for a 1 s SYN retransmit. No TIME_WAIT on the (throwaway) server pods.
    for p in web:
        write_sysctls(lab.pod_ns(p.name), {"net.ipv4.tcp_max_tw_buckets": "0"})
    start_servers(loadgen, [p.name for p in web])
    time.sleep(0.3)
    cgroup = lab.cgroup(0)
    if cgroup is None:
        log.warning("no cgroup v2 hierarchy is mounted: ebpflb socket LB is not measured")
    client_cgroup = check_client_cgroup(cgroup) if cgroup else None
    direct = md.Direct(node)
    ebpf = md.Ebpflb(node, LAB, workdir, cgroup, socket_lb="off")
    ebpf_sock = md.Ebpflb(node, LAB, workdir, cgroup, socket_lb="all") if cgroup else None
    direct6 = md.Direct6(node)
    ebpf6 = md.Ebpflb(node, LAB, workdir, cgroup, socket_lb="off", family=6)
    ebpf_sock6 = md.Ebpflb(node, LAB, workdir, cgroup, socket_lb="all", family=6) if cgroup else None
    ipt = md.Iptables(node, "legacy")
    nft = md.Nftables(node)
    # Each IPv6 mode right after its IPv4 twin: with the rotation they stay neighbours in every
    # repetition, so the noise of this shared VM hits a pair alike.
    mode_list: List[md.Mode] = [direct, direct6, ebpf, ebpf6,
                                *([ebpf_sock, ebpf_sock6] if ebpf_sock else []), ipt, nft]
    iptn: Optional[md.Iptables] = None
    if n <= IPTABLES_NFT_MAX_SCALE:
        iptn = md.Iptables(node, "nft")
        mode_list.append(iptn)
    res: Dict = {"services": n, "endpoints_per_service": len(probe.endpoints),
                 "client_cgroup": client_cgroup, "ip_family": "dual",
                 "probe": {"vip": probe.vip, "vip6": probe.vip6, "port": probe.port,
                           "name": probe.port_name_string},
                 "full": {}, "change": {}, "traffic": {m.name: [] for m in mode_list}}

    # Programming: full loads (the last load of each stays, switched off).
    full_reps = {"iptables": reps, "iptables-nft": 3, "nftables": 3 if n <= 1000 else 1}
    for m in [ipt, nft] + ([iptn] if iptn else []):
        samples = []
        for _ in range(full_reps[m.name]):
            samples.append(m.load(services))
            log.info("scale %d: %s full load %.3f s", n, m.name, samples[-1])
        res["full"][m.name] = samples
    # Every ebpflb mode loads: the manifest file of its family (shared by the TC and socket
    # modes, written alike) and its map sizes (--max-backends), which are the mode's own.
    for m in (ebpf, ebpf6, *((ebpf_sock, ebpf_sock6) if ebpf_sock else ())):
        m.load(services)

    # Nothing on: neither VIP may answer (the node blackholes both Service ranges).
    off = client(loadgen, "conn", WARM_S, 1, [target(probe.vip, probe.port)])
    off6 = client(loadgen, "conn", WARM_S, 1, [target(probe.vip6, probe.port)])
    res["isolation_check"] = {"vip_connections_with_all_modes_off": off["count"],
                              "vip6_connections_with_all_modes_off": off6["count"]}
    if off["count"] or off6["count"]:
        raise RuntimeError(f"scale {n}: a VIP answered with every mode off: {off} / {off6}")

    for rep in range(reps):
        order = mode_list[rep % len(mode_list):] + mode_list[:rep % len(mode_list)]
        for m in order:
            r = slot(m, loadgen, mode_targets(m, probe), node)
            res["traffic"][m.name].append(r)
            log.info("scale %d rep %d %-12s conn %6.0f/s p50 %6.1f p99 %7.1f us | keepalive %6.0f/s"
                     " | client cpu %.2f busy %.2f", n, rep, m.name, r["rate"]["rate"],
                     r["lat"]["p50_us"], r["lat"]["p99_us"], r["keep"]["rate"],
                     r["rate"]["cpu"], r["rate"]["machine_busy"])
    res["ebpflb_full"] = [r["programming"] for r in ebpf.runs]
    res["agent_memory"] = agent_memory(ebpf)
    if ebpf_sock:
        res["ebpflb_sock_full"] = [r["programming"] for r in ebpf_sock.runs]
        res["agent_memory_sock"] = agent_memory(ebpf_sock)
    # The IPv6 modes' agent programs both families of every Service (the dual-stack manifest).
    res["ebpflb6_full"] = [r["programming"] for r in ebpf6.runs]
    res["agent_memory6"] = agent_memory(ebpf6)

    # One endpoint of the probed Service removed and put back, alternately.
    less, full = change_pair(probe)
    others = services[:-1]
    res["change"]["iptables"] = []
    res["change"]["iptables_full_restore"] = []
    for i in range(reps):
        old, new = (full, less) if i % 2 == 0 else (less, full)
        res["change"]["iptables"].append(ipt.restore_noflush(kp.iptables_partial(others + [new], old, new)))
        res["change"]["iptables_full_restore"].append(ipt.load(others + [new]))
    if iptn:
        res["change"]["iptables-nft"] = []
        for i in range(reps):
            old, new = (full, less) if i % 2 == 0 else (less, full)
            res["change"]["iptables-nft"].append(
                iptn.restore_noflush(kp.iptables_partial(others + [new], old, new)))
    res["change"]["nftables"] = []
    for i in range(reps):
        old, new = (full, less) if i % 2 == 0 else (less, full)
        res["change"]["nftables"].append(nft.apply(kp.nft_endpoint_change(old, new)))
    ebpf.runs = []
    ebpf.write_manifest(services)
    ebpf.on()
    try:
        changes = []
        for i in range(reps):
            new = less if i % 2 == 0 else full
            ebpf.write_manifest(others + [new])
            changes.append(ebpf.wait_programmed(i + 2))
        res["change"]["ebpflb"] = changes
        res["agent_memory_after_changes"] = md.memory(ebpf.proc.pid)
    finally:
        ebpf.off()
    return res


def source_description() -> str:
    """Which ebpflb was measured: the commit of the checkout the suite runs from, if any."""
    r = subprocess.run(["git", "-C", str(md.REPO), "describe", "--always", "--dirty"],
                       capture_output=True, text=True)
    return f"git {r.stdout.strip()}" if r.returncode == 0 else f"{md.REPO} (not a git checkout)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="100,1000,10000")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from ebpflb.lab import lab_down

    scales = [int(s) for s in args.scales.split(",")]
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="ebpflb-suite-"))
    results: Dict = {"scales": {}}
    try:
        lab_down(LAB)  # a crashed earlier run
        loadgen = md.build_loadgen(str(tmp))
        for n in scales:
            t0 = time.time()
            try:
                results["scales"][str(n)] = run_scale(n, args.reps, loadgen, tmp)
            finally:
                lab_down(LAB)
            log.info("scale %d done in %.0f s", n, time.time() - t0)
    finally:
        lab_down(LAB)
        from ebpflb.dataplane.cleanup import remove_pins
        from ebpflb.dataplane.config import DataplaneConfig, lab_pin_dir

        remove_pins(DataplaneConfig(pin_dir=lab_pin_dir(LAB)))
        shutil.rmtree(tmp, ignore_errors=True)
    results["meta"] = {
        "machine": common.machine(gcc=subprocess.run(["gcc", "-dumpfullversion"], capture_output=True,
                                                     text=True).stdout.strip()),
        "iptables_default": md.tool_version("iptables", "-V"),
        "iptables_legacy": md.tool_version("iptables-legacy", "-V"),
        "iptables_nft": md.tool_version("iptables-nft", "-V"),
        "nft": md.tool_version("nft", "--version"),
        "source": source_description(),
        "reps": args.reps, "scales": scales, "conc": CONC, "web_pods": N_WEB,
        "durations_s": {"latency": LAT_S, "rate": RATE_S, "keepalive": KEEP_S, "warmup": WARM_S},
        "iptables_nft_max_scale": IPTABLES_NFT_MAX_SCALE,
        "ip_family": "dual",  # the lab; the IPv6 modes' Services are dual-stack
        "wall_s": time.time() - started,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not args.no_write:  # raw results first: a report bug must not lose a 20-minute run
        common.RESULTS.mkdir(exist_ok=True)
        (common.RESULTS / "suite.json").write_text(json.dumps(results, indent=1, default=str))
    from benchmarks.suite import report

    report.publish(results, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
