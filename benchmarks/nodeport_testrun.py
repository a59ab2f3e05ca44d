"""BPF_PROG_TEST_RUN of the north-south programs (lb4_node_xdp at XDP, lb4_node_in and
lb4_node_out at TC) on IPv4 and IPv6 NodePort packets, for benchmarks/nodeport.py. IPv6 frames
go through the same entry programs, which tail-call lb6_node_xdp / lb6_node_in / lb6_node_out
(bpf/lb6_tc.c), as on an attached node device: an IPv6 row times the tail call too.

The NodePort path needs a route: a flow to a backend on another node is decided (and, on every
packet, forwarded) by bpf_fib_lookup, which looks in the network namespace of the device the
packet "arrived" on. So the runs happen in a namespace of their own, made here and removed
after, shaped like a lab node:

  tr0       192.168.200.10/24 and 192.168.200.20/24, fd00:200::10/64 and fd00:200::20/64 (a
            veth; its peer tr1 only keeps it up), entered in lb4_node_ifs as a node device with
            192.168.200.10 and in lb6_node_ifs with fd00:200::10 (the agent's device-map path)
  routes    10.244.1.0/24 via 192.168.200.11 and fd00:10:244:1::/64 via fd00:200::11 (backends
            on another node), with permanent neighbours for the next hops and the clients
            192.168.200.2 and fd00:200::2; 10.244.0.0/24 and fd00:10:244::/64 on `lxc0`
            (backends on this node; another veth, as this kernel has no dummy driver)
  sysctl    net.ipv4.ip_forward=1, net.ipv6.conf.all.forwarding=1 (bpf_fib_lookup refuses to
            forward otherwise), accept_dad=0 (no address stays tentative)

and the context names tr0 as the device: `ingress_ifindex` of struct xdp_md, `ifindex` of
struct __sk_buff. The calling thread enters the namespace (setns acts per thread) because the
kernel resolves that ifindex in the caller's namespace.

What each row times, and how (see measure()):

  steady  BPF_PROG_TEST_RUN with repeat = R on one buffer. With repeat > 1 the program runs
          again on the buffer it rewrote, so the local DNAT row uses two NodePorts on two node
          addresses that are each other's backend (192.168.200.10:30080 -> 192.168.200.20:30081
          and back; [fd00:200::10]:30080 -> [fd00:200::20]:30081 and back): every run is a
          conntrack hit with a full address and port rewrite.
  single  repeat = 1, one syscall per packet, the same input every time, mean over many calls:
          used where the rewritten packet cannot be fed back (a SNAT flow's packet leaves with
          TTL - 1 and new MACs; a reply's rewrite makes it a non-reply). Each call pays the
          timer read and finds colder caches than a steady run: compare a single row with the
          bare program run the same way, not with a steady row.

Two reference rows run programs that are not ebpflb's: `bare` returns at once; `fib` does only
the route lookup the remote rows do (one bpf_fib_lookup of the remote backend's route, per family).

Every row exists for both families. In each repetition the IPv4 and IPv6 runs of a row follow
each other (which goes first alternates), so their ratio (`ratio6`, the median of the
per-repetition IPv6 / IPv4 ratios) compares runs made under the same load. Each row's verdict and
rewrite are checked once before timing, and every timed run's counters (`lb_stats`, verdicts) are
compared with what that row must count: a row that passes a packet instead of translating it
fails the run instead of timing the wrong path.

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



@dataclass(frozen=True)
class Family:
    """The addresses of one IP family's rows; the IPv6 ones mirror the IPv4 ones."""

    name: str  # "ipv4" | "ipv6"
    node: str  # the node device's address, its SNAT address, and the NodePorts' (30080, 30085, 30090)
    node2: str  # a second node address: PONG's (30081)
    peer: str  # node 1: the next hop to remote_net
    client: str
    local_be: Tuple[str, int]  # a backend on this node (in local_net, on lxc0)
    remote_be: Tuple[str, int]  # a backend on node 1 (in remote_net)
    local_net: str
    remote_net: str
    prefixlen: int  # of the node addresses on tr0

    @property
    def ping(self) -> Tuple[str, int]:
        return (self.node, 30080)

    @property
    def pong(self) -> Tuple[str, int]:
        return (self.node2, 30081)

    @property
    def np_local(self) -> Tuple[str, int]:
        return (self.node, 30085)

    @property
    def np_remote(self) -> Tuple[str, int]:
        return (self.node, 30090)


