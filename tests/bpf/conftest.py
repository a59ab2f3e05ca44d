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
        """Forgets every flow (both families), and every datagram in fragments."""
        for table in (b"ct4", b"ct4_syn", b"frag4", b"ct6", b"ct6_syn"):
            self.progs.bpf[table].clear()

    def ct_entries(self) -> int:
        return sum(len(self.progs.bpf[table]) for table in (b"ct4", b"ct4_syn", b"ct6", b"ct6_syn"))

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


def _counter_arrays(bpf) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(lb_verdicts, lb_stats) summed over CPUs, by index: two batch reads."""
    from ebpflb.dataplane.percpu import read_counter_array

    return read_counter_array(bpf[b"lb_verdicts"]), read_counter_array(bpf[b"lb_stats"])


@pytest.fixture(autouse=True)
def one_verdict_per_run(request, monkeypatch):
    """Every test that runs the session's programs checks the counters' contract on each
    BPF_PROG_TEST_RUN (repeat 1): exactly one verdict counter moves by one, and when that verdict
    is a drop exactly one drop reason moves by one, else none. A module whose packets also reach
    the programs another way (real devices, socket hooks) sets REAL_TRAFFIC = True: its runs
    cannot be told apart from that traffic, so it checks the whole test instead (as many drop
    reasons as drop verdicts, which holds for any traffic)."""
    if "dataplane" not in request.fixturenames:
        yield
        return
    from ebpflb import abi
    from ebpflb.dataplane import testrun

    dp = request.getfixturevalue("dataplane")
    fds = {getattr(p, "fd", None) for p in vars(dp.progs).values()} - {None}
    real_traffic = getattr(request.module, "REAL_TRAFFIC", False)
    real_run = testrun._run
    drop_slots = {at * abi.VERDICT_MAX + abi.VERDICT_DROP for at in range(abi.AT_MAX)}

    def checked_run(prog_fd, packet, ctx, repeat):
        if prog_fd not in fds or repeat != 1:
            return real_run(prog_fd, packet, ctx, repeat)
        verdicts0, stats0 = _counter_arrays(dp.progs.bpf)
        result = real_run(prog_fd, packet, ctx, repeat)
        verdicts1, stats1 = _counter_arrays(dp.progs.bpf)
        moved = {i: b - a for i, (a, b) in enumerate(zip(verdicts0, verdicts1)) if b != a}
        reasons = sum(b - a for a, b in zip(stats0[:abi.STAT_DROP_REASONS],
                                            stats1[:abi.STAT_DROP_REASONS]))
        dropped = sum(n for i, n in moved.items() if i in drop_slots)
        assert list(moved.values()) == [1], f"one run moved verdict counters {moved}"
        assert reasons == dropped, f"{dropped} drop verdicts, {reasons} drop reasons in one run"
        return result

    def drops_and_reasons() -> Tuple[int, int]:
        verdicts, stats = _counter_arrays(dp.progs.bpf)
        return (sum(verdicts[i] for i in drop_slots), sum(stats[:abi.STAT_DROP_REASONS]))

    if real_traffic:
        before = drops_and_reasons()
        yield
        (drops, reasons) = (a - b for a, b in zip(drops_and_reasons(), before))
        assert drops == reasons, f"{drops} drop verdicts but {reasons} drop reasons"
        return
    monkeypatch.setattr(testrun, "_run", checked_run)
    yield


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
