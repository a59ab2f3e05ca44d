"""Pinned maps across agent versions: a changed size or layout is detected and migrated or
recreated deliberately, never silently reused; readers refuse a changed layout."""
import ctypes
import logging
import os
import shutil

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from ebpflb.dataplane.bcc_maps import read_conntrack
from ebpflb.dataplane.config import DataplaneConfig
from ebpflb.dataplane.libbpf import libbpf, map_info
from ebpflb.dataplane.loader import MAP_NAMES, DataplaneError, load_programs, open_maps
from ebpflb.dataplane.testrun import test_run as bpf_run

from ..conftest import unique
from .test_lb4_packets import ETH, MANIFEST

pytestmark = pytest.mark.bpf


@pytest.fixture
def pin_dir(require_root):
    path = f"/sys/fs/bpf/{unique('ebpflb-pins-')}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def program(progs, config):
    from ebpflb.dataplane.bcc_maps import BccMapWriter
    from ebpflb.manifests import parse_documents
    from ebpflb.model import desired_state
    from ebpflb.reconcile import reconcile

    m = parse_documents(MANIFEST, "<test>")
    reconcile(desired_state(m.services, m.slices), BccMapWriter(progs.bpf), config.map_limits)


def test_conntrack_survives_a_size_change(pin_dir, caplog):
    small = DataplaneConfig(pin_dir=pin_dir, ct_max_entries=1024)
    progs = load_programs(small)
    program(progs, small)
    for sport in range(40000, 40010):
        for flags in ("S", "A"):  # handshake completed: the flows are in the main table
            pkt = Ether(**ETH) / IP(src="10.244.0.2", dst="10.96.0.10") / TCP(sport=sport, dport=80, flags=flags)
            bpf_run(progs.from_pod.fd, bytes(pkt))
    before = sorted((e.saddr, e.sport, e.nat_addr) for e in read_conntrack(progs.bpf))
    assert len(before) == 20

    big = DataplaneConfig(pin_dir=pin_dir, ct_max_entries=4096)
    with caplog.at_level(logging.WARNING):
        again = load_programs(big)
    assert map_info(again.bpf[b"ct4"].map_fd).max_entries == 4096
    assert sorted((e.saddr, e.sport, e.nat_addr) for e in read_conntrack(again.bpf)) == before
    assert "pinned max entries 1024, programs expect 4096" in caplog.text
    assert "20 conntrack entries carried over" in caplog.text
    assert sorted(os.listdir(pin_dir)) == sorted(MAP_NAMES)  # nothing left over


def _pin_foreign_map(path: str, value_size: int) -> None:
    """A hash map with another value layout at a pin path, as an older version might leave."""
    create = libbpf().bpf_map_create
    create.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32,
                       ctypes.c_uint32, ctypes.c_void_p]
    create.restype = ctypes.c_int
    fd = create(1, b"lb4_backends", 4, value_size, 65536, None)  # BPF_MAP_TYPE_HASH
    assert fd >= 0
    pin = libbpf().bpf_obj_pin
    pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
    assert pin(fd, path.encode()) == 0
    os.close(fd)


def test_a_changed_layout_is_refused_by_readers_and_recreated_by_the_agent(pin_dir, caplog):
    os.makedirs(pin_dir, mode=0o700)
    _pin_foreign_map(os.path.join(pin_dir, "lb4_backends"), value_size=8)
    config = DataplaneConfig(pin_dir=pin_dir)
    load_programs(config)  # creates the other maps, recreates lb4_backends
    os.unlink(os.path.join(pin_dir, "lb4_backends"))
    _pin_foreign_map(os.path.join(pin_dir, "lb4_backends"), value_size=8)
    with pytest.raises(DataplaneError, match="lb4_backends: pinned value size 8, programs expect 12"):
        open_maps(config)
    with caplog.at_level(logging.WARNING):
        progs = load_programs(config)
    assert map_info(progs.bpf[b"lb4_backends"].map_fd).value_size == 12
    assert "map lb4_backends recreated empty" in caplog.text
    program(progs, config)  # and it works