V4 = Family("ipv4", "192.168.200.10", "192.168.200.20", "192.168.200.11", "192.168.200.2",
            ("10.244.0.11", 8081), ("10.244.1.11", 8081), "10.244.0.0/24", "10.244.1.0/24", 24)
V6 = Family("ipv6", "fd00:200::10", "fd00:200::20", "fd00:200::11", "fd00:200::2",
            ("fd00:10:244::11", 8081), ("fd00:10:244:1::11", 8081), "fd00:10:244::/64",
            "fd00:10:244:1::/64", 64)
FAMILIES = (V4, V6)
PEER_MAC, CLIENT_MAC = "02:00:00:00:00:0b", "02:00:00:00:00:02"
XDP_PASS, XDP_TX = 2, 3
TC_ACT_OK, TC_ACT_REDIRECT = 0, 7
# (row, method): what the report lists, in order, for each program family and IP family. `bare`
# and `fib` are reference programs, not ebpflb's: a program that returns at once, and one that
# does only the route lookup of the remote rows (bpf_fib_lookup of the remote backend).
ROWS = [
    ("bare", "steady"), ("fib", "steady"), ("pass", "steady"), ("local_ct_hit", "steady"),
    ("bare", "single"), ("pass", "single"), ("local_ct_hit", "single"),
    ("remote_ct_hit", "single"), ("remote_reply", "single"), ("local_reply", "single"),
]
# What one run of each row must count (lb_stats and "hook/verdict" of read_counters), per
# program family: proof, for every timed run, that the program took the path the row is named for.
COUNTS = {
    ("xdp", "pass"): {"node_xdp/pass": 1},
    ("tc", "pass"): {"node_in/pass": 1},
    ("xdp", "local_ct_hit"): {"node_xdp/established": 1},
    ("tc", "local_ct_hit"): {"node_in/established": 1},
    ("xdp", "remote_ct_hit"): {"node_xdp/established": 1, "xdp_forward": 1},
    ("tc", "remote_ct_hit"): {"node_in/established": 1, "node_forward": 1},
    ("xdp", "remote_reply"): {"node_xdp/reply": 1, "xdp_forward": 1},
    ("tc", "remote_reply"): {"node_in/reply": 1, "node_forward": 1},
    ("tc", "local_reply"): {"node_out/reply": 1},
}


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
    """Ethernet/IPv4/TCP or Ethernet/IPv6/TCP (by the addresses; `ttl` is the hop limit there)
    with 32 bytes of payload and full checksums, as from a wire."""
    payload = b"x" * 32
    l4_len = 20 + len(payload)
    tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], 1, 1, 5 << 4, flags, 65535, 0, 0) + payload
    if ":" in src[0]:
        s6, d6 = socket.inet_pton(socket.AF_INET6, src[0]), socket.inet_pton(socket.AF_INET6, dst[0])
        ip = struct.pack("!IHBB", 6 << 28, l4_len, 6, ttl) + s6 + d6
        pseudo = s6 + d6 + struct.pack("!IxxxB", l4_len, 6)
        ethertype = b"\x86\xdd"
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + l4_len, 0, 0x4000, ttl, 6, 0,
                         socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
        ip = ip[:10] + struct.pack("!H", common.inet_checksum(ip)) + ip[12:]
        pseudo = socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + struct.pack("!BBH", 0, 6, l4_len)
        ethertype = b"\x08\x00"
    tcp = tcp[:16] + struct.pack("!H", common.inet_checksum(pseudo + tcp)) + tcp[18:]
    return _mac(dmac) + _mac(smac) + ethertype + ip + tcp


