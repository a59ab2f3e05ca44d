"""The suite's report: medians, spread and ratios from the raw results of benchmarks/suite/run.py,
judged against the goals of issue 8 (and IPv6 beside IPv4, issue 16); one section of
docs/benchmarks.md per measure (through common.write_section, other sections untouched), PNG
plots in docs/plots/, and the raw results in benchmarks/results/suite.json.

    .venv/bin/python -m benchmarks.suite.report   re-renders from benchmarks/results/suite.json
"""
from __future__ import annotations

import json
import statistics
import sys
from typing import Dict, List, Optional, Tuple

from benchmarks import common

RESULTS_FILE = "suite.json"
PLOTS = common.DOC.parent / "plots"
# Result keys of the modes (benchmarks/suite/modes.py). "ebpflb" is ebpflb TC (--socket-lb off),
# the key the agent had in results from before the socket hooks, so old and new runs compare;
# results without "ebpflb-sock" render with its figures and goals as n/a. The IPv6 modes
# (suffix "6", issue 16) likewise: results from before them show their figures as n/a.
MODES = ["direct", "direct6", "ebpflb", "ebpflb6", "ebpflb-sock", "ebpflb-sock6", "iptables",
         "iptables-nft", "nftables"]
LABEL = {"direct": "direct to pod (limit)", "ebpflb": "ebpflb TC (agent, --socket-lb off)",
         "ebpflb-sock": "ebpflb socket LB (agent, --socket-lb all)",
         "direct6": "direct to pod, IPv6", "ebpflb6": "ebpflb TC, IPv6 cluster IP",
         "ebpflb-sock6": "ebpflb socket LB, IPv6 cluster IP",
         "iptables": "iptables (legacy)", "iptables-nft": "iptables (nft backend)",
         "nftables": "nftables (kube-proxy nft mode)"}
SOCK = "ebpflb-sock"
# Each IPv6 mode and the IPv4 mode it is the twin of.
V6_PAIRS = [("direct", "direct6"), ("ebpflb", "ebpflb6"), (SOCK, "ebpflb-sock6")]
# Goals of the socket LB issue, at the top scale, ratios of medians of the same run.
SOCK_GOALS = {
    "sock_rate_vs_nftables": ("conn_rate", "nftables", ">=", 1.0,
                              "new connections/s at least 1.0x nftables"),
    "sock_rate_vs_direct": ("conn_rate", "direct", ">=", 0.97,
                            "new connections/s at least 0.97x direct"),
    "sock_p50_vs_direct": ("lat_p50", "direct", "<=", 1.03,
                           "connect p50 within 3% of direct (at most 1.03x)"),
    "sock_keep_vs_direct": ("keep_rate", "direct", ">=", 0.97,
                            "requests/s on persistent connections at least 0.97x direct"),
}

S_CONN = "## Suite: new connections through a ClusterIP"
S_KEEP = "## Suite: requests on persistent connections"
S_PKT = "## Suite: data path per packet (BPF_PROG_TEST_RUN)"
S_PROG = "## Suite: programming time"
S_MEM = "## Suite: agent and BPF map memory"
S_V6 = "## Suite: IPv6 beside IPv4"


def _med(xs: List[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _stat(runs: List[Dict], kind: str, key: str) -> Dict[str, float]:
    return common.summary([r[kind][key] for r in runs]) if runs else {}


def _cell(s: Dict[str, float], fmt: str = "{:.0f}") -> str:
    if not s:
        return "n/a"
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}–{fmt.format(s['max'])})"


def _verdict(ok: Optional[bool]) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def traffic_table(results: Dict) -> Tuple[Dict, Dict]:
    """{scale: {mode: {metric: summary}}} for every traffic metric."""
    out: Dict = {}
    for scale, r in results["scales"].items():
        out[int(scale)] = {}
        for mode, runs in r["traffic"].items():
            out[int(scale)][mode] = {
                "conn_rate": _stat(runs, "rate", "rate"),
                "conn_rate_p99": _stat(runs, "rate", "p99_us"),
                "lat_p50": _stat(runs, "lat", "p50_us"),
                "lat_p99": _stat(runs, "lat", "p99_us"),
                "keep_rate": _stat(runs, "keep", "rate"),
                "keep_p50": _stat(runs, "keep", "p50_us"),
                "keep_p99": _stat(runs, "keep", "p99_us"),
                "client_cpu": _stat(runs, "rate", "cpu"),
                "busy": _stat(runs, "rate", "machine_busy"),
                "errors": sum(x[k]["errors"] for x in runs for k in ("lat", "rate", "keep")),
            }
    return out, {}


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0 or a != a or b != b:
        return None
    return a / b


def _m(t: Dict, scale: int, mode: str, metric: str) -> Optional[float]:
    s = t.get(scale, {}).get(mode, {}).get(metric)
    return s["median"] if s else None


def sock_goals(t: Dict, scale: int) -> Dict[str, Dict]:
    """The socket LB goals at one scale: ebpflb-sock's median over the other mode's median."""
    g: Dict[str, Dict] = {}
    for key, (metric, other, op, goal, _text) in SOCK_GOALS.items():
        v = _ratio(_m(t, scale, SOCK, metric), _m(t, scale, other, metric))
        ok = None if v is None else (v >= goal if op == ">=" else v <= goal)
        g[key] = {"value": v, "goal": goal, "op": op, "services": scale, "ok": ok}
    return g


def sock_goal_lines(g: Dict[str, Dict], keys: List[str]) -> str:
    """The goals' bullet lines, as the other goals are written."""
    out = []
    for key in keys:
        x = g[key]
        v = "n/a" if x["value"] is None else f"{x['value']:.3f}x"
        out.append(f"- At {x['services']:,} Services, ebpflb socket LB {SOCK_GOALS[key][4]}: "
                   f"{v}, {_verdict(x['ok'])}.")
    return "\n".join(out)


