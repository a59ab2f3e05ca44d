"""Benchmark of the Maglev table build: the Cython build, its pure-Python twin and a plain C reference.

    .venv/bin/python -m benchmarks.maglev            (from the repository root)
    .venv/bin/python benchmarks/maglev.py            (the same, as a script)

One table of m = 65537 slots for N = 10, 100 and 1000 backends named as the control plane names
them (b"10.244.x.y:8080"), built by (a) ebpflb._maglev (Cython), (b) ebpflb._maglev_py (the twin)
and (c) benchmarks/maglev_ref.c, compiled here with `gcc -O2` into a temporary directory and run as
a subprocess that builds the table REPS times and prints each build's nanoseconds and the last
table. All three must give the same table; the run stops if they do not.

The three run interleaved in one process, repetition by repetition, the order rotated each
repetition so drift in machine load hits all alike. A repetition of one build times a batch of
calls one by one (the first of each batch untimed, as a warm-up; Python's GC off as timeit does)
and keeps the batch median; the report gives the median and the min-max over repetitions.
Goals: Cython <= 1.5x C, twin >= 50x Cython, Cython <= 3 ms at N = 100.

Writes benchmarks/results/maglev.json and the `## Maglev table build` section of
docs/benchmarks.md (replaced in place if it is already there; other sections are kept).
"""
import argparse
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make the package importable from the checkout
    sys.path.insert(0, str(REPO))

import Cython  # noqa: E402

from benchmarks import common  # noqa: E402
from ebpflb import _maglev_py  # noqa: E402

C_SOURCE = REPO / "benchmarks" / "maglev_ref.c"
RESULTS = REPO / "benchmarks" / "results" / "maglev.json"
SECTION = "## Maglev table build"
COMMAND = ".venv/bin/python -m benchmarks.maglev"

M = 65537
SIZES = (10, 100, 1000)
BUILDS = ("cython", "twin", "c")
CYTHON_OVER_C_GOAL = 1.5
TWIN_OVER_CYTHON_GOAL = 50.0
CYTHON_N100_MS_GOAL = 3.0


def pod_names(n: int) -> List[bytes]:
    return [f"10.244.{i // 250}.{i % 250 + 1}:8080".encode() for i in range(n)]


def count_probes(names: Sequence[bytes], m: int) -> int:
    """Slots looked at while filling an unweighted table (taken or not): the fill's unit of work.
    Counted once per N, outside the timings, to put the times per probe in the report."""
    pos = [_maglev_py.murmur3_32(n, _maglev_py.SEED_OFFSET) % m for n in names]
    skip = [_maglev_py.murmur3_32(n, _maglev_py.SEED_SKIP) % (m - 1) + 1 for n in names]
    table = [-1] * m
    probes = filled = 0
    while True:
        for i in range(len(names)):
            p = pos[i]
            probes += 1
            while table[p] >= 0:
                p = (p + skip[i]) % m
                probes += 1
            table[p] = i
            pos[i] = (p + skip[i]) % m
            filled += 1
            if filled == m:
                return probes


def machine(gcc: str) -> Dict[str, object]:
    gcc_version = subprocess.run([gcc, "-dumpfullversion"], capture_output=True, text=True,
                                 check=True).stdout.strip()
    return common.machine(cython=Cython.__version__, gcc=gcc_version)


def compile_reference(tmp: Path) -> Tuple[str, Path]:
    gcc = shutil.which("gcc")
    if gcc is None:
        sys.exit("maglev benchmark: gcc not found; it compiles the C reference benchmarks/maglev_ref.c")
    exe = tmp / "maglev_ref"
    subprocess.run([gcc, "-O2", "-Wall", "-o", str(exe), str(C_SOURCE)], check=True)
    return gcc, exe


def time_python(build: Callable[[Sequence[bytes], int], List[int]], names: Sequence[bytes],
                batch: int) -> Tuple[float, List[int]]:
    """Median ns of `batch` timed calls after one untimed call, and the last table."""
    table = build(names, M)
    times = []
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        for _ in range(batch):
            t0 = time.perf_counter_ns()
            table = build(names, M)
            times.append(time.perf_counter_ns() - t0)
    finally:
        if gc_was_on:
            gc.enable()
    return statistics.median(times), table


def time_c(exe: Path, backends_file: Path, batch: int) -> Tuple[float, List[int]]:
    """Median ns of `batch` builds in the C reference after one untimed build, and its table."""
    with backends_file.open("rb") as stdin:
        out = subprocess.run([str(exe), str(M), str(batch + 1)], stdin=stdin, capture_output=True,
                             text=True, check=True).stdout.splitlines()
    times = [int(line.split()[1]) for line in out if line.startswith("ns ")][1:]
    table_line = next(line for line in out if line.startswith("table"))
    return statistics.median(times), [int(v) for v in table_line.split()[1:]]