def parse(pkt: bytes) -> Dict[str, object]:
    """Addresses, ports, TTL (hop limit) and whether the checksums verify (IPv6 has none of its
    own: ip_csum_ok is True), of a frame() the program rewrote."""
    if pkt[12:14] == b"\x86\xdd":
        ip, tcp = pkt[14:54], pkt[54:]
        src = socket.inet_ntop(socket.AF_INET6, ip[8:24])
        dst = socket.inet_ntop(socket.AF_INET6, ip[24:40])
        pseudo = ip[8:40] + struct.pack("!IxxxB", len(tcp), 6)
        ttl, ip_ok = ip[7], ip[0] >> 4 == 6 and struct.unpack("!H", ip[4:6])[0] == len(tcp)
    else:
        ip, tcp = pkt[14:34], pkt[34:]
        src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
        ttl, ip_ok = ip[8], common.inet_checksum(ip) == 0
    return {"src": (src, struct.unpack("!H", tcp[0:2])[0]),
            "dst": (dst, struct.unpack("!H", tcp[2:4])[0]), "ttl": ttl,
            "ip_csum_ok": ip_ok,
            "tcp_csum_ok": common.inet_checksum(pseudo + tcp) == 0,
            "dmac": pkt[0:6].hex(":"), "smac": pkt[6:12].hex(":")}


SYN, ACK = 0x02, 0x10
IFA_F_NODAD, NUD_PERMANENT = 0x02, 0x80


# ------------------------------------------------------------------ the namespace

class TestNetns:
    """A node-shaped namespace for the runs (see the module docstring); removed by close()."""

    def __init__(self, name: str):
        from ebpflb.lab.nsops import create_netns, netns_ipr, write_sysctls

        self.name = name
        create_netns(name)
        try:
            write_sysctls(name, {"net.ipv4.ip_forward": "1",
                                 "net.ipv6.conf.all.forwarding": "1",
                                 "net.ipv6.conf.all.accept_dad": "0",
                                 "net.ipv6.conf.default.accept_dad": "0"})
            with netns_ipr(name) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                ipr.link("add", ifname="tr0", kind="veth", peer={"ifname": "tr1"})
                ipr.link("add", ifname="lxc0", kind="veth", peer={"ifname": "lxc1"})
                for dev in ("tr0", "tr1", "lxc0", "lxc1"):
                    ipr.link("set", index=ipr.link_lookup(ifname=dev)[0], state="up")
                self.ifindex = ipr.link_lookup(ifname="tr0")[0]
                lxc = ipr.link_lookup(ifname="lxc0")[0]
                for fam in FAMILIES:
                    af = socket.AF_INET6 if fam is V6 else socket.AF_INET
                    for addr in (fam.node, fam.node2):
                        ipr.addr("add", index=self.ifindex, address=addr, prefixlen=fam.prefixlen,
                                 family=af, flags=IFA_F_NODAD if fam is V6 else 0)
                    ipr.route("add", dst=fam.remote_net, gateway=fam.peer, oif=self.ifindex,
                              family=af)
                    ipr.route("add", dst=fam.local_net, oif=lxc, family=af)
                    for ip, mac in ((fam.peer, PEER_MAC), (fam.client, CLIENT_MAC)):
                        ipr.neigh("add", dst=ip, lladdr=mac, ifindex=self.ifindex, family=af,
                                  state=NUD_PERMANENT)
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

