"""Pinned maps across versions (the loader's guard): a pinned map whose type, key size, value size,
flags or size differs from what the programs being loaded were compiled with is never reused
silently. The agent recreates it deliberately, carrying conntrack over when its entry layout is
unchanged (only the size moved); read-only commands refuse and say why.

Why it matters: bcc reuses any map found at a pin path, so an upgrade that changed a struct would
otherwise have new programs read old bytes as new fields.
"""
import ctypes
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List

from .libbpf import libbpf, map_info

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mismatch:
    name: str
    what: str  # "value size 12 (now 16)", ...

    def __str__(self) -> str:
        return f"{self.name}: {self.what}"


def _expected_value_size(table: Any) -> int:
    # bcc's Leaf of a per-CPU map is the array of every CPU's value; the kernel counts one.
    return ctypes.sizeof(getattr(table, "sLeaf", table.Leaf))


def check(bpf: Any, names: List[str], sizes: bool = True) -> List[Mismatch]:
    """Compares each map bcc opened (created or reused from a pin) with what it was compiled for.
    sizes=False leaves max entries out: a reader cannot know the sizes the agent chose."""
    out = []
    for name in names:
        t = bpf[name.encode()]
        info = map_info(t.map_fd)
        for what, have, want in (("type", info.type, t.ttype),
                                 ("key size", info.key_size, ctypes.sizeof(t.Key)),
                                 ("value size", info.value_size, _expected_value_size(t)),
                                 ("max entries", info.max_entries, t.max_entries),
                                 ("flags", info.map_flags, t.flags)):
            if have != want and (sizes or what != "max entries"):
                out.append(Mismatch(name, f"pinned {what} {have}, programs expect {want}"))
    return out


def set_aside(pin_dir: str, names: List[str]) -> Dict[str, int]:
    """Opens each named pin, then unlinks it so a new compile creates a fresh map at its path.
    Returns the old maps' fds (to copy from; close them when done). bpffs cannot rename pins; an
    attached program holding an old map keeps it alive until the program is replaced."""
    fds = {}
    for name in names:
        path = os.path.join(pin_dir, name)
        fds[name] = open_pinned(path)
        os.unlink(path)
    return fds


def open_pinned(path: str) -> int:
    fn = libbpf().bpf_obj_get
    fn.argtypes = [ctypes.c_char_p]
    fn.restype = ctypes.c_int
    fd = fn(path.encode())
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"cannot open pinned map {path}")
    return fd


def copy_hash_entries(old_fd: int, new_table: Any, limit: int) -> int:
    """Copies up to `limit` entries of a hash map with the same key layout. A value that grew
    keeps its old bytes as a prefix and gets zeros after them: conntrack fields are only ever
    appended, and zero is what the programs read as "not recorded" (a flow carried over from the
    previous version keeps its translation)."""
    from .percpu import read_hash_raw

    new_size = ctypes.sizeof(new_table.Leaf)
    old_size = map_info(old_fd).value_size
    if old_size > new_size:
        raise ValueError(f"value shrank from {old_size} to {new_size} bytes: not carried over")

    class _Old:  # what read_hash_raw needs of a table
        map_fd = old_fd
        Key = new_table.Key
        Leaf = ctypes.c_char * old_size

    keys, values, count = read_hash_raw(_Old)
    count = min(count, limit)
    if not count:
        return 0
    if old_size != new_size:
        pad = bytes(new_size - old_size)
        values = b"".join(values[i * old_size:(i + 1) * old_size] + pad for i in range(count))
    k = (new_table.Key * count).from_buffer_copy(keys[:count * ctypes.sizeof(new_table.Key)])
    v = (new_table.Leaf * count).from_buffer_copy(values[:count * new_size])
    new_table.items_update_batch(k, v)
    return count
