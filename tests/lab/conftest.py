"""Fixtures of the `lab` tier: real traffic between network namespaces, as root.

Every lab a test brings up gets a unique short name ("t" + 5 hex digits) and is torn down by a
finalizer, also when the test fails; a session-level finalizer then removes anything left of the
names this session created and fails loudly if it had to. Every test in tests/lab/ gets the
`lab` marker.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import pytest

from ebpflb.lab import lab as lablib
from ebpflb.lab import nsops
from ebpflb.lab.topology import UDP_ECHO_PORT, PodSpec

LAB_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    # This hook sees the whole session's items: mark only ours.
    for item in items:
        if str(item.path).startswith(LAB_TESTS_DIR + os.sep):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(autouse=True)
def _lab_requirements() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces, veths, sysctls)")
    for tool in ("ip", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"lab tests need `{tool}` (Debian: iproute2, curl)")


class LabNames:
    """Lab names handed out in this session, so the session can sweep them at the end."""

    def __init__(self) -> None:
        self.names: List[str] = []

    def new(self) -> str:
        while True:
            name = "t" + secrets.token_hex(3)[:5]
            if name not in self.names and not os.path.exists(f"/run/netns/{name}-node"):
                break
        return self.register(name)

    def register(self, name: str) -> str:
        self.names.append(name)
        return name


@pytest.fixture(scope="session")
def lab_names() -> Iterator[LabNames]:
    names = LabNames()
    yield names
    if os.geteuid() != 0:
        return
    problems = []
    for name in names.names:
        try:
            removed = lablib.lab_down(name)
        except (lablib.LabError, OSError) as exc:
            problems.append(f"lab {name}: lab_down failed: {exc}")
            continue
        if removed:
            problems.append(f"lab {name}: leaked past its test, swept: {removed}")
    left = [ns for ns in nsops.list_netns() if any(ns.startswith(n + "-") for n in names.names)]
    if left:
        problems.append(f"namespaces still present: {left}")
    if problems:
        pytest.fail("lab session teardown: " + "; ".join(problems))


@pytest.fixture
def lab(lab_names: LabNames) -> Iterator[lablib.Lab]:
    """A lab with the default pods (client + web-1..web-4), removed after the test."""
    name = lab_names.new()
    the_lab = lablib.lab_up(name)
    try:
        yield the_lab
    finally:
        lablib.lab_down(name)


@pytest.fixture
def netns(lab_names: LabNames) -> Iterator[str]:
    """A bare network namespace named as a lab's node (so the session sweep knows it), always
    removed afterwards."""
    from ebpflb.lab.topology import node_netns

    name = node_netns(lab_names.new())
    nsops.create_netns(name)
    try:
        yield name
    finally:
        nsops.remove_netns(name)


@pytest.fixture
def make_lab(lab_names: LabNames) -> Iterator[Callable[..., lablib.Lab]]:
    """Factory for extra labs (own name or pods); every lab it made is removed after the test."""
    made: List[str] = []

    def _make(name: Optional[str] = None, pods: Optional[Sequence[PodSpec]] = None) -> lablib.Lab:
        name = lab_names.register(name) if name else lab_names.new()
        made.append(name)
        return lablib.lab_up(name, list(pods) if pods is not None else None)

    try:
        yield _make
    finally:
        for name in made:
            lablib.lab_down(name)


CurlFn = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def curl() -> CurlFn:
    """curl(lab_name, pod, url, max_time=5, *extra_args) run inside the pod; never raises on exit code."""

    def _curl(lab_name: str, pod: str, url: str, max_time: float = 5.0, *extra: str) -> subprocess.CompletedProcess:
        argv = ["curl", "-sS", "--max-time", str(max_time), *extra, url]
        return lablib.run_in_pod(lab_name, pod, argv, timeout=max_time + 10)

    return _curl


def udp_exchange(netns: str, ip: str, payload: bytes, port: int = UDP_ECHO_PORT,
                 timeout: float = 2.0) -> Tuple[bytes, Tuple[str, int]]:
    """Send one datagram from a socket created in `netns`; return (reply, replying address)."""
    with nsops.in_netns(netns):
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(timeout)
        sock.sendto(payload, (ip, port))
        data, peer = sock.recvfrom(65535)
    return data, peer


@pytest.fixture
def udp() -> Callable[..., Tuple[bytes, Tuple[str, int]]]:
    """udp(netns, ip, payload, port=9053, timeout=2) -> (reply, peer), from inside `netns`."""
    return udp_exchange
