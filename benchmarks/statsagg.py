"""Benchmark of the per-CPU stats aggregation: the Cython build against its pure-Python twin.

    .venv/bin/python -m benchmarks.statsagg            (from the repository root)

One per-CPU map read the size of a big node (100,000 keys x os.cpu_count() CPUs x 3 fields:
packets, bytes, new connections) is folded with `sum_per_cpu`, then turned into rates against a
previous read with `rates`, then scanned with `nonzero_keys`. Both builds run in the same process,
interleaved round by round (the order reversed every other round), so drift in machine load hits
both alike. Each call is timed on its own with the garbage collector off, as timeit does, after one
untimed warm-up call per build. Goals (sum_per_cpu only): Cython >= 20x the twin and < 10 ms.

Writes benchmarks/results/statsagg.json and the `## Per-CPU stats aggregation` section at the end
of docs/benchmarks.md (replaced in place if it is already there; other sections are kept).
"""
import argparse
import gc
import json
import os
import random
import statistics
import sys
import time
from array import array
from pathlib import Path
from typing import Callable, Dict, List

import Cython

from benchmarks import common

from ebpflb import _statsagg_py

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "statsagg.json"
DOC = REPO / "docs" / "benchmarks.md"
SECTION = "## Per-CPU stats aggregation"
COMMAND = ".venv/bin/python -m benchmarks.statsagg"

N_FIELDS = 3
SPEEDUP_GOAL = 20.0
SUM_MS_GOAL = 10.0
OPERATIONS = ("sum_per_cpu", "rates", "nonzero_keys")


def machine() -> Dict[str, object]:
    return common.machine(cython=Cython.__version__)


def make_reads(n_keys: int, n_cpus: int, seed: int = 1):
    """Two consecutive reads of a per-CPU map as the kernel returns them (flat native uint64
    bytes). A quarter of the slots are empty (unused array entries); the second read adds traffic,
    and a few keys went backwards (their entry was recreated) to exercise the reset path."""
    rng = random.Random(seed)
    first: List[int] = []
    second: List[int] = []
    for _ in range(n_keys):
        used = rng.random() >= 0.25
        reset = used and rng.random() < 0.01
        for _ in range(n_cpus):
            pkts = rng.getrandbits(32) if used else 0
            byts = pkts * rng.randint(64, 1500)
            conns = pkts // rng.randint(1, 100) if used else 0
            new_pkts = rng.getrandbits(16) if used else 0
            first += (pkts, byts, conns)
            if reset:
                second += (new_pkts, new_pkts * 100, 0)
            else:
                second += (pkts + new_pkts, byts + new_pkts * 1500, conns + (new_pkts >> 6))
    return array("Q", first).tobytes(), array("Q", second).tobytes()


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    finally:
        gc.enable()


def run(n_keys: int, rounds: int) -> Dict[str, object]:
    try:
        import ebpflb._statsagg as cython_impl
    except ImportError:
        sys.exit("ebpflb._statsagg is not built: .venv/bin/python setup.py -q build_ext --inplace")
    impls = {"cython": cython_impl, "python": _statsagg_py}
    n_cpus = os.cpu_count() or 1
    first, second = make_reads(n_keys, n_cpus)

    # Both builds must agree before their speed means anything.
    prev = cython_impl.sum_per_cpu(first, n_keys, n_cpus, N_FIELDS)
    cur = cython_impl.sum_per_cpu(second, n_keys, n_cpus, N_FIELDS)
    assert _statsagg_py.sum_per_cpu(second, n_keys, n_cpus, N_FIELDS) == cur
    assert _statsagg_py.rates(prev, cur, 10.0) == cython_impl.rates(prev, cur, 10.0)
    assert _statsagg_py.nonzero_keys(cur, N_FIELDS) == cython_impl.nonzero_keys(cur, N_FIELDS)

    calls = {
        name: {
            "sum_per_cpu": lambda m=impl: m.sum_per_cpu(second, n_keys, n_cpus, N_FIELDS),
            "rates": lambda m=impl: m.rates(prev, cur, 10.0),
            "nonzero_keys": lambda m=impl: m.nonzero_keys(cur, N_FIELDS),
        }
        for name, impl in impls.items()
    }
    # What building the returned Python list costs by itself (array -> list in C), measured in the
    # same rounds: the floor under the Cython `rates` and `nonzero_keys`.
    rate_values = array("d", cython_impl.rates(prev, cur, 10.0))
    key_values = array("q", cython_impl.nonzero_keys(cur, N_FIELDS))
    calls["list floor"] = {"rates": rate_values.tolist, "nonzero_keys": key_values.tolist}
    for per_op in calls.values():  # warm-up, untimed
        for fn in per_op.values():
            fn()
    samples: Dict[str, Dict[str, List[float]]] = {
        name: {op: [] for op in per_op} for name, per_op in calls.items()}
    order = list(calls)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            for op, fn in calls[name].items():
                samples[name][op].append(timed(fn))

    results: Dict[str, object] = {}
    for op in OPERATIONS:
        entry: Dict[str, object] = {}
        for name in calls:
            if op not in samples[name]:
                continue
            s = samples[name][op]
            entry[name] = {"median_ms": statistics.median(s), "min_ms": min(s), "max_ms": max(s),
                           "samples_ms": s}
        entry["speedup"] = entry["python"]["median_ms"] / entry["cython"]["median_ms"]
        results[op] = entry
    summ = results["sum_per_cpu"]
    goals = {
        "sum_per_cpu_speedup": {"goal": f">= {SPEEDUP_GOAL:g}x", "value": summ["speedup"],
                                "met": summ["speedup"] >= SPEEDUP_GOAL},
        "sum_per_cpu_cython_ms": {"goal": f"< {SUM_MS_GOAL:g} ms",
                                  "value": summ["cython"]["median_ms"],
                                  "met": summ["cython"]["median_ms"] < SUM_MS_GOAL},
    }
    return {
        "benchmark": "statsagg",
        "command": COMMAND,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "shape": {"n_keys": n_keys, "n_cpus": n_cpus, "n_fields": N_FIELDS,
                  "input_bytes": len(second), "input": "bytes (as read from the kernel)"},
        "rounds": rounds,
        "results": results,
        "goals": goals,
    }