def _fib_lookup_source(fn: str, ctx: str, ifindex: str, fam: Family, ok: int, fail: int) -> str:
    """A program that does only the route lookup the remote rows do (node address -> the remote
    backend, TCP, on the context's device) and returns `ok` when it found route and neighbour."""
    if fam is V6:
        words = lambda field, ip: " ".join(  # noqa: E731
            f"f.{field}[{i}] = {w:#x};" for i, w in enumerate(
                struct.unpack("=4I", socket.inet_pton(socket.AF_INET6, ip))))
        addrs = words("ipv6_src", fam.node) + " " + words("ipv6_dst", fam.remote_be[0])
        af = 10  # AF_INET6
    else:
        addrs = (f"f.ipv4_src = {struct.unpack('=I', socket.inet_aton(fam.node))[0]:#x}; "
                 f"f.ipv4_dst = {struct.unpack('=I', socket.inet_aton(fam.remote_be[0]))[0]:#x};")
        af = 2  # AF_INET
    return (f"int {fn}({ctx} *ctx) {{ struct bpf_fib_lookup f = {{}}; f.family = {af}; "
            f"f.l4_protocol = 6; f.sport = bpf_htons(40002); f.dport = bpf_htons({fam.remote_be[1]}); "
            f"{addrs} f.ifindex = ctx->{ifindex}; "
            f"return bpf_fib_lookup(ctx, &f, sizeof(f), 0) == 0 ? {ok} : {fail}; }}\n")


def reference_programs():
    """The reference rows' programs: `bare` (returns at once) and `fib` (one bpf_fib_lookup of the
    remote backend's route, per IP family): {(hook, row, IP family): program}, and the BPF object
    that keeps them loaded."""
    from bcc import BPF

    text = ("int bare_xdp(struct xdp_md *ctx) { return XDP_PASS; }\n"
            "int bare_tc(struct __sk_buff *skb) { return 0; }\n")
    for fam in FAMILIES:
        text += _fib_lookup_source(f"fib_xdp_{fam.name}", "struct xdp_md", "ingress_ifindex", fam,
                                   XDP_PASS, 0)
        text += _fib_lookup_source(f"fib_tc_{fam.name}", "struct __sk_buff", "ifindex", fam,
                                   TC_ACT_OK, 2)
    b = BPF(text=text.encode())
    progs = {}
    for hook, kind in (("xdp", BPF.XDP), ("tc", BPF.SCHED_CLS)):
        bare = b.load_func(f"bare_{hook}".encode(), kind)
        for fam in FAMILIES:
            progs[(hook, "bare", fam.name)] = bare
            progs[(hook, "fib", fam.name)] = b.load_func(f"fib_{hook}_{fam.name}".encode(), kind)
    return b, progs


def desired():
    """The NodePort frontends of both families, through the control plane's model."""
    from ebpflb.model import Backend, DesiredState, Frontend

    def np(addr: Tuple[str, int], name: str) -> Frontend:
        return Frontend(addr[0], addr[1], "TCP", f"bench/{name}", "http", kind="NodePort")

    frontends = {}
    for fam in FAMILIES:
        suffix = "6" if fam is V6 else ""
        frontends.update({
            np(fam.ping, "ping" + suffix): (Backend(*fam.pong),),
            np(fam.pong, "pong" + suffix): (Backend(*fam.ping),),
            np(fam.np_local, "local" + suffix): (Backend(*fam.local_be),),
            np(fam.np_remote, "remote" + suffix): (Backend(*fam.remote_be),),
        })
    return DesiredState(frontends, ())


def pin_dir(tag: str) -> str:
    return f"/sys/fs/bpf/ebpflb-bench-np-{tag}"