def run(reps: int, batch_cython: int, batch_twin: int, exe: Path, tmp: Path) -> Dict[int, Dict]:
    from ebpflb import _maglev

    builds = {"cython": _maglev.maglev_table, "twin": _maglev_py.maglev_table}
    names = {n: pod_names(n) for n in SIZES}
    files = {}
    for n in SIZES:
        files[n] = tmp / f"backends-{n}.txt"
        files[n].write_bytes(b"".join(b"1 " + name + b"\n" for name in names[n]))
    samples: Dict[int, Dict[str, List[float]]] = {n: {b: [] for b in BUILDS} for n in SIZES}
    for rep in range(reps):
        for n in SIZES:
            tables = {}
            order = BUILDS[rep % 3:] + BUILDS[:rep % 3]
            for build in order:
                if build == "c":
                    ns, tables[build] = time_c(exe, files[n], batch_cython)
                else:
                    batch = batch_cython if build == "cython" else batch_twin
                    ns, tables[build] = time_python(builds[build], names[n], batch)
                samples[n][build].append(ns / 1e6)
            if not tables["cython"] == tables["twin"] == tables["c"]:
                sys.exit(f"maglev benchmark: the builds disagree on the table for N={n}")
        print(f"repetition {rep + 1}/{reps} done", file=sys.stderr)
    return samples


def summarise(samples: Dict[int, Dict[str, List[float]]]) -> Dict[str, Dict]:
    results = {}
    for n, per_build in samples.items():
        row: Dict[str, object] = {"probes": count_probes(pod_names(n), M)}
        for build, ms in per_build.items():
            row[build] = {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
                          "ns_per_probe": statistics.median(ms) * 1e6 / row["probes"],
                          "samples_ms": ms}
        for name, num, den in (("cython_over_c", "cython", "c"), ("twin_over_cython", "twin", "cython"),
                               ("twin_over_c", "twin", "c")):
            per_rep = [a / b for a, b in zip(per_build[num], per_build[den])]
            row[name] = {"of_medians": row[num]["median_ms"] / row[den]["median_ms"],
                         "per_repetition_min": min(per_rep), "per_repetition_max": max(per_rep)}
        results[str(n)] = row
    return results


def goals(results: Dict[str, Dict]) -> List[Dict[str, object]]:
    worst_cy_c = max(results[str(n)]["cython_over_c"]["of_medians"] for n in SIZES)
    worst_tw_cy = min(results[str(n)]["twin_over_cython"]["of_medians"] for n in SIZES)
    best_tw_c = max(results[str(n)]["twin_over_c"]["of_medians"] for n in SIZES)
    c_probe = [results[str(n)]["c"]["ns_per_probe"] for n in SIZES]
    twin_probe = [results[str(n)]["twin"]["ns_per_probe"] for n in SIZES]
    cy100 = results["100"]["cython"]["median_ms"]
    out = []

    met = worst_cy_c <= CYTHON_OVER_C_GOAL
    why = ("" if met else
           " The Cython call also checks its input in Python (the twin's check_inputs) and builds"
           " a Python list of m ints; the C reference does neither.")
    out.append({"goal": f"Cython / C <= {CYTHON_OVER_C_GOAL}x at every N", "value": worst_cy_c,
                "met": met, "line": f"Cython / C <= {CYTHON_OVER_C_GOAL}x at every N: worst "
                                    f"{worst_cy_c:.2f}x, **{'met' if met else 'missed'}**.{why}"})

    met = worst_tw_cy >= TWIN_OVER_CYTHON_GOAL
    why = ("" if met else
           f" Not a Cython cost: the plain C reference itself is at most {best_tw_c:.0f}x faster"
           f" than the twin, and Cython is within {worst_cy_c:.2f}x of C. The fill walks each"
           " backend's permutation to its next empty slot, about"
           f" {min(results[str(n)]['probes'] for n in SIZES) / M:.0f}-"
           f"{max(results[str(n)]['probes'] for n in SIZES) / M:.0f} probes per slot, and C"
           f" spends {min(c_probe):.1f}-{max(c_probe):.1f} ns per probe against the twin's"
           f" {min(twin_probe):.0f}-{max(twin_probe):.0f}. A probe is a load, a branch on the loaded"
           " value that the predictor often misses (the slot is taken or free at random) and an"
           " add-compare-subtract chain into the next probe; compiled code cannot make that much"
           " cheaper (this VM exposes no hardware counters to split the cost further). Reaching"
           " 50x would take a cheaper fill in every build, not a better compilation of this one.")
    out.append({"goal": f"twin / Cython >= {TWIN_OVER_CYTHON_GOAL:.0f}x at every N",
                "value": worst_tw_cy, "met": met,
                "line": f"twin / Cython >= {TWIN_OVER_CYTHON_GOAL:.0f}x at every N: lowest "
                        f"{worst_tw_cy:.1f}x, **{'met' if met else 'missed'}**.{why}"})

    met = cy100 <= CYTHON_N100_MS_GOAL
    out.append({"goal": f"Cython build at N=100 <= {CYTHON_N100_MS_GOAL} ms", "value": cy100,
                "met": met, "line": f"Cython build at N=100 <= {CYTHON_N100_MS_GOAL:.0f} ms: median "
                                    f"{cy100:.2f} ms, **{'met' if met else 'missed'}**."})
    return out


