"""Reading per-CPU counter arrays fast: one BPF_MAP_LOOKUP_BATCH call (libbpf) per chunk into one
flat buffer of uint64, summed over CPUs by ebpflb.statsagg (Cython). Iterating key by key through
bcc costs a syscall and a Python object per key and CPU; at 65,536 ids that is seconds, this is
milliseconds."""
import ctypes
import errno
import os
from functools import lru_cache
from typing import Any, Dict, Tuple

from ..maps import FLOW_FIELDS, Counters
from ..statsagg import nonzero_keys, sum_per_cpu
from .libbpf import libbpf, map_info



def possible_cpus() -> int:
    """Per-CPU maps hold one value per possible CPU (not online CPU)."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


@lru_cache(maxsize=1)
def _lookup_batch():
    fn = libbpf().bpf_map_lookup_batch
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def read_percpu_array(fd: int, max_entries: int, value_size: int) -> Tuple[ctypes.Array, int]:
    """All values of a per-CPU array as uint64s laid out [key][cpu][field]; and the CPU count."""
    n_cpus = possible_cpus()
    stride = (value_size + 7) // 8 * 8
    words_per_key = n_cpus * stride // 8
    values = (ctypes.c_uint64 * (max_entries * words_per_key))()
    keys = (ctypes.c_uint32 * max_entries)()
    out_batch = ctypes.c_uint32(0)
    lookup = _lookup_batch()
    done = 0
    first = True
    while done < max_entries:
        count = ctypes.c_uint32(max_entries - done)
        in_batch = None if first else ctypes.byref(out_batch)
        rc = lookup(fd, in_batch, ctypes.byref(out_batch),
                    ctypes.addressof(keys) + 4 * done,
                    ctypes.addressof(values) + 8 * words_per_key * done, ctypes.byref(count), None)
        done += count.value
        first = False
        if rc != 0:
            err = ctypes.get_errno() or -rc
            if err == errno.ENOENT:
                break
            raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
    if done != max_entries:
        raise OSError(errno.EIO, f"BPF_MAP_LOOKUP_BATCH returned {done} of {max_entries} entries")
    return values, n_cpus


def read_counter_array(table: Any) -> Tuple[int, ...]:
    """A per-CPU array of u64 counters (lb_verdicts, lb_stats), summed over CPUs, by index."""
    entries = map_info(table.map_fd).max_entries
    values, n_cpus = read_percpu_array(table.map_fd, entries, 8)
    return tuple(sum_per_cpu(values, entries, n_cpus, 1))


def read_flow_stats(bpf: Any, map_name: str) -> Dict[int, Counters]:
    """Per-id traffic counters summed over CPUs; ids whose counters are all zero are left out."""
    t = bpf[map_name.encode()]
    n_fields = len(FLOW_FIELDS)
    value_size = ctypes.sizeof(t.sLeaf)  # bcc's Leaf of a per-CPU map is the array of all CPUs'
    if value_size != 8 * n_fields:
        raise ValueError(f"{map_name}: value size {value_size} is not {n_fields} counters")
    entries = map_info(t.map_fd).max_entries  # the pinned map's own size, not the compiled one
    values, n_cpus = read_percpu_array(t.map_fd, entries, value_size)
    summed = sum_per_cpu(values, entries, n_cpus, n_fields)
    return {k: Counters(*summed[k * n_fields:(k + 1) * n_fields])
            for k in nonzero_keys(summed, n_fields)}


def read_hash_raw(table: Any, chunk: int = 8192) -> Tuple[bytes, bytes, int]:
    """Every key and value of a hash map as two flat byte strings, with batch lookups (a scrape or
    a GC pass must not cost a syscall per entry at hundreds of thousands of flows)."""
    key_size = ctypes.sizeof(table.Key)
    value_size = ctypes.sizeof(table.Leaf)
    keys = ctypes.create_string_buffer(chunk * key_size)
    values = ctypes.create_string_buffer(chunk * value_size)
    out_batch = ctypes.create_string_buffer(max(key_size, 8))
    lookup = _lookup_batch()
    key_parts, value_parts = [], []
    total = 0
    first = True
    while True:
        count = ctypes.c_uint32(chunk)
        rc = lookup(table.map_fd, None if first else out_batch, out_batch, keys, values,
                    ctypes.byref(count), None)
        key_parts.append(keys.raw[:count.value * key_size])
        value_parts.append(values.raw[:count.value * value_size])
        total += count.value
        first = False
        if rc != 0:
            err = ctypes.get_errno() or -rc
            if err == errno.ENOENT:
                return b"".join(key_parts), b"".join(value_parts), total
            raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")


def count_entries(table: Any) -> int:
    return read_hash_raw(table)[2]
