"""Memory housekeeping around bulk work (pure core, shared by the steps that build many objects
at once: the document reader, the syncer and the agent): pausing CPython's cyclic garbage
collector, and handing freed C heap back to the system.

A big YAML document, a full sync or a burst of changes allocates hundreds of thousands of
objects that live on; each allocation threshold crossed triggers a collection that walks every
young object, and the oldest generation's walks grow with the heap. Measured: a 10,000-Service
`kind: List` YAML parses in 10 s with the collector on and 2.5 s with it paused.
"""
import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def paused_gc(bulk: bool = True) -> Iterator[None]:
    """The cyclic collector off while the block runs, when `bulk` (back on afterwards if it was
    on: nesting is harmless)."""
    was = gc.isenabled()
    if bulk and was:
        gc.disable()
    try:
        yield
    finally:
        if bulk and was:
            gc.enable()


def give_back_memory() -> None:
    """Returns the C heap's free pages to the system (glibc's malloc_trim): clang and LLVM free
    tens of MiB after compiling the programs, and a full sync frees its bulk buffers, but glibc
    keeps them mapped. Does nothing where there is no glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


M_MMAP_THRESHOLD = -3  # mallopt parameters (glibc's malloc.h)
M_ARENA_MAX = -8


def tune_malloc() -> None:
    """Keeps the agent's C heap from fragmenting: a fixed mmap threshold (glibc otherwise raises
    it after the first large free, and the API source's page buffers, about a megabyte each, then
    come from heaps that never shrink), and few arenas (one per thread otherwise). Does nothing
    where there is no glibc; EBPFLB_MALLOC_DEFAULTS=1 leaves glibc's defaults (to compare)."""
    import ctypes
    import ctypes.util
    import os

    if os.environ.get("EBPFLB_MALLOC_DEFAULTS") == "1":
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
        libc.mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass
