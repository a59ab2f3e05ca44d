"""BPF_PROG_TEST_RUN of the north-south programs (lb4_node_xdp at XDP, lb4_node_in and
lb4_node_out at TC) on NodePort packets, for benchmarks/nodeport.py.

The NodePort path needs a route: a flow to a backend on another node is decided (and, on every
packet, forwarded) by bpf_fib_lookup, which looks in the network namespace of the device the
packet "arrived" on. So the runs happen in a namespace of their own, made here and removed
after, shaped like a lab node:

  tr0       192.168.200.10/24 and 192.168.200.20/24 (a veth; its peer tr1 only keeps it up),
            entered in lb4_node_ifs as a node device with 192.168.200.10
  routes    10.244.1.0/24 via 192.168.200.11 (a backend on another node), with permanent
            neighbours for 192.168.200.11 and the client 192.168.200.2; 10.244.0.0/24 on
            `lxc0` (backends on this node; another veth, as this kernel has no dummy driver)
  sysctl    net.ipv4.ip_forward=1 (bpf_fib_lookup refuses to forward otherwise)

and the context names tr0 as the device: `ingress_ifindex` of struct xdp_md, `ifindex` of
struct __sk_buff. The calling thread enters the namespace (setns acts per thread) because the
kernel resolves that ifindex in the caller's namespace.

What each row times, and how (see measure()):

  steady  BPF_PROG_TEST_RUN with repeat = R on one buffer. With repeat > 1 the program runs
          again on the buffer it rewrote, so the local DNAT row uses two NodePorts on two node
          addresses that are each other's backend (192.168.200.10:30080 -> 192.168.200.20:30081
          and back): every run is a conntrack hit with a full address and port rewrite.
  single  repeat = 1, one syscall per packet, the same input every time, mean over many calls:
          used where the rewritten packet cannot be fed back (a SNAT flow's packet leaves with
          TTL - 1 and new MACs; a reply's rewrite makes it a non-reply). Each call pays the
          timer read and finds colder caches than a steady run: compare a single row with the
          bare program run the same way, not with a steady row.

    .venv/bin/python -m benchmarks.nodeport_testrun [--reps 9] [--repeat 1000000] [--single 20000]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import secrets
import shutil
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from benchmarks import common
from ebpflb.dataplane.testrun import _TestRunOpts  # the one ctypes mirror of the options

log = logging.getLogger("benchmarks.nodeport")

NODE, NODE2, PEER, CLIENT = "192.168.200.10", "192.168.200.20", "192.168.200.11", "192.168.200.2"
LOCAL_BE, REMOTE_BE = ("10.244.0.11", 8081), ("10.244.1.11", 8081)
PING, PONG = (NODE, 30080), (NODE2, 30081)
NP_LOCAL, NP_REMOTE = (NODE, 30085), (NODE, 30090)
PEER_MAC, CLIENT_MAC = "02:00:00:00:00:0b", "02:00:00:00:00:02"
XDP_PASS, XDP_TX = 2, 3
TC_ACT_OK, TC_ACT_REDIRECT = 0, 7
# (row, program family, method): what the report lists, in order.
ROWS = [
    ("bare", "steady"), ("pass", "steady"), ("local_ct_hit", "steady"),
    ("bare", "single"), ("pass", "single"), ("local_ct_hit", "single"),
    ("remote_ct_hit", "single"), ("remote_reply", "single"), ("local_reply", "single"),
]


# ------------------------------------------------------------------ BPF_PROG_TEST_RUN with a ctx

class XdpMd(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("data", "data_end", "data_meta", "ingress_ifindex",
                                               "rx_queue_index", "egress_ifindex")]


# struct __sk_buff up to and including ifindex (offset 40); the kernel zero-fills the rest.
SKB_CTX_SIZE = 44
SKB_IFINDEX_OFF = 40


@dataclass
class Run:
    retval: int
    data: bytes
    duration_ns: int


class Runner:
    """One program, one input packet and context, run again and again without rebuilding the
    ctypes arguments (the Python side of a call stays small and constant)."""

    def __init__(self, prog_fd: int, packet: bytes, xdp: bool, ifindex: int):
        from ebpflb.dataplane.libbpf import libbpf

        fn = libbpf().bpf_prog_test_run_opts
        fn.argtypes = [ctypes.c_int, ctypes.POINTER(_TestRunOpts)]
        fn.restype = ctypes.c_int
        self._fn, self._fd = fn, prog_fd
        self._in = ctypes.create_string_buffer(packet, len(packet))
        self._out = ctypes.create_string_buffer(len(packet) + 256)
        if xdp:
            self._ctx = XdpMd(data=0, data_end=len(packet), ingress_ifindex=ifindex)
            ctx_size = ctypes.sizeof(XdpMd)
        else:
            self._ctx = ctypes.create_string_buffer(SKB_CTX_SIZE)
            struct.pack_into("=I", self._ctx, SKB_IFINDEX_OFF, ifindex)
            ctx_size = SKB_CTX_SIZE
        o = self._opts = _TestRunOpts()
        o.sz = ctypes.sizeof(_TestRunOpts)
        o.data_in = ctypes.cast(self._in, ctypes.c_void_p)
        o.data_size_in = len(packet)
        o.data_out = ctypes.cast(self._out, ctypes.c_void_p)
        o.ctx_in = ctypes.cast(ctypes.pointer(self._ctx), ctypes.c_void_p)
        o.ctx_size_in = ctx_size
        self._size_out = len(packet) + 256
        self._ref = ctypes.byref(o)

    def run(self, repeat: int = 1) -> Run:
        o = self._opts
        o.repeat = repeat
        o.data_size_out = self._size_out
        if self._fn(self._fd, self._ref) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"BPF_PROG_TEST_RUN failed: {os.strerror(err)}")
        return Run(o.retval, self._out.raw[:o.data_size_out], o.duration)

    def mean_single(self, n: int) -> float:
        """Mean duration of n runs of repeat = 1 (the same input each time)."""
        fn, fd, ref, o = self._fn, self._fd, self._ref, self._opts
        o.repeat = 1
        total = 0
        for _ in range(n):
            o.data_size_out = self._size_out
            if fn(fd, ref) != 0:
                raise OSError(ctypes.get_errno(), "BPF_PROG_TEST_RUN failed")
            total += o.duration
        return total / n


# ------------------------------------------------------------------ packets

def _mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def frame(src: Tuple[str, int], dst: Tuple[str, int], flags: int, dmac: str, smac: str,
          ttl: int = 64) -> bytes:
    """Ethernet/IPv4/TCP with 32 bytes of payload and full checksums, as from a wire."""
    payload = b"x" * 32
    l4_len = 20 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + l4_len, 0, 0x4000, ttl, 6, 0,
                     socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    ip = ip[:10] + struct.pack("!H", common.inet_checksum(ip)) + ip[12:]
    tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], 1, 1, 5 << 4, flags, 65535, 0, 0) + payload
    pseudo = socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + struct.pack("!BBH", 0, 6, l4_len)
    tcp = tcp[:16] + struct.pack("!H", common.inet_checksum(pseudo + tcp)) + tcp[18:]
    return _mac(dmac) + _mac(smac) + b"\x08\x00" + ip + tcp


def parse(pkt: bytes) -> Dict[str, object]:
    """Addresses, ports, TTL and whether both checksums verify, of a frame() the program rewrote."""
    ip, tcp = pkt[14:34], pkt[34:]
    src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    return {"src": (src, struct.unpack("!H", tcp[0:2])[0]),
            "dst": (dst, struct.unpack("!H", tcp[2:4])[0]), "ttl": ip[8],
            "ip_csum_ok": common.inet_checksum(ip) == 0,
            "tcp_csum_ok": common.inet_checksum(pseudo + tcp) == 0,
            "dmac": pkt[0:6].hex(":"), "smac": pkt[6:12].hex(":")}


SYN, ACK = 0x02, 0x10


# ------------------------------------------------------------------ the namespace

class TestNetns:
    """A node-shaped namespace for the runs (see the module docstring); removed by close()."""

    def __init__(self, name: str):
        from ebpflb.lab.nsops import create_netns, netns_ipr, write_sysctls

        self.name = name
        create_netns(name)
        try:
            write_sysctls(name, {"net.ipv4.ip_forward": "1",
                                 "net.ipv6.conf.all.disable_ipv6": "1",
                                 "net.ipv6.conf.default.disable_ipv6": "1"})
            with netns_ipr(name) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                ipr.link("add", ifname="tr0", kind="veth", peer={"ifname": "tr1"})
                ipr.link("add", ifname="lxc0", kind="veth", peer={"ifname": "lxc1"})
                for dev in ("tr0", "tr1", "lxc0", "lxc1"):
                    ipr.link("set", index=ipr.link_lookup(ifname=dev)[0], state="up")
                self.ifindex = ipr.link_lookup(ifname="tr0")[0]
                lxc = ipr.link_lookup(ifname="lxc0")[0]
                for addr in (NODE, NODE2):
                    ipr.addr("add", index=self.ifindex, address=addr, prefixlen=24)
                ipr.route("add", dst="10.244.1.0/24", gateway=PEER, oif=self.ifindex)
                ipr.route("add", dst="10.244.0.0/24", oif=lxc)
                for ip, mac in ((PEER, PEER_MAC), (CLIENT, CLIENT_MAC)):
                    ipr.neigh("add", dst=ip, lladdr=mac, ifindex=self.ifindex, state=0x80)  # PERMANENT
                link = ipr.get_links(self.ifindex)[0]
                self.mac = link.get_attr("IFLA_ADDRESS")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        from ebpflb.lab.nsops import remove_netns

        remove_netns(self.name)


def in_thread(ns: str, fn: Callable[[], object]) -> object:
    """Run fn in a new thread that has entered namespace ns; return its result or raise."""
    from ebpflb.lab.nsops import in_netns

    out: Dict[str, object] = {}

    def body() -> None:
        try:
            with in_netns(ns):
                out["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            out["error"] = exc

    t = threading.Thread(target=body, name=f"testrun-{ns}")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["result"]


# ------------------------------------------------------------------ programs and maps

def bare_programs():
    from bcc import BPF

    b = BPF(text=b"int bare_xdp(struct xdp_md *ctx) { return XDP_PASS; }\n"
                 b"int bare_tc(struct __sk_buff *skb) { return 0; }\n")
    return b, b.load_func(b"bare_xdp", BPF.XDP), b.load_func(b"bare_tc", BPF.SCHED_CLS)


def desired():
    from ebpflb.model import Backend, DesiredState, Frontend

    def np(addr: Tuple[str, int], name: str) -> Frontend:
        return Frontend(addr[0], addr[1], "TCP", f"bench/{name}", "http", kind="NodePort")

    return DesiredState({
        np(PING, "ping"): (Backend(*PONG),),
        np(PONG, "pong"): (Backend(*PING),),
        np(NP_LOCAL, "local"): (Backend(*LOCAL_BE),),
        np(NP_REMOTE, "remote"): (Backend(*REMOTE_BE),),
    }, ())


def pin_dir(tag: str) -> str:
    return f"/sys/fs/bpf/ebpflb-bench-np-{tag}"


class Dataplane:
    def __init__(self, tag: str, ifindex: int):
        from ebpflb.dataplane.bcc_maps import BccMapWriter, ip_to_be32
        from ebpflb.dataplane.config import DataplaneConfig
        from ebpflb.dataplane.loader import load_programs
        from ebpflb.reconcile import reconcile

        self.config = DataplaneConfig(pin_dir=pin_dir(tag))
        shutil.rmtree(self.config.pin_dir, ignore_errors=True)
        self.progs = load_programs(self.config)
        reconcile(desired(), BccMapWriter(self.progs.bpf), self.config.map_limits)
        t = self.progs.bpf[b"lb4_node_ifs"]
        t[t.Key(ifindex)] = t.Leaf(addr=ip_to_be32(NODE), flags=0)
        self.snat_range = self.config.snat_ports

    def stats(self) -> Dict[str, int]:
        from ebpflb.dataplane.bcc_maps import read_counters

        return read_counters(self.progs.bpf)

    def clear_ct(self) -> None:
        for name in (b"ct4", b"ct4_syn"):
            self.progs.bpf[name].clear()

    def close(self) -> None:
        shutil.rmtree(self.config.pin_dir, ignore_errors=True)


# ------------------------------------------------------------------ measuring

def _open_flow(runner_syn: Runner, runner_ack: Runner) -> Run:
    """A SYN then the client's ACK (repeat = 1): the flow is created, then established."""
    syn = runner_syn.run()
    runner_ack.run()
    return syn


