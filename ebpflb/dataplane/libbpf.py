"""The one handle on Debian's libbpf.so.1, for the calls bcc 0.26 does not wrap or wraps slowly
(BPF_PROG_TEST_RUN, batch lookups, updates and deletes of packed records). ctypes only: no build
step, nothing to vendor."""
import ctypes
import ctypes.util
import errno
import os
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


class ProgInfo(ctypes.Structure):
    # The leading fields of struct bpf_prog_info, up to the name.
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
                ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64),
                ("name", ctypes.c_char * 16)]


def _prog_info(prog_id: int, map_ids: int = 0) -> "tuple[ProgInfo, list] | None":
    """A loaded program's info by id (None when it is gone), with up to `map_ids` map ids."""
    lib = libbpf()
    get_fd = lib.bpf_prog_get_fd_by_id
    get_fd.argtypes = [ctypes.c_uint32]
    get_fd.restype = ctypes.c_int
    fd = get_fd(prog_id)
    if fd < 0:
        return None
    try:
        fn = lib.bpf_obj_get_info_by_fd
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
        fn.restype = ctypes.c_int
        ids = (ctypes.c_uint32 * max(map_ids, 1))()
        info = ProgInfo(nr_map_ids=map_ids, map_ids=ctypes.addressof(ids) if map_ids else 0)
        size = ctypes.c_uint32(ctypes.sizeof(info))
        if fn(fd, ctypes.byref(info), ctypes.byref(size)) != 0:
            return None
        return info, list(ids[:min(map_ids, info.nr_map_ids)])
    finally:
        os.close(fd)


def prog_name(prog_id: int) -> str:
    """The name of a loaded program by id ("" when it is gone): how an XDP program attached to a
    device is recognised as ours."""
    got = _prog_info(prog_id)
    return got[0].name.decode(errors="replace") if got else ""


def prog_map_ids(prog_id: int) -> "frozenset[int]":
    """The ids of the maps a loaded program uses (empty when it is gone): which data plane an
    attached program belongs to."""
    first = _prog_info(prog_id)
    if not first or not first[0].nr_map_ids:
        return frozenset()
    again = _prog_info(prog_id, first[0].nr_map_ids)
    return frozenset(again[1]) if again else frozenset()


def _fn(name: str, argtypes: list) -> "ctypes._CFuncPtr":
    fn = getattr(libbpf(), name)
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn


def _check(rc: int, what: str) -> None:
    if rc < 0:
        err = ctypes.get_errno() or -rc
        raise OSError(err, f"{what}: {os.strerror(err)}")


def prog_id_of(fd: int) -> int:
    """The kernel's id of the program behind `fd` (what attachments and filters report)."""
    fn = _fn("bpf_obj_get_info_by_fd", [ctypes.c_int, ctypes.c_void_p,
                                        ctypes.POINTER(ctypes.c_uint32)])
    info = ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(fn(fd, ctypes.byref(info), ctypes.byref(size)), "BPF_OBJ_GET_INFO_BY_FD")
    return info.id


def update_batch(fd: int, keys: bytes, values: bytes, count: int) -> None:
    """BPF_MAP_UPDATE_BATCH of `count` packed keys and values. On failure, OSError whose
    `processed` attribute says how many records went in before the one that failed."""
    fn = _fn("bpf_map_update_batch", [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                                      ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p])
    n = ctypes.c_uint32(count)
    rc = fn(fd, keys, values, ctypes.byref(n), None)
    if rc < 0:
        err = ctypes.get_errno() or -rc
        exc = OSError(err, f"BPF_MAP_UPDATE_BATCH: {os.strerror(err)} after {n.value} of {count}")
        exc.processed = n.value  # type: ignore[attr-defined]
        raise exc


def delete_batch(fd: int, keys: bytes, count: int) -> int:
    """BPF_MAP_DELETE_BATCH; returns how many were deleted before an error, raising OSError
    with `processed` set as update_batch does."""
    fn = _fn("bpf_map_delete_batch", [ctypes.c_int, ctypes.c_char_p,
                                      ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p])
    n = ctypes.c_uint32(count)
    rc = fn(fd, keys, ctypes.byref(n), None)
    if rc < 0:
        err = ctypes.get_errno() or -rc
        exc = OSError(err, f"BPF_MAP_DELETE_BATCH: {os.strerror(err)} after {n.value} of {count}")
        exc.processed = n.value  # type: ignore[attr-defined]
        raise exc
    return n.value


def update_elem(fd: int, key: bytes, value: bytes) -> None:
    fn = _fn("bpf_map_update_elem", [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                                     ctypes.c_uint64])
    _check(fn(fd, key, value, 0), "BPF_MAP_UPDATE_ELEM")


def delete_elem(fd: int, key: bytes) -> bool:
    """True when the key was there."""
    fn = _fn("bpf_map_delete_elem", [ctypes.c_int, ctypes.c_char_p])
    rc = fn(fd, key)
    if rc < 0 and (ctypes.get_errno() or -rc) == errno.ENOENT:
        return False
    _check(rc, "BPF_MAP_DELETE_ELEM")
    return True


def lookup_elem(fd: int, key: bytes, value_size: int) -> "bytes | None":
    """The value of one packed key, or None when it is not there."""
    fn = _fn("bpf_map_lookup_elem", [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p])
    buf = ctypes.create_string_buffer(value_size)
    rc = fn(fd, key, buf)
    if rc < 0:
        if (ctypes.get_errno() or -rc) == errno.ENOENT:
            return None
        _check(rc, "BPF_MAP_LOOKUP_ELEM")
    return buf.raw
