"""The one handle on Debian's libbpf.so.1, for the calls bcc 0.26 does not wrap
(BPF_PROG_TEST_RUN, batch lookups). ctypes only: no build step, nothing to vendor."""
import ctypes
import ctypes.util
from functools import lru_cache


@lru_cache(maxsize=1)
def libbpf() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)


class MapInfo(ctypes.Structure):
    # The leading fields of struct bpf_map_info (uapi/linux/bpf.h), which never move.
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16)]


def map_info(fd: int) -> MapInfo:
    """What the kernel says of a map. A pinned map reused by bcc keeps the sizes it was created
    with, whatever the reusing program was compiled with."""
    fn = libbpf().bpf_obj_get_info_by_fd
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
    fn.restype = ctypes.c_int
    info = MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    rc = fn(fd, ctypes.byref(info), ctypes.byref(size))
    if rc != 0:
        err = ctypes.get_errno() or -rc
        raise OSError(err, f"BPF_OBJ_GET_INFO_BY_FD on fd {fd} failed")
    return info