class Dataplane:
    def __init__(self, tag: str, ifindex: int):
        from ebpflb.dataplane.bcc_maps import BccMapWriter
        from ebpflb.dataplane.config import DataplaneConfig
        from ebpflb.dataplane.device_maps import write_device_map
        from ebpflb.dataplane.loader import load_programs
        from ebpflb.maps import NODE_IFS, NODE_IFS6, NodeIfValue
        from ebpflb.reconcile import reconcile

        self.config = DataplaneConfig(pin_dir=pin_dir(tag))
        shutil.rmtree(self.config.pin_dir, ignore_errors=True)
        self.progs = load_programs(self.config)
        writer = BccMapWriter(self.progs.bpf)
        reconcile(desired(), writer, self.config.map_limits)
        # The node device and its SNAT address of each family, as the agent writes them.
        write_device_map(writer, NODE_IFS, {ifindex: NodeIfValue(V4.node)})
        write_device_map(writer, NODE_IFS6, {ifindex: NodeIfValue(V6.node)})
        self.snat_range = self.config.snat_ports

    def stats(self) -> Dict[str, int]:
        from ebpflb.dataplane.bcc_maps import read_counters

        return read_counters(self.progs.bpf)

    def clear_ct(self) -> None:
        for name in (b"ct4", b"ct4_syn", b"ct6", b"ct6_syn"):
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
    """All rows, XDP and TC, IPv4 and IPv6, interleaved: every repetition runs every row of both
    program families in both IP families, the program family order swapped every other
    repetition and a row's IPv4 and IPv6 runs back to back (which first alternates). Verdicts and
    rewrites are checked once with repeat = 1 before any timing; every timed run's counters
    after."""
    tag = secrets.token_hex(3)
    ns = TestNetns(f"nptr-{tag}")
    try:
        dp = Dataplane(tag, ns.ifindex)
        _keep, refs = reference_programs()
        ref_fds = {key: fn.fd for key, fn in refs.items()}
        return in_thread(ns.name, lambda: _measure(dp, ns, ref_fds, reps, repeat,
                                                   n_single))  # type: ignore[return-value]
    finally:
        shutil.rmtree(pin_dir(tag), ignore_errors=True)  # also when loading failed half-way
        ns.close()


@dataclass
class _Expect:
    """What one row of one IP family must do with repeat = 1, beyond its verdict."""

    input: bytes
    dst: Optional[Tuple[str, int]] = None
    src: Optional[Tuple[str, int]] = None
    forwarded: bool = False  # sent out by the program: TTL / hop limit down by one
    next_mac: Optional[str] = None  # at XDP: the destination MAC it is sent to


def _family_rows(fam: Family, me: str, open_runner: Callable[[bytes], Runner],
                 checks: Dict[str, object]) -> Dict[str, _Expect]:
    """Opens the flows of one IP family's rows (through the XDP program; XDP and TC share the
    maps) and returns each row's input and expected rewrite. The flows: the two ping-pong flows
    (a packet to PING becomes one to PONG, which becomes one to PING again), a local and a remote
    NodePort flow."""
    c = fam.client

    def pkt(src, dst, flags=ACK, dmac=me, smac=CLIENT_MAC):
        return frame(src, dst, flags, dmac, smac)

    client_ping, client_local, client_remote = (c, 40000), (c, 40001), (c, 40002)
    for dst in (fam.ping, fam.pong):
        _open_flow(open_runner(pkt(client_ping, dst, SYN)), open_runner(pkt(client_ping, dst)))
    _open_flow(open_runner(pkt(client_local, fam.np_local, SYN)),
               open_runner(pkt(client_local, fam.np_local)))
    syn = _open_flow(open_runner(pkt(client_remote, fam.np_remote, SYN)),
                     open_runner(pkt(client_remote, fam.np_remote)))
    snat = parse(syn.data)["src"]  # (node address, SNAT port) the remote flow leaves with
    checks[f"{fam.name}/remote_syn"] = {"retval": syn.retval, **parse(syn.data)}
    return {
        "pass": _Expect(pkt(client_ping, (fam.node, 22))),  # to the node itself: passed
        "local_ct_hit/steady": _Expect(pkt(client_ping, fam.ping), dst=fam.pong, src=client_ping),
        "local_ct_hit/single": _Expect(pkt(client_local, fam.np_local), dst=fam.local_be,
                                       src=client_local),
        "remote_ct_hit": _Expect(pkt(client_remote, fam.np_remote), dst=fam.remote_be,
                                 src=snat, forwarded=True, next_mac=PEER_MAC),  # type: ignore[arg-type]
        "remote_reply": _Expect(pkt(fam.remote_be, snat, dmac=me, smac=PEER_MAC),  # type: ignore[arg-type]
                                dst=client_remote, src=fam.np_remote, forwarded=True,
                                next_mac=CLIENT_MAC),
        # leaving by tr0, at TC egress
        "local_reply": _Expect(frame(fam.local_be, client_local, ACK, CLIENT_MAC, me),
                               dst=client_local, src=fam.np_local),
    }


