"""An XDP program that passes every frame, for the lab's underlay ports.

A veth whose peer runs native XDP can only take the frames that program sends back with XDP_TX
(or redirects) when it runs XDP itself: without a program the frames wait in its ring until
something else wakes it, which is seconds. A real NIC has no such need, so the lab's "switch"
ports get this program, the way a NIC driver's ring is always there. Two instructions loaded
through libbpf, no compiler.
"""
import ctypes
import os

from ..dataplane.libbpf import libbpf

BPF_PROG_TYPE_XDP = 6
XDP_PASS = 2


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("regs", ctypes.c_uint8), ("off", ctypes.c_int16),
                ("imm", ctypes.c_int32)]


def load_xdp_pass() -> int:
    """A new program fd; the caller closes it once attached."""
    insns = (_Insn * 2)(_Insn(0xB7, 0, 0, XDP_PASS),  # r0 = XDP_PASS
                        _Insn(0x95, 0, 0, 0))  # exit
    fn = libbpf().bpf_prog_load
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p,
                   ctypes.c_size_t, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    fd = fn(BPF_PROG_TYPE_XDP, b"lab_xdp_pass", b"GPL", ctypes.cast(insns, ctypes.c_void_p), 2,
            None)
    if fd < 0:
        err = ctypes.get_errno() or -fd
        raise OSError(err, f"loading the lab's XDP pass program: {os.strerror(err)}")
    return fd
