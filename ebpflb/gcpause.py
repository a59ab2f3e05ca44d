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