def sock_ratio_rows(t: Dict, scales: List[int]) -> List[str]:
    """ebpflb socket LB against direct, nftables and ebpflb TC, per scale (medians, same run)."""
    rows = ["| Services | sock / direct conn/s | sock / nftables conn/s | sock / TC conn/s | "
            "sock p50 / direct p50 | sock p50 − direct p50 (µs) | sock / direct req/s (persistent) |",
            "|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:.3f}x"

    for n in scales:
        p50, p50_direct = _m(t, n, SOCK, "lat_p50"), _m(t, n, "direct", "lat_p50")
        delta = "n/a" if p50 is None or p50_direct is None else f"{p50 - p50_direct:+.1f}"
        rows.append(
            f"| {n:,} | {f(_ratio(_m(t, n, SOCK, 'conn_rate'), _m(t, n, 'direct', 'conn_rate')))} | "
            f"{f(_ratio(_m(t, n, SOCK, 'conn_rate'), _m(t, n, 'nftables', 'conn_rate')))} | "
            f"{f(_ratio(_m(t, n, SOCK, 'conn_rate'), _m(t, n, 'ebpflb', 'conn_rate')))} | "
            f"{f(_ratio(p50, p50_direct))} | {delta} | "
            f"{f(_ratio(_m(t, n, SOCK, 'keep_rate'), _m(t, n, 'direct', 'keep_rate')))} |")
    return rows


def verdict_rows(results: Dict) -> List[str]:
    """Which path translated each ebpflb mode's connections: the agent's verdict counters at
    the end of each slot (medians over the slots), read with `ebpflb stats --verdicts`."""
    rows = ["| Services | mode | socket_lb (connect() translated by the hooks: socket/new) | "
            "dnat_new (flows translated by TC: from_pod/new) | pass (packets TC left alone: "
            "from_pod/pass) |",
            "|---:|---|---:|---:|---:|"]
    for scale in sorted(results["scales"], key=int):
        for mode in ("ebpflb", SOCK, "ebpflb6", "ebpflb-sock6"):
            runs = [r["verdicts"] for r in results["scales"][scale]["traffic"].get(mode, [])
                    if "verdicts" in r]
            if runs:
                rows.append(f"| {int(scale):,} | {mode} | "
                            + " | ".join(f"{_med([v[k] for v in runs]):,.0f}"
                                         for k in ("socket_lb", "dnat_new", "pass")) + " |")
    return rows if len(rows) > 2 else []


def warmup_retries(results: Dict) -> str:
    """The slots whose warm-up made no connection and was retried (benchmarks/suite/run.py
    slot), by scale and mode; results from before the retries count none."""
    seen = [f"{int(scale):,} {mode}: {n}"
            for scale in sorted(results["scales"], key=int)
            for mode, runs in results["scales"][scale]["traffic"].items()
            for n in [sum(r.get("warmup_retries", 0) for r in runs)] if n]
    return ", ".join(seen) if seen else "none"


def conn_section(results: Dict, t: Dict) -> Tuple[str, Dict]:
    meta = results["meta"]
    scales = sorted(t)
    top = scales[-1]
    rows = ["| Services | mode | new conn/s | connect p50 (µs) | connect p99 (µs) | "
            "client CPU at rate | machine busy | errors |",
            "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for n in scales:
        for mode in MODES:
            if mode not in t[n]:
                continue
            x = t[n][mode]
            rows.append(f"| {n:,} | {mode} | {_cell(x['conn_rate'])} | {_cell(x['lat_p50'], '{:.1f}')} | "
                        f"{_cell(x['lat_p99'], '{:.1f}')} | {x['client_cpu']['median']:.0%} | "
                        f"{x['busy']['median']:.0%} | {x['errors']} |")
    ratio_rows = ["| Services | ebpflb TC / iptables conn/s | ebpflb TC / nftables conn/s | "
                  "iptables p99 / ebpflb TC p99 | nftables p99 / ebpflb TC p99 | "
                  "ebpflb TC p50 / direct p50 | ebpflb TC p99 / direct p99 |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:.2f}x"

    for n in scales:
        ratio_rows.append(
            f"| {n:,} | {f(_ratio(_m(t, n, 'ebpflb', 'conn_rate'), _m(t, n, 'iptables', 'conn_rate')))} | "
            f"{f(_ratio(_m(t, n, 'ebpflb', 'conn_rate'), _m(t, n, 'nftables', 'conn_rate')))} | "
            f"{f(_ratio(_m(t, n, 'iptables', 'lat_p99'), _m(t, n, 'ebpflb', 'lat_p99')))} | "
            f"{f(_ratio(_m(t, n, 'nftables', 'lat_p99'), _m(t, n, 'ebpflb', 'lat_p99')))} | "
            f"{f(_ratio(_m(t, n, 'ebpflb', 'lat_p50'), _m(t, n, 'direct', 'lat_p50')))} | "
            f"{f(_ratio(_m(t, n, 'ebpflb', 'lat_p99'), _m(t, n, 'direct', 'lat_p99')))} |")
    g: Dict[str, Dict] = {}
    r_ipt = _ratio(_m(t, top, "ebpflb", "conn_rate"), _m(t, top, "iptables", "conn_rate"))
    r_nft = _ratio(_m(t, top, "ebpflb", "conn_rate"), _m(t, top, "nftables", "conn_rate"))
    r_p99 = _ratio(_m(t, top, "iptables", "lat_p99"), _m(t, top, "ebpflb", "lat_p99"))
    g["rate_vs_iptables"] = {"value": r_ipt, "goal": 1.5, "ok": None if r_ipt is None else r_ipt >= 1.5}
    g["rate_vs_nftables"] = {"value": r_nft, "goal": 1.0, "ok": None if r_nft is None else r_nft >= 1.0}
    g["p99_vs_iptables"] = {"value": r_p99, "goal": 5.0, "ok": None if r_p99 is None else r_p99 >= 5.0}
    lo, hi = scales[0], top
    flat = _ratio(_m(t, hi, "ebpflb", "lat_p50"), _m(t, lo, "ebpflb", "lat_p50"))
    g["flat"] = {"value": flat, "ok": None if flat is None else abs(flat - 1) <= 0.10}
    near = {n: _ratio(_m(t, n, "ebpflb", "lat_p50"), _m(t, n, "direct", "lat_p50")) for n in scales}
    worst = max((v for v in near.values() if v is not None), default=None)
    g["near_direct"] = {"value": worst, "per_scale": near,
                        "ok": None if worst is None else worst <= 1.10}
    g.update(sock_goals(t, top))
    sock_deltas = {n: (_m(t, n, SOCK, "lat_p50"), _m(t, n, "direct", "lat_p50")) for n in scales}
    sock_delta_text = " / ".join("n/a" if a is None or b is None else f"{a - b:+.1f} µs"
                                 for a, b in sock_deltas.values())
    vrows = verdict_rows(results)
    verdict_block = ("\nWhich path translated (agent verdict counters at the end of a slot, medians "
                     "over the slots):\n\n" + "\n".join(vrows) + "\n") if vrows else ""
    busy = max(x["busy"]["median"] for n in scales for x in t[n].values())
    deltas = [(_m(t, n, "ebpflb", "lat_p50") or 0) - (_m(t, n, "direct", "lat_p50") or 0) for n in scales]
    cpu_direct = t[top]["direct"]["client_cpu"]["median"] if "direct" in t[top] else None

    def gv(key: str, fmt: str) -> str:
        v = g[key]["value"]
        return "n/a" if v is None else fmt.format(v)

    v6_note = ("" if meta.get("ip_family") != "dual" else
               "\nThe lab runs dual-stack and the IPv6 twins of direct, ebpflb and ebpflb-sock "
               "(**direct6**, **ebpflb6**, **ebpflb-sock6**, to the pods' IPv6 addresses and the "
               "IPv6 cluster IP) take their turns in the same repetitions: their rows are below, "
               "their ratios in [IPv6 beside IPv4](#suite-ipv6-beside-ipv4).")
    text = f"""{S_CONN}

One run, one machine, modes side by side: **direct** (the client connects to the pod IPs: no load
balancer, the limit), **ebpflb** (ebpflb TC: the real agent, `python -m ebpflb.cli agent --netns ...
--on-exit remove --socket-lb off`, started for each measurement; its TC programs on the pod veths
translate every packet), **ebpflb-sock** (ebpflb socket LB: the same agent with `--socket-lb all
--cgroup <lab node-0 cgroup>`; its cgroup hooks send the client's `connect()` to a backend, so the
packets carry the pod address from the first one and the TC programs let them pass), **iptables**
(kube-proxy's iptables-mode nat table loaded
with `iptables-legacy-restore`), **iptables-nft** (the same rules through the nft backend, only up
to {meta['iptables_nft_max_scale']:,} Services: ENVIRONMENT.md measured 829 s to load 10k Services
that way, so it is skipped at 10k) and **nftables** (kube-proxy's nftables-mode table, verdict maps,
loaded with `nft -f`). Rule sets come from `ebpflb/lab/kubeproxy_rules.py` (shape checked by
`benchmarks/tests/test_kubeproxy_rules.py`). `iptables -V` here: `{meta['iptables_default']}` (the
default `iptables` is the nft backend; the iptables mode above uses `{meta['iptables_legacy']}`).{v6_note}

Lab: the ebpflb lab (Calico-style node namespace, pods behind veths), {meta['web_pods']} web pods
each running the epoll server of `benchmarks/loadgen.c`, the client pod running its load client.
Every Service has 4 endpoints among the web pods; the probed Service is the last one in iptables
order (`KUBE-SERVICES` is walked to its end for every new connection). The rule sets stay loaded
for a scale; a mode is switched on by its hook alone (the PREROUTING jump, the nat-prerouting base
chain, the agent's TC programs, and its cgroup hooks for ebpflb-sock) and off again after its slot,
so only one mode translates at a time; node conntrack is flushed before each slot; with every mode
off the VIP is checked not to answer. The load client of every mode runs in the lab node-0 cgroup
(checked), the one the socket hooks attach to, so modes differ only in what they attach; each
ebpflb slot ends with the agent's verdict counters, checked to show the path the mode is named
for (table below). Each slot: a {meta['durations_s']['warmup']} s warm-up, then **latency** (one connection
at a time for {meta['durations_s']['latency']} s: connect, `GET /` with `Connection: close`,
response, close; p50/p99 of that cycle) and **rate** ({meta['conc']} connections in flight for
{meta['durations_s']['rate']} s). {meta['reps']} repetitions, the mode order rotated each time;
medians with min–max over the repetitions. Warm-ups that made no connection and were retried
(1.5 s, at most twice, before a slot fails): {warmup_retries(results)}.

{chr(10).join(rows)}

Ratios (medians, same run):

{chr(10).join(ratio_rows)}

ebpflb socket LB against direct, nftables and ebpflb TC (medians, same run):

{chr(10).join(sock_ratio_rows(t, scales))}
{verdict_block}
![connect latency vs scale](plots/suite_connect_latency.png)
![rates vs scale](plots/suite_rates.png)

Goals (issue 8):

- At {top:,} Services, ebpflb new-connection rate at least 1.5x iptables: {gv('rate_vs_iptables', '{:.2f}x')}, {_verdict(g['rate_vs_iptables']['ok'])}.
- At {top:,} Services, at least 1.0x nftables: {gv('rate_vs_nftables', '{:.2f}x')}, {_verdict(g['rate_vs_nftables']['ok'])}.
- At {top:,} Services, p99 connect latency at least 5x lower than iptables: {gv('p99_vs_iptables', '{:.2f}x')}, {_verdict(g['p99_vs_iptables']['ok'])}.
- ebpflb connect latency (p50) flat within 10% from {lo:,} to {hi:,} Services: {gv('flat', '{:.3f}x')}, {_verdict(g['flat']['ok'])}.
- ebpflb connect latency (p50) within 10% of direct at every scale: worst {gv('near_direct', '{:.3f}x')}, {_verdict(g['near_direct']['ok'])}.

The five goals above are ebpflb TC's ("ebpflb"). Goals of socket load balancing (ebpflb-sock), same run:

{sock_goal_lines(g, ['sock_rate_vs_nftables', 'sock_rate_vs_direct', 'sock_p50_vs_direct'])}
- (persistent requests/s: see [the next section](#suite-requests-on-persistent-connections)).

Why the misses, from the same figures:

- **Socket LB translates once per connection, at `connect()`**: its connect cycle differs from
  direct's by {sock_delta_text} (at {' / '.join(f'{n:,}' for n in scales)} Services): one hook run
  (a frontend lookup, a slot, the socket's record: [its cost](#socket-lb-cost-per-connect)) per
  connection, and on each packet the TC programs' pass path (measure 3), which direct's packets
  do not take (no agent runs in that mode).
- **Against direct (and nftables at high rate), ebpflb TC pays per packet.** Its connect cycle is
  {' / '.join(f"{d:+.1f} µs" for d in deltas)} (at {' / '.join(f'{n:,}' for n in scales)} Services) longer
  than direct's {t[top]['direct']['lat_p50']['median']:.1f} µs. A cycle is about 8 packets, each crossing two
  pod veths, so about 16 runs of the TC programs (16–99 ns above a bare program each, by path,
  measure 3) plus one new-flow decision with two conntrack inserts (~0.9 µs): roughly 1.5–2.5 µs;
  the rest is the TC hook path itself (clsact on both directions of every pod veth, an skb handed
  to a program), which exists only in this mode. On a {t[top]['direct']['lat_p50']['median']:.0f} µs
  veth-only cycle 10% is {t[top]['direct']['lat_p50']['median'] / 10:.1f} µs, so the program cost alone nearly fills the budget; with real NICs
  and real applications the cycle is longer and the share smaller. nftables and iptables pay only
  on the first packet (a conntrack entry carries the rest), which is why nftables keeps up with
  ebpflb at {top:,} Services (its verdict map is a hash lookup too), and why, with both vCPUs
  saturated in the rate runs, ebpflb's per-packet cost shows as rate: ebpflb / nftables
  {f(_ratio(_m(t, top, 'ebpflb', 'conn_rate'), _m(t, top, 'nftables', 'conn_rate')))} at {top:,}, with
  overlapping spreads ({_cell(t[top]['ebpflb']['conn_rate'])} against {_cell(t[top]['nftables']['conn_rate']) if 'nftables' in t[top] else 'n/a'}).
- **p99 against iptables at {top:,}:** p99 of a 1 s single-connection run is set by this shared VM's
  scheduling stalls (ebpflb p99 over the repetitions: {_cell(t[top]['ebpflb']['lat_p99'], '{:.0f}')} µs),
  not by the data path; at the median the gap is {f(_ratio(_m(t, top, 'iptables', 'lat_p50'), _m(t, top, 'ebpflb', 'lat_p50')))}
  (iptables walks {top:,} `KUBE-SERVICES` rules for the probed Service's first packet).

Is the client the bottleneck? The load client is one thread (epoll). Its CPU share in the rate runs
was at most {max(x['client_cpu']['median'] for n in scales for x in t[n].values()):.0%} of a CPU (direct at {top:,}:
{'n/a' if cpu_direct is None else f'{cpu_direct:.0%}'}), and that share includes kernel work done in its
context: a packet sent over a veth is forwarded, NATed and delivered in the sender's softirq, which
is why iptables at {top:,} Services shows the highest client share at the lowest rate. The whole
machine (2 vCPUs) was at most {busy:.0%} busy: client, servers and the kernel's forwarding share
the same two CPUs, so the rates are what this VM does end to end; the noisy neighbours of this
shared VM move whole repetitions (see the min–max, e.g. every mode at 1,000), so compare modes
within a scale, by ratio.
"""
    return text, g


def v6_ratios(t: Dict, scale: int) -> Dict[str, Optional[float]]:
    """The IPv6 measure's ratios at one scale (medians of the same run; None where a mode is
    missing): each IPv6 mode over its IPv4 twin, and ebpflb over direct within each family."""
    def r(a: str, b: str, metric: str) -> Optional[float]:
        return _ratio(_m(t, scale, a, metric), _m(t, scale, b, metric))

    return {"ebpflb6_vs_ebpflb_rate": r("ebpflb6", "ebpflb", "conn_rate"),
            "direct6_vs_direct_rate": r("direct6", "direct", "conn_rate"),
            "ebpflb6_vs_direct6_rate": r("ebpflb6", "direct6", "conn_rate"),
            "ebpflb_vs_direct_rate": r("ebpflb", "direct", "conn_rate"),
            "sock6_vs_sock_rate": r("ebpflb-sock6", SOCK, "conn_rate"),
            "sock6_vs_direct6_rate": r("ebpflb-sock6", "direct6", "conn_rate"),
            "ebpflb6_vs_ebpflb_p50": r("ebpflb6", "ebpflb", "lat_p50"),
            "direct6_vs_direct_p50": r("direct6", "direct", "lat_p50"),
            "ebpflb6_vs_direct6_p50": r("ebpflb6", "direct6", "lat_p50"),
            "ebpflb_vs_direct_p50": r("ebpflb", "direct", "lat_p50"),
            "sock6_vs_sock_p50": r("ebpflb-sock6", SOCK, "lat_p50"),
            "ebpflb6_vs_ebpflb_keep": r("ebpflb6", "ebpflb", "keep_rate")}


def v6_section(results: Dict, t: Dict) -> Tuple[str, Dict]:
    """IPv6 beside IPv4 (issue 16): the IPv6 twins of direct, ebpflb TC and ebpflb socket LB,
    measured in the same repetitions as the IPv4 modes, with their ratios at every scale.
    Results from before the IPv6 modes render with n/a."""
    meta = results["meta"]
    scales = sorted(t)
    measured = any(v6 in t[n] for n in scales for _, v6 in V6_PAIRS)

    def f(v: Optional[float], fmt: str = "{:.3f}x") -> str:
        return "n/a" if v is None else fmt.format(v)

    def c(n: int, mode: str, metric: str, fmt: str = "{:.0f}") -> str:
        return _cell(t[n].get(mode, {}).get(metric, {}), fmt)

    rows = ["| Services | IPv4 mode | IPv4 new conn/s | IPv6 new conn/s | IPv6 / IPv4 | "
            "IPv4 p50 (µs) | IPv6 p50 (µs) | IPv6 / IPv4 p50 | IPv4 p99 (µs) | IPv6 p99 (µs) | "
            "IPv6 req/s (persistent) / IPv4 | errors IPv6 |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in scales:
        for v4, v6 in V6_PAIRS:
            if v4 not in t[n] and v6 not in t[n]:
                continue
            errs = t[n][v6]["errors"] if v6 in t[n] else "n/a"
            rows.append(
                f"| {n:,} | {v4} / {v6} | {c(n, v4, 'conn_rate')} | {c(n, v6, 'conn_rate')} | "
                f"{f(_ratio(_m(t, n, v6, 'conn_rate'), _m(t, n, v4, 'conn_rate')))} | "
                f"{c(n, v4, 'lat_p50', '{:.1f}')} | {c(n, v6, 'lat_p50', '{:.1f}')} | "
                f"{f(_ratio(_m(t, n, v6, 'lat_p50'), _m(t, n, v4, 'lat_p50')))} | "
                f"{c(n, v4, 'lat_p99', '{:.1f}')} | {c(n, v6, 'lat_p99', '{:.1f}')} | "
                f"{f(_ratio(_m(t, n, v6, 'keep_rate'), _m(t, n, v4, 'keep_rate')))} | {errs} |")
    ratios = {n: v6_ratios(t, n) for n in scales}
    rrows = ["| Services | ebpflb6 / ebpflb conn/s | direct6 / direct conn/s | "
             "ebpflb6 / direct6 conn/s | (IPv4: ebpflb / direct conn/s) | ebpflb-sock6 / ebpflb-sock "
             "conn/s | ebpflb6 / ebpflb p50 | direct6 / direct p50 | ebpflb6 / direct6 p50 | "
             "(IPv4: ebpflb / direct p50) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in scales:
        x = ratios[n]
        rrows.append(f"| {n:,} | {f(x['ebpflb6_vs_ebpflb_rate'])} | {f(x['direct6_vs_direct_rate'])} | "
                     f"{f(x['ebpflb6_vs_direct6_rate'])} | {f(x['ebpflb_vs_direct_rate'])} | "
                     f"{f(x['sock6_vs_sock_rate'])} | {f(x['ebpflb6_vs_ebpflb_p50'])} | "
                     f"{f(x['direct6_vs_direct_p50'])} | {f(x['ebpflb6_vs_direct6_p50'])} | "
                     f"{f(x['ebpflb_vs_direct_p50'])} |")
    # The dual-stack agent's own figures: both families of every Service programmed.
    prow = ["| Services | agent | frontends | map writes | first sync (ms) | start to ready (s) | "
            "RSS (MiB) | BPF map memlock (MiB) |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for n in scales:
        sc = results["scales"][str(n)]
        for label, full_key, mem_key in (("IPv4 manifest (ebpflb)", "ebpflb_full", "agent_memory"),
                                         ("dual-stack manifest (ebpflb6)", "ebpflb6_full",
                                          "agent_memory6")):
            full = [p for p in sc.get(full_key, []) if p]
            mem = sc.get(mem_key, [])
            if not full or not mem:
                continue
            prow.append(f"| {n:,} | {label} | {full[0]['frontends']:,} | {full[0]['writes']:,} | "
                        f"{_cell(common.summary([p['ms'] for p in full]), '{:.0f}')} | "
                        f"{_med([a['startup_s'] for a in mem]):.1f} | "
                        f"{_med([a['rss_bytes'] / 2**20 for a in mem]):.0f} | "
                        f"{_med([a['map_memlock_bytes'] / 2**20 for a in mem]):.1f} |")
    g = {"ipv6": {str(n): ratios[n] for n in scales}}
    if not measured:
        text = f"""{S_V6}

Not measured in this run (the results predate the suite's IPv6 modes; `.venv/bin/python -m
benchmarks.suite` measures them). Ratios: n/a.
"""
        return text, g
    top = scales[-1]
    xt = ratios[top]
    probe = results["scales"][str(top)]["probe"]

    def overlap(a: str, b: str) -> str:
        """The scales where the new-connection min–max ranges of modes a and b overlap."""
        hit = [f"{n:,}" for n in scales if a in t[n] and b in t[n]
               and t[n][a]["conn_rate"]["min"] <= t[n][b]["conn_rate"]["max"]
               and t[n][b]["conn_rate"]["min"] <= t[n][a]["conn_rate"]["max"]]
        return (" / ".join(hit) + " Services") if hit else "no scale"

    text = f"""{S_V6}

The new-connection measure over IPv6, beside IPv4, in the same run (issue 16). The lab runs
dual-stack (every pod has an IPv6 address too, fd00:10:244:k::h, beside its IPv4 one; the node
blackholes the IPv6 Service range fd00:10:96::/112 as it does 10.96.0.0/16), and every generated
Service is dual-stack (`ipFamilyPolicy: RequireDualStack`, `ipFamilies: [IPv4, IPv6]`, an IPv6
cluster IP in fd00:10:96::/112, numbered as the lab numbers the twins of its IPv4 ones, and an
IPv6 EndpointSlice of the same 4 pods), so the probed Service at {top:,} is `{probe['vip']}` and
`{probe.get('vip6')}`. Three IPv6 modes take their turns beside the IPv4 ones, each right after its
IPv4 twin in the rotated order: **direct6** (the client connects to the pods' IPv6 addresses),
**ebpflb6** (ebpflb TC, the client connecting to the IPv6 cluster IP: the IPv6 TC programs on the
pod veths translate every packet) and **ebpflb-sock6** (ebpflb socket LB: the IPv6 cgroup hooks
translate the client's `connect()`). The IPv6 modes' agent reads the dual-stack manifest (both
families of every Service: twice the frontends and backends of the IPv4 modes' agent, which reads
the IPv4 halves only, as in runs before the IPv6 measure; with more than 65,536 backend ids, one
space for both families, it gets `--max-backends` raised to the next power of two). kube-proxy's
iptables and nftables shapes stay IPv4 only: kube-proxy serves IPv6 with a second proxier
(ip6tables, `ip6` nftables family), not measured here. Same client (`benchmarks/loadgen.c`, which
takes `[address]:port` targets), same slot ({meta['durations_s']['latency']} s one connection at a
time for the latencies, {meta['conc']} in flight for {meta['durations_s']['rate']} s for the rate,
{meta['durations_s']['keepalive']} s persistent), {meta['reps']} repetitions; medians with min–max.

{chr(10).join(rows)}

Ratios (medians, same run):

{chr(10).join(rrows)}

At {top:,} Services: ebpflb TC over IPv6 makes {f(xt['ebpflb6_vs_ebpflb_rate'])} the new
connections/s of ebpflb TC over IPv4, and the kernel alone over IPv6 (direct6 / direct) makes
{f(xt['direct6_vs_direct_rate'])}; ebpflb TC keeps {f(xt['ebpflb6_vs_direct6_rate'])} of direct's rate
over IPv6 and {f(xt['ebpflb_vs_direct_rate'])} over IPv4. Connect p50: ebpflb6 / ebpflb
{f(xt['ebpflb6_vs_ebpflb_p50'])}, direct6 / direct {f(xt['direct6_vs_direct_p50'])}. On this shared
2-vCPU VM only ratios within one run compare, and even those move: the new-connection spreads
(min–max over the repetitions) of ebpflb6 and ebpflb overlap at {overlap('ebpflb', 'ebpflb6')},
those of direct6 and direct at {overlap('direct', 'direct6')}; where they overlap, this run does
not tell the two families apart.

The agents (first sync figures at every agent start of the traffic slots; memory right after
ready; medians):

{chr(10).join(prow)}
"""
    return text, g


def keep_section(results: Dict, t: Dict) -> Tuple[str, Dict]:
    meta = results["meta"]

    def f(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:.2f}x"

    scales = sorted(t)
    rows = ["| Services | mode | requests/s | request p50 (µs) | request p99 (µs) | ratio to direct |",
            "|---:|---|---:|---:|---:|---:|"]
    for n in scales:
        for mode in MODES:
            if mode not in t[n]:
                continue
            x = t[n][mode]
            r = _ratio(x["keep_rate"]["median"], _m(t, n, "direct", "keep_rate"))
            rows.append(f"| {n:,} | {mode} | {_cell(x['keep_rate'])} | {_cell(x['keep_p50'], '{:.1f}')} | "
                        f"{_cell(x['keep_p99'], '{:.1f}')} | {'n/a' if r is None else f'{r:.2f}x'} |")
    top = scales[-1]
    g = {k: v for k, v in sock_goals(t, top).items() if k == "sock_keep_vs_direct"}
    text = f"""{S_KEEP}

Same run, same slots as the new-connection measure: {meta['conc']} persistent HTTP/1.1 connections
from the client pod to the ClusterIP (to the pod IPs for direct), one request in flight on each,
for {meta['durations_s']['keepalive']} s. Medians (min–max) over {meta['reps']} repetitions. Only
the first packet of a connection meets the iptables/nftables rules (conntrack carries the rest);
ebpflb TC's program runs for every packet (a conntrack-map hit and a rewrite), so this is where a
per-packet cost would show; ebpflb socket LB translated the connection at `connect()` and its
packets take the TC programs' pass path.

{chr(10).join(rows)}

ebpflb TC / direct: {' / '.join(f(_ratio(_m(t, n, 'ebpflb', 'keep_rate'), _m(t, n, 'direct', 'keep_rate'))) for n in scales)}
at {' / '.join(f'{n:,}' for n in scales)} Services; ebpflb socket LB / direct: {' / '.join(f(_ratio(_m(t, n, SOCK, 'keep_rate'), _m(t, n, 'direct', 'keep_rate'))) for n in scales)};
nftables / direct: {' / '.join(f(_ratio(_m(t, n, 'nftables', 'keep_rate'), _m(t, n, 'direct', 'keep_rate'))) for n in scales)}.
ebpflb TC's share is the per-packet cost of measure 3 (two program runs per packet, one on each
pod veth) on a machine whose two vCPUs are saturated; the spreads of all modes overlap widely on
this shared VM.

Goal (socket load balancing):

{sock_goal_lines(g, ['sock_keep_vs_direct'])}
"""
    return text, g


def datapath_section() -> Tuple[str, Dict]:
    path = common.RESULTS / "datapath.json"
    if not path.exists():
        return (f"{S_PKT}\n\nNot measured: run `.venv/bin/python -m benchmarks.datapath` first.\n",
                {"ok": None})
    d = json.loads(path.read_text())
    res = d["results"]
    bare_steady = res["bare"]["steady"]["median"]
    bare_single = res["bare"]["single"]["median"]
    rows = ["| path | ns per packet, median (min–max) | bare program | above bare |",
            "|---|---:|---:|---:|"]
    names = {"new_flow": "service hit, new flow", "ct_hit": "service hit, conntrack hit",
             "reverse_nat": "reverse NAT (reply)", "pass": "non-service packet"}
    for path_name in ("new_flow", "ct_hit", "reverse_nat", "pass"):
        s = res["counters"][path_name]
        floor = bare_single if path_name == "new_flow" else bare_steady
        rows.append(f"| {names[path_name]} | {s['median']:.1f} ({s['min']:.1f}–{s['max']:.1f}) | "
                    f"{floor:.1f} | +{s['median'] - floor:.1f} |")
    above = res["counters"]["ct_hit"]["median"] - bare_steady
    ok = above <= 100
    text = f"""{S_PKT}

Not re-measured by the suite: these are the figures of `benchmarks/datapath.py` (section "Data path
per packet" above, raw results `benchmarks/results/datapath.json`, {d['meta']['reps']} interleaved
repetitions, repeat {d['meta']['repeat']:,}; new flows as single runs on {d['meta']['n_new']:,}
distinct flows), shipped build (with counters), against a bare TC program that only returns.

{chr(10).join(rows)}

Goal: TC service-hit path (conntrack hit) no more than 100 ns above the bare TC program:
+{above:.1f} ns, {_verdict(ok)}. The first packet of a flow (hash, slot, backend, two conntrack
inserts) costs more; it is paid once per connection, and the new-connection measure above shows
what it adds end to end.
"""
    return text, {"value": above, "ok": ok}


def prog_section(results: Dict) -> Tuple[str, Dict]:
    meta = results["meta"]
    sc = results["scales"]
    scales = sorted(int(s) for s in sc)
    top = scales[-1]

    def ebpf_full(n: int) -> List[float]:
        return [p["ms"] / 1e3 for p in sc[str(n)]["ebpflb_full"] if p]

    rows = ["| Services | ebpflb (s) | map writes | iptables-legacy-restore (s) | iptables-nft-restore (s) | "
            "nft -f (s) | iptables / ebpflb | nft / ebpflb |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    full: Dict[int, Dict[str, Optional[Dict]]] = {}
    for n in scales:
        r = sc[str(n)]
        e = ebpf_full(n)
        full[n] = {"ebpflb": common.summary(e) if e else None,
                   "iptables": common.summary(r["full"]["iptables"]),
                   "iptables-nft": common.summary(r["full"]["iptables-nft"]) if "iptables-nft" in r["full"] else None,
                   "nftables": common.summary(r["full"]["nftables"])}
        writes = next((p["writes"] for p in r["ebpflb_full"] if p), 0)
        fe = full[n]

        def c(s, fmt="{:.3f}"):
            return "skipped" if s is None else _cell(s, fmt)

        ri = _ratio(fe["iptables"]["median"], fe["ebpflb"]["median"] if fe["ebpflb"] else None)
        rn = _ratio(fe["nftables"]["median"], fe["ebpflb"]["median"] if fe["ebpflb"] else None)
        rows.append(f"| {n:,} | {c(fe['ebpflb'], '{:.4f}')} | {writes:,} | {c(fe['iptables'])} | "
                    f"{c(fe['iptables-nft'])} | {c(fe['nftables'])} | "
                    f"{'n/a' if ri is None else f'{ri:.1f}x'} | {'n/a' if rn is None else f'{rn:.1f}x'} |")
    crow = ["| Services | ebpflb (ms) | ebpflb map writes | iptables-legacy partial restore (ms) | "
            "iptables-legacy full restore (ms) | iptables-nft partial (ms) | nft -f (ms) |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    change: Dict[int, Dict] = {}
    for n in scales:
        ch = sc[str(n)]["change"]
        e = [p["ms"] for p in ch.get("ebpflb", [])]
        change[n] = {"ebpflb": common.summary(e) if e else None,
                     "iptables": common.summary([x * 1e3 for x in ch["iptables"]]),
                     "iptables_full": common.summary([x * 1e3 for x in ch["iptables_full_restore"]]),
                     "iptables-nft": common.summary([x * 1e3 for x in ch["iptables-nft"]]) if "iptables-nft" in ch else None,
                     "nftables": common.summary([x * 1e3 for x in ch["nftables"]])}
        w = sorted({p["writes"] for p in ch.get("ebpflb", [])})
        cc = change[n]
        crow.append(f"| {n:,} | {_cell(cc['ebpflb'], '{:.1f}') if cc['ebpflb'] else 'n/a'} | "
                    f"{', '.join(map(str, w))} | {_cell(cc['iptables'], '{:.1f}')} | "
                    f"{_cell(cc['iptables_full'], '{:.1f}')} | "
                    f"{_cell(cc['iptables-nft'], '{:.1f}') if cc['iptables-nft'] else 'skipped'} | "
                    f"{_cell(cc['nftables'], '{:.1f}')} |")
    ft = full[top]
    top_writes = next((p["writes"] for p in sc[str(top)]["ebpflb_full"] if p), 0)
    r_ipt = _ratio(ft["iptables"]["median"], ft["ebpflb"]["median"] if ft["ebpflb"] else None)
    r_nft = _ratio(ft["nftables"]["median"], ft["ebpflb"]["median"] if ft["ebpflb"] else None)
    ch_ms = change[top]["ebpflb"]["median"] if change[top]["ebpflb"] else None
    g = {"full_vs_iptables": {"value": r_ipt, "ok": None if r_ipt is None else r_ipt >= 20},
         "full_vs_nft": {"value": r_nft, "ok": None if r_nft is None else r_nft >= 3},
         "change_ms": {"value": ch_ms, "ok": None if ch_ms is None else ch_ms < 5}}
    startup = {n: _med([a["startup_s"] for a in sc[str(n)]["agent_memory"]]) for n in scales}

    def gv(key, fmt):
        v = g[key]["value"]
        return "n/a" if v is None else fmt.format(v)

    text = f"""{S_PROG}

Full load: the whole configuration of a scale programmed from nothing. ebpflb: the agent's own
figure for its first sync ("N map writes in X ms": plan + apply into the pinned maps, measured
at every agent start of the traffic slots, {meta['reps']} per scale), which excludes reading the
manifest file and compiling the programs (agent start to ready, median: {', '.join(f'{n:,}: {startup[n]:.1f} s' for n in scales)}).
iptables: `iptables-legacy-restore` of the whole nat table ({meta['reps']} times);
iptables-nft: `iptables-nft-restore`, 3 times, skipped above {meta['iptables_nft_max_scale']:,};
nftables: `nft -f` of the whole table, 3 times (once at 10,000: a load takes tens of seconds).
Command times include `ip netns exec` (about 2 ms). Medians (min–max), seconds.

{chr(10).join(rows)}

One endpoint changed: the probed Service loses one of its 4 endpoints, then gets it back,
alternately, {meta['reps']} times, on top of the full configuration. ebpflb: the agent's figure for
the sync after the manifest file changed (plan + apply of the changed Service; reading the file
is not in the figure). iptables: what kube-proxy >= 1.28 writes (`iptables-restore --noflush` of KUBE-SERVICES
plus the changed Service's chains), and, for older kube-proxy, the full restore. nftables: the
incremental transaction of kube-proxy's nftables mode (the service chain rewritten, the endpoint
chain added or deleted). Milliseconds.

{chr(10).join(crow)}

![programming time vs scale](plots/suite_programming.png)

Goals (issue 8):

- Full programming of {top:,} Services at least 20x faster than iptables-restore (legacy): {gv('full_vs_iptables', '{:.1f}x')}, {_verdict(g['full_vs_iptables']['ok'])}.
- ... and at least 3x faster than `nft -f`: {gv('full_vs_nft', '{:.1f}x')}, {_verdict(g['full_vs_nft']['ok'])}.
- One endpoint change (at {top:,} Services) under 5 ms: {gv('change_ms', '{:.1f} ms')}, {_verdict(g['change_ms']['ok'])}.

Why full programming is not 20x iptables-legacy: legacy `iptables-restore` builds one table blob in
user space and hands it to the kernel in a single `setsockopt`; ebpflb writes
{top_writes:,} records ({top:,} frontends, their names, {top * 4:,} per-Service backend records,
{top * 4:,} slots, and zeroed counters for every new id) through batched map updates, and plans
them in Python first: {ft['ebpflb']['median'] * 1e6 / max(1, top_writes):.1f} µs per record in all. nftables'
`nft -f` is the slow one ({gv('full_vs_nft', '{:.1f}x')} ebpflb's time).

The control plane on its own, at 1,000 to 100,000 Services and with every source (the Kubernetes
API, a manifest directory, one big file), event to maps, bursts and memory: see
[Control plane at scale](#control-plane-at-scale).
"""
    return text, g


def mem_section(results: Dict) -> str:
    sc = results["scales"]
    scales = sorted(int(s) for s in sc)
    meds: List[Tuple[float, float]] = []
    rows = ["| Services | agent RSS after first sync (MiB) | after 5 changes (MiB) | BPF map memlock (MiB) | maps |",
            "|---:|---:|---:|---:|---:|"]
    for n in scales:
        a = sc[str(n)]["agent_memory"]
        after = sc[str(n)].get("agent_memory_after_changes", {})
        rss = common.summary([x["rss_bytes"] / 2**20 for x in a])
        ml = common.summary([x["map_memlock_bytes"] / 2**20 for x in a])
        rows.append(f"| {n:,} | {_cell(rss, '{:.1f}')} | "
                    f"{after.get('rss_bytes', 0) / 2**20:.1f} | {_cell(ml, '{:.1f}')} | {a[0]['maps']} |")
        meds.append((rss["median"], ml["median"]))
    (rss_lo, ml_lo), (rss_hi, ml_hi) = meds[0], meds[-1]
    return f"""{S_MEM}

The agent of each traffic slot, read right after it reported ready: VmRSS from `/proc/<pid>/status`,
and the BPF maps it holds open, from `/proc/<pid>/fdinfo` (each map id counted once, its
`memlock`). Medians (min–max) over the agent starts of a scale; "after 5 changes" is the agent of
the endpoint-change measure. Map memory moves little with scale ({ml_lo:.1f} MiB at {scales[0]:,}
Services, {ml_hi:.1f} MiB at {scales[-1]:,}): conntrack and the per-CPU counters are preallocated at
their maximum sizes (agent flags `--ct-max`, `--max-services`, `--max-backends`), and only the
control-plane maps (`BPF_F_NO_PREALLOC`) grow with their records. The RSS is the Python agent:
interpreter, bcc/LLVM (the programs are compiled at start), the objects, their model, the
records each Service owns and the manifest source's caches; it grows by {(rss_hi - rss_lo):.0f} MiB from
{scales[0]:,} to {scales[-1]:,} Services (about {(rss_hi - rss_lo) * 1024 / max(1, scales[-1] - scales[0]):.0f} KiB per
Service with 4 endpoints).

{chr(10).join(rows)}
"""


def plots(results: Dict, t: Dict) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(parents=True, exist_ok=True)
    scales = sorted(t)
    made = []
    style = {"direct": ("k", "o"), "ebpflb": ("tab:green", "s"), SOCK: ("tab:purple", "P"),
             "direct6": ("tab:gray", "o"), "ebpflb6": ("tab:olive", "s"),
             "ebpflb-sock6": ("tab:pink", "P"),
             "iptables": ("tab:red", "^"),
             "iptables-nft": ("tab:orange", "v"), "nftables": ("tab:blue", "D")}

    def series(mode, metric):
        xs = [n for n in scales if mode in t[n]]
        return xs, [t[n][mode][metric]["median"] for n in xs], \
            [t[n][mode][metric]["min"] for n in xs], [t[n][mode][metric]["max"] for n in xs]

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, metric in enumerate(("lat_p50", "lat_p99")):
        for mode in MODES:
            xs, ys, lo, hi = series(mode, metric)
            if not xs:
                continue
            c, mk = style[mode]
            ax[i].errorbar(xs, ys, yerr=[[y - l for y, l in zip(ys, lo)], [h - y for y, h in zip(ys, hi)]],
                           color=c, marker=mk, capsize=3, label=LABEL[mode])
        ax[i].set_xscale("log")
        ax[i].set_yscale("log")
        ax[i].set_xlabel("Services (4 endpoints each)")
        ax[i].set_ylabel("µs")
        ax[i].set_title(f"connect+request+close latency, {metric[-3:]}")
        ax[i].grid(True, which="both", alpha=0.3)
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOTS / "suite_connect_latency.png", dpi=110)
    plt.close(fig)
    made.append("suite_connect_latency.png")

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (metric, title) in enumerate((("conn_rate", "new connections / s"),
                                         ("keep_rate", "requests / s on persistent connections"))):
        for mode in MODES:
            xs, ys, lo, hi = series(mode, metric)
            if not xs:
                continue
            c, mk = style[mode]
            ax[i].errorbar(xs, ys, yerr=[[y - l for y, l in zip(ys, lo)], [h - y for y, h in zip(ys, hi)]],
                           color=c, marker=mk, capsize=3, label=LABEL[mode])
        ax[i].set_xscale("log")
        ax[i].set_xlabel("Services (4 endpoints each)")
        ax[i].set_title(title)
        ax[i].set_ylim(bottom=0)
        ax[i].grid(True, which="both", alpha=0.3)
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOTS / "suite_rates.png", dpi=110)
    plt.close(fig)
    made.append("suite_rates.png")

    sc = results["scales"]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    full_series = {"ebpflb": lambda r: [p["ms"] / 1e3 for p in r["ebpflb_full"] if p],
                   "iptables": lambda r: r["full"]["iptables"],
                   "iptables-nft": lambda r: r["full"].get("iptables-nft", []),
                   "nftables": lambda r: r["full"]["nftables"]}
    change_series = {"ebpflb": lambda r: [p["ms"] for p in r["change"].get("ebpflb", [])],
                     "iptables": lambda r: [x * 1e3 for x in r["change"]["iptables"]],
                     "iptables-nft": lambda r: [x * 1e3 for x in r["change"].get("iptables-nft", [])],
                     "nftables": lambda r: [x * 1e3 for x in r["change"]["nftables"]]}
    for i, (get, title, unit) in enumerate(((full_series, "full load", "s"),
                                            (change_series, "one endpoint changed", "ms"))):
        for mode, fn in get.items():
            xs, ys = [], []
            for n in scales:
                v = fn(sc[str(n)])
                if v:
                    xs.append(n)
                    ys.append(statistics.median(v))
            if xs:
                c, mk = style[mode]
                ax[i].plot(xs, ys, color=c, marker=mk, label=LABEL[mode])
        ax[i].set_xscale("log")
        ax[i].set_yscale("log")
        ax[i].set_xlabel("Services (4 endpoints each)")
        ax[i].set_ylabel(unit)
        ax[i].set_title(f"programming time, {title}")
        ax[i].grid(True, which="both", alpha=0.3)
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOTS / "suite_programming.png", dpi=110)
    plt.close(fig)
    made.append("suite_programming.png")
    return made


def publish(results: Dict, write: bool = True) -> Dict:
    t, _ = traffic_table(results)
    conn, g_conn = conn_section(results, t)
    keep, g_keep = keep_section(results, t)
    pkt, g_pkt = datapath_section()
    prog, g_prog = prog_section(results)
    mem = mem_section(results)
    v6, g_v6 = v6_section(results, t)
    m = results["meta"]
    footer = (f"\nMachine: nproc {m['machine']['nproc']}, {m['machine']['cpu_model']}, kernel "
              f"{m['machine']['kernel']}, {m['nft']}. ebpflb measured: {m.get('source', 'unknown')}. "
              f"Measured {m['measured']} "
              f"(suite wall time {m['wall_s'] / 60:.1f} min). Reproduce: "
              f"`.venv/bin/python -m benchmarks.suite` (root). Raw results: "
              f"`benchmarks/results/{RESULTS_FILE}`.\n")
    sections = [(S_CONN, conn + footer), (S_KEEP, keep + footer), (S_V6, v6 + footer), (S_PKT, pkt),
                (S_PROG, prog + footer), (S_MEM, mem + footer)]
    results["goals"] = {**g_conn, **g_keep, "tc_service_hit_above_bare": g_pkt, **g_prog, **g_v6}
    for _, text in sections:
        print(text)
    if write:
        common.RESULTS.mkdir(exist_ok=True)
        (common.RESULTS / RESULTS_FILE).write_text(json.dumps(results, indent=1, default=str))
        made = plots(results, t)
        print("plots:", ", ".join(made))
        for title, text in sections:
            common.write_section(title, text)
    return results


def main() -> int:
    results = json.loads((common.RESULTS / RESULTS_FILE).read_text())
    publish(results, write=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
