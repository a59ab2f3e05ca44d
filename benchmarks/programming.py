"""Control-plane programming time on real maps: one backend change of a Maglev Service with
M = 65537 (plan + apply, and the slot writes it takes), with the apply batched
(BPF_MAP_UPDATE_BATCH, as shipped) and record by record, side by side in one run.

    .venv/bin/python -m benchmarks.programming [--reps 7] [--no-write]   (root)
"""
import argparse
import json
import shutil
import sys
import time
from typing import Dict, List

from benchmarks import common

SECTION = "## Programming one backend change (Maglev, M = 65537)"
M = 65537


class OneByOne:
    """The shipped writer with batching turned off, for comparison."""

    def __init__(self, writer):
        self.writer = writer

    def __getattr__(self, name):
        return getattr(self.writer, name)

    def upsert(self, map_name, keys, values):
        for key, value in zip(keys, values):
            self.writer.upsert(map_name, [key], [value])


def state(n: int, drop: int = -1):
    from ebpflb.model import Backend, DesiredState, Frontend
    from ebpflb.policy import LbPolicy

    fe = Frontend("10.96.240.1", 80, "TCP", "bench/maglev", "http", LbPolicy("maglev", M))
    backends = tuple(Backend(f"10.244.{240 + i // 250}.{i % 250 + 1}", 8080)
                     for i in range(n) if i != drop)
    return DesiredState({fe: backends}, ())


def run(ns: List[int], reps: int) -> Dict:
    from ebpflb.apply import apply_plan, read_snapshot
    from ebpflb.dataplane.bcc_maps import BccMapWriter
    from ebpflb.dataplane.config import DataplaneConfig
    from ebpflb.dataplane.loader import open_maps
    from ebpflb.plan import apply_to, compute_plan

    config = DataplaneConfig(pin_dir="/sys/fs/bpf/ebpflb-bench-programming")
    shutil.rmtree(config.pin_dir, ignore_errors=True)
    results: Dict = {}
    try:
        batched = BccMapWriter(open_maps(config, create=True))
        writers = {"batched": batched, "one_by_one": OneByOne(batched)}
        for n in ns:
            full, less = state(n), state(n, drop=n // 2)
            snap = read_snapshot(batched)
            snap = apply_to(snap, compute_plan(full, snap))
            apply_plan(compute_plan(full, read_snapshot(batched)), batched)
            samples: Dict[str, List[float]] = {"plan": []}
            writes = 0
            for rep in range(reps):
                for name in (writers if rep % 2 == 0 else reversed(list(writers))):
                    for target in (less, full):  # remove one backend, then put it back
                        t0 = time.perf_counter()
                        plan = compute_plan(target, snap)
                        t1 = time.perf_counter()
                        apply_plan(plan, writers[name])
                        t2 = time.perf_counter()
                        snap = apply_to(snap, plan)
                        samples["plan"].append((t1 - t0) * 1e3)
                        samples.setdefault(name, []).append((t2 - t1) * 1e3)
                        writes = max(writes, plan.counts().get("lb4_slots upsert", 0))
            results[n] = {"slot_writes": writes, **{k: common.summary(v) for k, v in samples.items()}}
            apply_plan(compute_plan(state(0), snap), batched)
            snap = read_snapshot(batched)
    finally:
        shutil.rmtree(config.pin_dir, ignore_errors=True)
    return results


def section(results: Dict, meta: Dict) -> str:
    rows = ["| N backends | slots rewritten | plan (ms) | apply batched (ms) | apply one by one (ms) "
            "| batched speed-up |", "|---:|---:|---:|---:|---:|---:|"]
    for n, r in results.items():
        rows.append(f"| {n} | {r['slot_writes']} ({r['slot_writes'] / M:.1%} of M) | "
                    f"{r['plan']['median']:.2f} | {r['batched']['median']:.2f} "
                    f"({r['batched']['min']:.2f}-{r['batched']['max']:.2f}) | "
                    f"{r['one_by_one']['median']:.2f} | "
                    f"{r['one_by_one']['median'] / r['batched']['median']:.1f}x |")
    return f"""{SECTION}

One backend of a Maglev Service (M = {M}) removed, then put back, {meta['reps']} times each way;
plan = `compute_plan` (Maglev table in Cython, diff), apply = the map writes through bcc into
real (pinned, maps-only) BPF maps. Medians, min-max for the batched apply. The two apply modes
alternate in one run.

{chr(10).join(rows)}

Only the slots whose owner changed are written: Maglev moves about 1/N of the table when one of N
backends goes, and the same slots come back when it returns.

Machine: nproc {meta['machine']['nproc']}, {meta['machine']['cpu_model']}, kernel
{meta['machine']['kernel']}. Reproduce: `.venv/bin/python -m benchmarks.programming` (root).
Raw results: `benchmarks/results/programming.json`.
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    results = run([10, 100, 1000], args.reps)
    meta = {"reps": args.reps, "machine": common.machine()}
    text = section(results, meta)
    print(text)
    if not args.no_write:
        common.RESULTS.mkdir(exist_ok=True)
        (common.RESULTS / "programming.json").write_text(
            json.dumps({"meta": meta, "results": results}, indent=2))
        common.write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