def fmt(cell: Dict[str, float]) -> str:
    return f"{cell['median_ms']:.2f} ({cell['min_ms']:.2f}–{cell['max_ms']:.2f})"


def section(report: Dict) -> str:
    mach = report["machine"]
    cfg = report["config"]
    lines = [
        SECTION,
        "",
        f"One Maglev table of m = {M} slots built from N backends named as the control plane names"
        " them (`b\"10.244.x.y:8080\"`, all weight 1), by the Cython build (`ebpflb._maglev`), its"
        " pure-Python twin (`ebpflb._maglev_py`) and a plain C reference of the same algorithm"
        " (`benchmarks/maglev_ref.c`, `gcc -O2`, run as a subprocess that times each build with"
        " `CLOCK_MONOTONIC`). The three tables are checked equal in every repetition. Interleaved"
        f" over {cfg['repetitions']} repetitions, the order rotated each time; a repetition is the"
        f" median of a batch of {cfg['batch_cython']} builds (Cython, C) or {cfg['batch_twin']}"
        " (twin), after one untimed build, GC off. Times in ms: median (min–max) over the"
        " repetitions; ratios are of the medians. `probes`: slots looked at during one fill (taken"
        " or not), the fill's unit of work.",
        "",
        "| N | probes | Cython | twin | C | Cython / C | twin / Cython | twin / C |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in SIZES:
        r = report["results"][str(n)]
        lines.append(f"| {n} | {r['probes']:,} | {fmt(r['cython'])} | {fmt(r['twin'])} | {fmt(r['c'])} | "
                     f"{r['cython_over_c']['of_medians']:.2f}x | "
                     f"{r['twin_over_cython']['of_medians']:.1f}x | "
                     f"{r['twin_over_c']['of_medians']:.1f}x |")
    lines += ["", "Goals:", ""]
    lines += [f"- {g['line']}" for g in report["goals"]]
    lines += [
        "",
        "What is timed: a Cython or twin build is one `maglev_table(names, 65537)` call: input"
        " checks, hashing the names, the fill, and the returned Python list of 65537 ints. A C build"
        " hashes, allocates, fills, copies the table out and frees. The C reference mirrors the"
        " Cython fill (compact per-backend arrays, a conditional subtraction instead of a modulo per"
        " probe), so Cython / C measures what Cython adds, not a difference of algorithm.",
        "",
        f"Machine: nproc {mach['nproc']}, {mach['cpu_model']}, kernel {mach['kernel']}, Python"
        f" {mach['python']}, Cython {mach['cython']}, gcc {mach['gcc']}. Measured"
        f" {report['date_utc']}.",
        "",
        "Reproduce (from the repository root, after `.venv/bin/python setup.py -q build_ext"
        f" --inplace`): `{COMMAND}`. Raw samples: `benchmarks/results/maglev.json`.",
        "",
    ]
    return "\n".join(lines)


def write_doc(text: str) -> None:
    common.write_section(SECTION, text)


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=9, help="interleaved repetitions (>= 5)")
    parser.add_argument("--batch-cython", type=int, default=15, help="builds per repetition, Cython and C")
    parser.add_argument("--batch-twin", type=int, default=3, help="builds per repetition, twin")
    parser.add_argument("--no-write", action="store_true", help="print only; leave the JSON and the doc")
    args = parser.parse_args(list(argv) or None)
    if args.repetitions < 5 or args.batch_twin < 1 or args.batch_cython < 1:
        parser.error("need --repetitions >= 5 and batches >= 1")
    try:
        from ebpflb import _maglev  # noqa: F401
    except ImportError:
        sys.exit("maglev benchmark: ebpflb._maglev is not built; run "
                 "`.venv/bin/python setup.py -q build_ext --inplace`")

    with tempfile.TemporaryDirectory(prefix="maglev-bench-") as tmp_name:
        tmp = Path(tmp_name)
        gcc, exe = compile_reference(tmp)
        samples = run(args.repetitions, args.batch_cython, args.batch_twin, exe, tmp)
    results = summarise(samples)
    report = {
        "benchmark": "maglev",
        "command": COMMAND,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(gcc),
        "config": {"m": M, "sizes": list(SIZES), "repetitions": args.repetitions,
                   "batch_cython": args.batch_cython, "batch_c": args.batch_cython,
                   "batch_twin": args.batch_twin, "c_flags": "-O2",
                   "names": "b'10.244.{i // 250}.{i % 250 + 1}:8080', weight 1"},
        "results": results,
    }
    report["goals"] = goals(results)
    text = section(report)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")
        write_doc(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
