"""The one handle on Debian's libbpf.so.1, for the calls bcc 0.26 does not wrap
(BPF_PROG_TEST_RUN, batch lookups). ctypes only: no build step, nothing to vendor."""
import ctypes
import ctypes.util
from functools import lru_cache


@lru_cache(maxsize=1)
def libbpf() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
