"""BPF_PROG_TEST_RUN through libbpf's bpf_prog_test_run_opts (bcc 0.26 has no wrapper).

Runs a loaded program on a packet we hand it and returns the verdict and the packet as the program
left it. The packet tests and the benchmarks use it; nothing in the agent does.
"""
import ctypes
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional


from .libbpf import libbpf


class _TestRunOpts(ctypes.Structure):
    # struct bpf_test_run_opts of libbpf 1.x (bpf.h); sz tells libbpf which fields we know.
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


@lru_cache(maxsize=1)
def _test_run_fn():
    fn = libbpf().bpf_prog_test_run_opts
    fn.argtypes = [ctypes.c_int, ctypes.POINTER(_TestRunOpts)]
    fn.restype = ctypes.c_int
    return fn


@dataclass(frozen=True)
class TestRunResult:
    retval: int
    data: bytes
    duration_ns: int  # mean per run, as the kernel measured it


def test_run(prog_fd: int, packet: bytes, repeat: int = 1) -> TestRunResult:
    """Runs the program `repeat` times on `packet`. With repeat > 1 each run sees the buffer the
    previous run rewrote, so check rewrites with repeat=1 and time steady state with more."""
    retval, data, duration, _ = _run(prog_fd, packet, None, repeat)
    return TestRunResult(retval, data, duration)


@dataclass(frozen=True)
class TestRunCtxResult(TestRunResult):
    ctx: bytes = b""  # the context as the kernel wrote it back (struct __sk_buff / xdp_md)


_CTX_OUT_MAX = 1024  # more than struct __sk_buff (192 bytes in 6.x) or struct xdp_md


def test_run_ctx(prog_fd: int, packet: bytes, ctx: bytes, repeat: int = 1) -> TestRunCtxResult:
    """Like test_run, with a context in: a struct __sk_buff for TC programs, a struct xdp_md for
    XDP (build them with skb_ctx / xdp_ctx). Devices named in it are looked up in the network
    namespace of the calling thread, and so are the program's FIB lookups."""
    return TestRunCtxResult(*_run(prog_fd, packet, ctx, repeat))


def _run(prog_fd: int, packet: bytes, ctx: Optional[bytes], repeat: int):
    buf_in = ctypes.create_string_buffer(packet, len(packet))
    out_size = len(packet) + 256
    buf_out = ctypes.create_string_buffer(out_size)
    opts = _TestRunOpts()
    opts.sz = ctypes.sizeof(_TestRunOpts)
    opts.data_in = ctypes.cast(buf_in, ctypes.c_void_p)
    opts.data_size_in = len(packet)
    opts.data_out = ctypes.cast(buf_out, ctypes.c_void_p)
    opts.data_size_out = out_size
    opts.repeat = repeat
    if ctx is not None:
        ctx_in = ctypes.create_string_buffer(ctx, len(ctx))
        # The kernel writes back its whole context struct (ENOSPC if it does not fit), however
        # short the one passed in was.
        ctx_out = ctypes.create_string_buffer(max(len(ctx), _CTX_OUT_MAX))
        opts.ctx_in = ctypes.cast(ctx_in, ctypes.c_void_p)
        opts.ctx_size_in = len(ctx)
        opts.ctx_out = ctypes.cast(ctx_out, ctypes.c_void_p)
        opts.ctx_size_out = len(ctx_out)
    rc = _test_run_fn()(prog_fd, ctypes.byref(opts))
    if rc != 0:
        err = ctypes.get_errno() or -rc
        raise OSError(err, f"BPF_PROG_TEST_RUN failed: {os.strerror(err)}")
    ctx_back = ctx_out.raw[: opts.ctx_size_out] if ctx is not None else b""
    return opts.retval, buf_out.raw[: opts.data_size_out], opts.duration, ctx_back


# struct __sk_buff (uapi/linux/bpf.h) up to and including ifindex; the kernel accepts a shorter
# context and takes the rest as zero. Of these fields it allows only mark, priority,
# ingress_ifindex and ifindex to be set (convert___skb_to_skb).
_SKB_CTX_FIELDS = ("len", "pkt_type", "mark", "queue_mapping", "protocol", "vlan_present",
                   "vlan_tci", "vlan_proto", "priority", "ingress_ifindex", "ifindex")


def skb_ctx(ifindex: int = 0, ingress_ifindex: int = 0, mark: int = 0, priority: int = 0) -> bytes:
    """A struct __sk_buff for test_run_ctx. ifindex > 1 makes that device (in the calling
    thread's namespace) skb->dev, which is what skb->ifindex and bpf_fib_lookup see."""
    values = dict.fromkeys(_SKB_CTX_FIELDS, 0)
    values.update(ifindex=ifindex, ingress_ifindex=ingress_ifindex, mark=mark, priority=priority)
    return struct.pack(f"={len(values)}I", *(values[f] for f in _SKB_CTX_FIELDS))


def xdp_ctx(ingress_ifindex: int, packet_len: int, rx_queue_index: int = 0) -> bytes:
    """A struct xdp_md {data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    egress_ifindex} for test_run_ctx. The kernel wants data = data_meta = 0 (no metadata),
    data_end = the packet's length, egress_ifindex = 0, and looks the ingress device up in the
    calling thread's namespace (bpf_prog_test_run_xdp, xdp_convert_md_to_buff)."""
    return struct.pack("=6I", 0, packet_len, 0, ingress_ifindex, rx_queue_index, 0)