def _ms(v: float) -> str:
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def section(data: Dict[str, object]) -> str:
    m, shape, res, goals = data["machine"], data["shape"], data["results"], data["goals"]
    rows = []
    for op in OPERATIONS:
        e = res[op]
        c, p = e["cython"], e["python"]
        rows.append(f"| `{op}` | {_ms(c['median_ms'])} | {_ms(c['min_ms'])}–{_ms(c['max_ms'])} "
                    f"| {_ms(p['median_ms'])} | {_ms(p['min_ms'])}–{_ms(p['max_ms'])} "
                    f"| {e['speedup']:.1f}x |")
    speed, fast = goals["sum_per_cpu_speedup"], goals["sum_per_cpu_cython_ms"]

    def verdict(g):
        return "**met**" if g["met"] else "**MISSED**"

    rate, keys = res["rates"], res["nonzero_keys"]
    lines = [
        SECTION,
        "",
        f"One per-CPU map read folded into per-key totals (`sum_per_cpu`), turned into per-second "
        f"rates against the previous read (`rates`), and scanned for non-empty keys "
        f"(`nonzero_keys`): {shape['n_keys']:,} keys x {shape['n_cpus']} CPUs (`os.cpu_count()`) "
        f"x {shape['n_fields']} fields, a {shape['input_bytes'] / 1e6:.1f} MB `bytes` buffer as "
        f"the kernel returns it, a quarter of the keys empty. Cython build against its "
        f"pure-Python twin in one process, interleaved over {data['rounds']} rounds (the order "
        f"reversed every other round), one untimed warm-up call each, GC off while timing. Times "
        f"in ms: "
        f"median and min–max over the {data['rounds']} runs of each build.",
        "",
        "| operation | Cython median | Cython min–max | twin median | twin min–max | speedup |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Goals (for `sum_per_cpu`, the call on every scrape):",
        "",
        f"- Cython at least {SPEEDUP_GOAL:g}x faster than the twin: {speed['value']:.1f}x, "
        f"{verdict(speed)}.",
        f"- Cython under {SUM_MS_GOAL:g} ms: {fast['value']:.2f} ms, {verdict(fast)}.",
        f"- `rates` and `nonzero_keys` have no goal. Both return Python lists; building the list "
        f"alone (`array.tolist()` on the same result, timed in the same rounds) takes "
        f"{_ms(rate['list floor']['median_ms'])} ms of the Cython `rates` "
        f"{_ms(rate['cython']['median_ms'])} ms ({shape['n_keys'] * shape['n_fields']:,} float "
        f"objects) and {_ms(keys['list floor']['median_ms'])} ms of the Cython `nonzero_keys` "
        f"{_ms(keys['cython']['median_ms'])} ms, which bounds their speedup.",
        "",
        f"Machine: nproc {m['nproc']}, {m['cpu_model']}, kernel {m['kernel']}, "
        f"Python {m['python']}, Cython {m['cython']}. Measured {data['date_utc']}.",
        "",
        f"Reproduce (from the repository root, after `.venv/bin/python setup.py -q build_ext "
        f"--inplace`): `{data['command']}`. Raw samples: `benchmarks/results/statsagg.json`.",
        "",
    ]
    return "\n".join(lines)


def write_doc(text: str) -> None:
    common.write_section(SECTION, text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=9, help="timed runs of each build (>= 5)")
    parser.add_argument("--no-write", action="store_true",
                        help="print only; leave the JSON and docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    if args.rounds < 5:
        parser.error("--rounds must be >= 5")
    data = run(args.keys, args.rounds)
    text = section(data)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")
        write_doc(text)
        print(f"wrote {RESULTS.relative_to(REPO)} and {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
