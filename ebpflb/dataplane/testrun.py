"""BPF_PROG_TEST_RUN through libbpf's bpf_prog_test_run_opts (bcc 0.26 has no wrapper).

Runs a loaded program on a packet we hand it and returns the verdict and the packet as the program
left it. The packet tests and the benchmarks use it; nothing in the agent does.
"""
import ctypes
import os
from dataclasses import dataclass
from functools import lru_cache

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
    rc = _test_run_fn()(prog_fd, ctypes.byref(opts))
    if rc != 0:
        err = ctypes.get_errno() or -rc
        raise OSError(err, f"BPF_PROG_TEST_RUN failed: {os.strerror(err)}")
    return TestRunResult(opts.retval, buf_out.raw[: opts.data_size_out], opts.duration)
