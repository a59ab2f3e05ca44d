"""Fixtures for the bpf tier: the real TC programs loaded into the kernel with maps pinned in a
directory unique to the test session, provisioned through the real control-plane path
(manifest text -> model -> plan -> apply through bcc), and run with BPF_PROG_TEST_RUN."""
import contextlib
import os
import shutil
from typing import Iterator, Tuple

import pytest

from ebpflb.dataplane.bcc_maps import BccMapWriter
from ebpflb.dataplane.config import DataplaneConfig
from ebpflb.dataplane.loader import load_programs
from ebpflb.manifests import parse_documents
from ebpflb.model import desired_state
from ebpflb.reconcile import reconcile

from ..conftest import unique

TC_ACT_OK = 0
TC_ACT_SHOT = 2


class Dataplane:
    def __init__(self, config: DataplaneConfig):
        self.config = config
        self.progs = load_programs(config)
        self.writer = BccMapWriter(self.progs.bpf)

    def program(self, manifest_text: str):
        """Programs the maps from manifest YAML exactly as the agent would."""
        m = parse_documents(manifest_text, "<test>")
        return reconcile(desired_state(m.services, m.slices), self.writer, self.config.map_limits)

    def clear_conntrack(self) -> None:
        """Forgets every flow, and every datagram in fragments."""
        for table in (b"ct4", b"ct4_syn", b"frag4"):
            self.progs.bpf[table].clear()

    def ct_entries(self) -> int:
        return sum(len(self.progs.bpf[table]) for table in (b"ct4", b"ct4_syn"))

    def stats(self):
        """Every global counter: drop reasons and events by name, verdicts as "hook/verdict"."""
        from ebpflb.dataplane.bcc_maps import read_counters
        return read_counters(self.progs.bpf)


@pytest.fixture(scope="session")
def dataplane():
    if os.geteuid() != 0:
        pytest.skip("needs root to load BPF programs")
    config = DataplaneConfig(pin_dir=f"/sys/fs/bpf/{unique('ebpflb-test-')}", ct_max_entries=65536)
    try:
        dp = Dataplane(config)
        yield dp
    finally:
        shutil.rmtree(config.pin_dir, ignore_errors=True)


def _verdict_and_drop_totals(counters) -> Tuple[int, int, int]:
    """(verdicts, drop verdicts, drop reasons) in a read_counters() dict."""
    from ebpflb.dataplane.bcc_maps import DROP_REASONS

    verdicts = {k: n for k, n in counters.items() if "/" in k}
    return (sum(verdicts.values()), sum(n for k, n in verdicts.items() if k.endswith("/drop")),
            sum(counters[k] for k in DROP_REASONS))


@pytest.fixture(autouse=True)
def one_verdict_per_run(request, monkeypatch):
    """Every test that runs the session's programs checks the counters' contract on the way: each
    BPF_PROG_TEST_RUN moves exactly one verdict counter, and each drop exactly one drop reason.
    A module whose packets also reach the programs another way (real devices, socket hooks) sets
    REAL_TRAFFIC = True and keeps the second check only."""
    if "dataplane" not in request.fixturenames:
        yield
        return
    from ebpflb.dataplane import testrun

    dp = request.getfixturevalue("dataplane")
    fds = {getattr(p, "fd", None) for p in vars(dp.progs).values()} - {None}
    runs = [0]
    real_run = testrun._run

    def counting_run(prog_fd, packet, ctx, repeat):
        if prog_fd in fds:
            runs[0] += repeat
        return real_run(prog_fd, packet, ctx, repeat)

    monkeypatch.setattr(testrun, "_run", counting_run)
    before = _verdict_and_drop_totals(dp.stats())
    yield
    after = _verdict_and_drop_totals(dp.stats())
    verdicts, drops, reasons = (a - b for a, b in zip(after, before))
    assert drops == reasons, f"{drops} drop verdicts but {reasons} drop reasons counted"
    if not getattr(request.module, "REAL_TRAFFIC", False):
        assert verdicts == runs[0], f"{runs[0]} program runs moved {verdicts} verdict counters"


@contextlib.contextmanager
def maps_only(prefix: str, **sizes: int) -> Iterator[Tuple[DataplaneConfig, BccMapWriter]]:
    """The control-plane maps without programs, pinned in a directory of their own (sizes as
    DataplaneConfig takes them), removed afterwards, also on failure."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create BPF maps")
    from ebpflb.dataplane.loader import open_maps

    config = DataplaneConfig(pin_dir=f"/sys/fs/bpf/{unique(prefix)}", **sizes)
    try:
        yield config, BccMapWriter(open_maps(config, create=True))
    finally:
        shutil.rmtree(config.pin_dir, ignore_errors=True)
    assert not os.path.exists(config.pin_dir)
