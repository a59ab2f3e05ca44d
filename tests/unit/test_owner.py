"""The pin directory's owner lock (ebpflb.dataplane.owner) on an ordinary directory: flock works
the same there as on bpffs, without root. The lab tier runs it against real agents
(tests/lab/test_ownership.py)."""
import os

import pytest

from ebpflb.dataplane import owner

pytestmark = pytest.mark.unit


def test_a_held_directory_is_refused_naming_the_holder(tmp_path):
    lock = owner.acquire(str(tmp_path))
    try:
        with pytest.raises(owner.Owned) as err:
            owner.acquire(str(tmp_path), wait=0.2)
        assert err.value.pid == os.getpid()
        assert f"owned by a running ebpflb process (pid {os.getpid()}" in str(err.value)
        with pytest.raises(owner.Owned):
            owner.for_command(str(tmp_path))
        assert owner.for_command(str(tmp_path), force=True) is None  # acts without the lock
    finally:
        lock.release()
    again = owner.for_command(str(tmp_path))
    assert again is not None
    again.release()


def test_no_directory_means_nothing_to_hold(tmp_path):
    assert owner.for_command(str(tmp_path / "absent")) is None
    assert owner.holder(str(tmp_path / "absent")) is None


def test_a_removed_directory_is_no_longer_held(tmp_path):
    pins = tmp_path / "pins"
    pins.mkdir()
    lock = owner.acquire(str(pins))
    try:
        assert lock.still_held()
        pins.rmdir()
        assert not lock.still_held()
        pins.mkdir()  # made again: another inode, which nobody holds
        assert not lock.still_held()
        other = owner.acquire(str(pins))
        other.release()
    finally:
        lock.release()


def test_holder_reads_proc_locks_by_device_and_inode(tmp_path):
    st = os.stat(tmp_path)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    locks = tmp_path / "locks"
    locks.write_text(
        "1: POSIX  ADVISORY  WRITE 11 00:01:5 0 EOF\n"
        f"2: FLOCK  ADVISORY  WRITE 4242 {ident} 0 EOF\n"
        f"2: -> FLOCK  ADVISORY  WRITE 4343 {ident} 0 EOF\n"
        "garbage line\n")
    assert owner.holder(str(tmp_path), str(locks)) == 4242
    locks.write_text(f"1: FLOCK  ADVISORY  WRITE 4242 {ident}0 0 EOF\n")  # another inode
    assert owner.holder(str(tmp_path), str(locks)) is None