def _expect_key(row: str, method: str) -> str:
    return f"{row}/{method}" if row == "local_ct_hit" else row


def _check(fam: Family, hook: str, row: str, method: str, want: _Expect, res: Run,
           me: str) -> List[str]:
    """What is wrong with one repeat = 1 run of a row (nothing: [])."""
    verdict = {("xdp", "pass"): XDP_PASS, ("tc", "pass"): TC_ACT_OK,
               ("xdp", "fib"): XDP_PASS, ("tc", "fib"): TC_ACT_OK,
               ("xdp", "local_ct_hit"): XDP_PASS, ("tc", "local_ct_hit"): TC_ACT_OK,
               ("xdp", "remote_ct_hit"): XDP_TX, ("tc", "remote_ct_hit"): TC_ACT_REDIRECT,
               ("xdp", "remote_reply"): XDP_TX, ("tc", "remote_reply"): TC_ACT_REDIRECT,
               ("tc", "local_reply"): TC_ACT_OK}[(hook, row)]
    what = f"{fam.name} {hook} {row} {method}"
    got = parse(res.data)
    problems = []
    if res.retval != verdict:
        problems.append(f"{what}: verdict {res.retval}, expected {verdict}")
    if row in ("pass", "fib"):  # fib: the reference program found the route and neighbour
        if res.data != want.input:
            problems.append(f"{what}: a passed packet was changed")
        return problems
    if got["dst"] != want.dst:
        problems.append(f"{what}: destination {got['dst']}, expected {want.dst}")
    if got["src"] != want.src:
        problems.append(f"{what}: source {got['src']}, expected {want.src}")
    if not (got["ip_csum_ok"] and got["tcp_csum_ok"]):
        problems.append(f"{what}: checksum wrong after the rewrite ({got})")
    ttl_in = parse(want.input)["ttl"]
    if got["ttl"] != (ttl_in - 1 if want.forwarded else ttl_in):  # type: ignore[operator]
        problems.append(f"{what}: TTL / hop limit {got['ttl']}, input {ttl_in}")
    if hook == "xdp" and want.next_mac and (got["dmac"], got["smac"]) != (want.next_mac, me):
        problems.append(f"{what}: sent to {got['dmac']} from {got['smac']}, expected "
                        f"{want.next_mac} from {me}")
    return problems