def measure(reps: int, repeat: int, n_single: int) -> Dict:
    """All rows, XDP and TC, interleaved: every repetition runs every row of both program
    families, the family order swapped every other repetition. Verdicts and rewrites are
    checked once with repeat = 1 before any timing."""
    tag = secrets.token_hex(3)
    ns = TestNetns(f"nptr-{tag}")
    try:
        dp = Dataplane(tag, ns.ifindex)
        _keep, bare_xdp, bare_tc = bare_programs()
        return in_thread(ns.name, lambda: _measure(dp, ns, bare_xdp.fd, bare_tc.fd,
                                                   reps, repeat, n_single))  # type: ignore[return-value]
    finally:
        shutil.rmtree(pin_dir(tag), ignore_errors=True)  # also when loading failed half-way
        ns.close()


def _measure(dp: Dataplane, ns: TestNetns, bare_xdp: int, bare_tc: int, reps: int, repeat: int,
             n_single: int) -> Dict:
    fds = {"xdp": dp.progs.node_xdp.fd, "tc": dp.progs.node_in.fd}
    out_fd = dp.progs.node_out.fd
    me, ifx = ns.mac, ns.ifindex

    def pkt(src, dst, flags=ACK, dmac=me, smac=CLIENT_MAC):
        return frame(src, dst, flags, dmac, smac)

    def runner(fam: str, p: bytes, fd: Optional[int] = None) -> Runner:
        return Runner(fds[fam] if fd is None else fd, p, fam == "xdp", ifx)

    client_ping, client_local, client_remote = (CLIENT, 40000), (CLIENT, 40001), (CLIENT, 40002)
    checks: Dict[str, object] = {}
    # Flows, opened once through the XDP program (XDP and TC share the maps): the two ping-pong
    # flows (a packet to PING becomes one to PONG, which becomes one to PING again), a local and
    # a remote NodePort flow.
    dp.clear_ct()
    for dst in (PING, PONG):
        _open_flow(runner("xdp", pkt(client_ping, dst, SYN)), runner("xdp", pkt(client_ping, dst)))
    _open_flow(runner("xdp", pkt(client_local, NP_LOCAL, SYN)), runner("xdp", pkt(client_local, NP_LOCAL)))
    syn = _open_flow(runner("xdp", pkt(client_remote, NP_REMOTE, SYN)),
                     runner("xdp", pkt(client_remote, NP_REMOTE)))
    snat = parse(syn.data)["src"]  # (node address, SNAT port) the remote flow leaves with
    checks["remote_syn"] = {"retval": syn.retval, **parse(syn.data)}

    inputs = {
        "pass": pkt(client_ping, (NODE, 22)),  # to the node itself, not a frontend: passed
        "local_ct_hit": pkt(client_ping, PING),
        "local_ct_hit_single": pkt(client_local, NP_LOCAL),
        "remote_ct_hit": pkt(client_remote, NP_REMOTE),
        "remote_reply": pkt(REMOTE_BE, snat, dmac=me, smac=PEER_MAC),
        "local_reply": frame(LOCAL_BE, client_local, ACK, CLIENT_MAC, me),  # leaving by tr0
    }
    runners: Dict[Tuple[str, str, str], Runner] = {}
    for fam, bare in (("xdp", bare_xdp), ("tc", bare_tc)):
        runners[(fam, "bare", "steady")] = runner(fam, inputs["pass"], bare)
        runners[(fam, "bare", "single")] = runner(fam, inputs["pass"], bare)
        runners[(fam, "pass", "steady")] = runner(fam, inputs["pass"])
        runners[(fam, "pass", "single")] = runner(fam, inputs["pass"])
        runners[(fam, "local_ct_hit", "steady")] = runner(fam, inputs["local_ct_hit"])
        runners[(fam, "local_ct_hit", "single")] = runner(fam, inputs["local_ct_hit_single"])
        runners[(fam, "remote_ct_hit", "single")] = runner(fam, inputs["remote_ct_hit"])
        runners[(fam, "remote_reply", "single")] = runner(fam, inputs["remote_reply"])
    # Replies of local backends are turned back at TC egress in both modes (XDP has no egress).
    runners[("tc", "local_reply", "single")] = runner("tc", inputs["local_reply"], out_fd)

    # What each row does, once, with repeat = 1: verdict and rewrite.
    expect = {("xdp", "pass"): XDP_PASS, ("tc", "pass"): TC_ACT_OK,
              ("xdp", "local_ct_hit"): XDP_PASS, ("tc", "local_ct_hit"): TC_ACT_OK,
              ("xdp", "remote_ct_hit"): XDP_TX, ("tc", "remote_ct_hit"): TC_ACT_REDIRECT,
              ("xdp", "remote_reply"): XDP_TX, ("tc", "remote_reply"): TC_ACT_REDIRECT,
              ("tc", "local_reply"): TC_ACT_OK}
    want_dst = {"local_ct_hit": PONG, "local_ct_hit_single": LOCAL_BE, "remote_ct_hit": REMOTE_BE,
                "remote_reply": client_remote}
    want_src = {"remote_ct_hit": snat, "remote_reply": NP_REMOTE, "local_reply": NP_LOCAL}
    problems: List[str] = []
    for (fam, row, method), r in sorted(runners.items()):
        if row == "bare":
            continue
        res = r.run()
        got = parse(res.data)
        checks[f"{fam}/{row}/{method}"] = {"retval": res.retval, **got}
        key = "local_ct_hit_single" if (row, method) == ("local_ct_hit", "single") else row
        if res.retval != expect[(fam, row)]:
            problems.append(f"{fam} {row} {method}: verdict {res.retval}, expected {expect[(fam, row)]}")
        if key in want_dst and got["dst"] != want_dst[key]:
            problems.append(f"{fam} {row}: destination {got['dst']}, expected {want_dst[key]}")
        if key in want_src and got["src"] != want_src[key]:
            problems.append(f"{fam} {row}: source {got['src']}, expected {want_src[key]}")
        if row != "pass" and not (got["ip_csum_ok"] and got["tcp_csum_ok"]):
            problems.append(f"{fam} {row}: checksum wrong after the rewrite ({got})")
    if checks["xdp/remote_ct_hit/single"]["dmac"] != PEER_MAC:  # type: ignore[index]
        problems.append("xdp remote_ct_hit: not addressed to the next hop's MAC")
    if problems:
        raise RuntimeError("north-south test runs do not do what they should:\n  "
                           + "\n  ".join(problems))
    stats_before = dp.stats()

    samples: Dict[str, Dict[str, Dict[str, List[float]]]] = {}

    def add(fam: str, row: str, method: str, ns_per_run: float) -> None:
        samples.setdefault(fam, {}).setdefault(method, {}).setdefault(row, []).append(ns_per_run)

    for rep in range(reps):
        fams = ["xdp", "tc"] if rep % 2 == 0 else ["tc", "xdp"]
        for fam in fams:
            for row, method in ROWS:
                r = runners.get((fam, row, method))
                if r is None:
                    continue
                if method == "steady":
                    add(fam, row, method, float(r.run(repeat).duration_ns))
                else:
                    add(fam, row, method, r.mean_single(n_single))
    stats_after = dp.stats()
    results = {fam: {method: {row: common.summary(s) for row, s in rows.items()}
                     for method, rows in methods.items()} for fam, methods in samples.items()}
    return {"results": results, "samples": samples, "checks": checks,
            "snat_port_range": list(dp.snat_range),
            "lb_stats_during_timing": {k: stats_after[k] - stats_before.get(k, 0)
                                       for k in stats_after if stats_after[k] != stats_before.get(k, 0)}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--single", type=int, default=20_000)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    res = measure(args.reps, args.repeat, args.single)
    print(json.dumps({"results": res["results"], "lb_stats_during_timing": res["lb_stats_during_timing"]},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