def _moved(before: Dict[str, int], after: Dict[str, int]) -> Dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def _measure(dp: Dataplane, ns: TestNetns, ref_fds: Dict[Tuple[str, str, str], int], reps: int,
             repeat: int, n_single: int) -> Dict:
    fds = {"xdp": dp.progs.node_xdp.fd, "tc": dp.progs.node_in.fd}
    out_fd = dp.progs.node_out.fd
    me, ifx = ns.mac, ns.ifindex

    def runner(hook: str, p: bytes, fd: Optional[int] = None) -> Runner:
        return Runner(fds[hook] if fd is None else fd, p, hook == "xdp", ifx)

    checks: Dict[str, object] = {}
    dp.clear_ct()
    wants = {fam.name: _family_rows(fam, me, lambda p: runner("xdp", p), checks)
             for fam in FAMILIES}
    # (IP family, program family, row, method) -> its runner
    runners: Dict[Tuple[str, str, str, str], Runner] = {}
    for fam in FAMILIES:
        w = wants[fam.name]
        for hook in ("xdp", "tc"):
            for row, method in ROWS:
                if row == "local_reply":
                    continue
                if (hook, row, fam.name) in ref_fds:
                    runners[(fam.name, hook, row, method)] = runner(hook, w["pass"].input,
                                                                    ref_fds[(hook, row, fam.name)])
                else:
                    runners[(fam.name, hook, row, method)] = runner(
                        hook, w[_expect_key(row, method)].input)
        # Replies of local backends are turned back at TC egress in both modes (XDP has no egress).
        runners[(fam.name, "tc", "local_reply", "single")] = runner("tc", w["local_reply"].input, out_fd)

    # What each row does, once, with repeat = 1: verdict and rewrite.
    problems: List[str] = []
    for (fam_name, hook, row, method), r in sorted(runners.items()):
        if row == "bare":
            continue
        fam = V6 if fam_name == V6.name else V4
        res = r.run()
        checks[f"{fam_name}/{hook}/{row}/{method}"] = {"retval": res.retval, **parse(res.data)}
        want = wants[fam_name]["pass" if row == "fib" else _expect_key(row, method)]
        problems += _check(fam, hook, row, method, want, res, me)
    if problems:
        raise RuntimeError("north-south test runs do not do what they should:\n  "
                           + "\n  ".join(problems))
    stats_before = dp.stats()

    # samples[IP family][program family][method][row]: ns per run, one per repetition
    samples: Dict[str, Dict[str, Dict[str, Dict[str, List[float]]]]] = {}
    timed_runs = 0

    def timed(fam_name: str, hook: str, row: str, method: str, r: Runner) -> None:
        nonlocal timed_runs
        before = dp.stats()
        if method == "steady":
            n, value = repeat, float(r.run(repeat).duration_ns)
        else:
            n, value = n_single, r.mean_single(n_single)
        moved = _moved(before, dp.stats())
        want = {k: v * n for k, v in COUNTS.get((hook, row), {}).items()}
        if moved != want:
            problems.append(f"{fam_name} {hook} {row} {method}: counted {moved}, expected {want}")
        timed_runs += 1
        (samples.setdefault(fam_name, {}).setdefault(hook, {}).setdefault(method, {})
         .setdefault(row, []).append(value))

    for rep in range(reps):
        hooks = ["xdp", "tc"] if rep % 2 == 0 else ["tc", "xdp"]
        for hook in hooks:
            for i, (row, method) in enumerate(ROWS):
                order = FAMILIES if (rep + i) % 2 == 0 else FAMILIES[::-1]
                for fam in order:
                    r = runners.get((fam.name, hook, row, method))
                    if r is not None:
                        timed(fam.name, hook, row, method, r)
    stats_after = dp.stats()
    if problems:
        raise RuntimeError("timed north-south runs did not take the path they are timed for:\n  "
                           + "\n  ".join(problems))

    def summarise(fam_name: str) -> Dict:
        return {hook: {method: {row: common.summary(s) for row, s in rows.items()}
                       for method, rows in methods.items()}
                for hook, methods in samples[fam_name].items()}

    # IPv6 / IPv4 per repetition (the two runs of a pair were made back to back), then summarised.
    ratio6 = {hook: {method: {row: common.summary([b / a for a, b in zip(s, samples[V6.name][hook][method][row])])
                              for row, s in rows.items()}
                     for method, rows in methods.items()}
              for hook, methods in samples[V4.name].items()}
    return {"results": summarise(V4.name), "results6": summarise(V6.name), "ratio6": ratio6,
            "samples": samples[V4.name], "samples6": samples[V6.name], "checks": checks,
            "snat_port_range": list(dp.snat_range),
            "counted_runs": timed_runs,
            "lb_stats_during_timing": _moved(stats_before, stats_after)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--single", type=int, default=20_000)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    res = measure(args.reps, args.repeat, args.single)
    rows = []
    for hook in ("xdp", "tc"):
        for row, method in ROWS:
            v4 = res["results"][hook][method].get(row)
            if v4:
                v6 = res["results6"][hook][method][row]
                rows.append(f"{hook:4} {method:7} {row:14} ipv4 {v4['median']:8.1f}  "
                            f"ipv6 {v6['median']:8.1f}  ipv6/ipv4 "
                            f"{res['ratio6'][hook][method][row]['median']:.2f}")
    print("\n".join(rows))
    print(json.dumps({"lb_stats_during_timing": res["lb_stats_during_timing"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
