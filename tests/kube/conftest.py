"""Fixtures of the `kube` tier: the Kubernetes API source against a FAKE API server
(tests/kube/fake_apiserver.py) over real HTTP on loopback, driven by the unmodified `kubernetes`
client. No root and no kernel needed; every test in tests/kube/ gets the `kube` marker."""
import os
from typing import Callable, Iterator, List

import pytest

from .fake_apiserver import FakeApiServer

KUBE_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    for item in items:
        if str(item.path).startswith(KUBE_TESTS_DIR + os.sep):
            item.add_marker(pytest.mark.kube)


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    pytest.importorskip("kubernetes")
    server = FakeApiServer(bookmark_interval=0.2).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def make_source(fake: FakeApiServer, tmp_path) -> Iterator[Callable[..., object]]:
    """make_source(**kwargs) -> a started KubernetesSource reading the fake through a kubeconfig
    file, as `ebpflb agent --kubeconfig` does; stopped after the test."""
    from ebpflb.sources.kubernetes import KubernetesSource, api_client_from

    made = []
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(fake.kubeconfig())

    def _make(**kwargs):
        kwargs.setdefault("backoff_base", 0.05)
        kwargs.setdefault("backoff_cap", 0.5)
        kwargs.setdefault("watch_timeout", 30)
        src = KubernetesSource(api_client_from(str(kubeconfig)), **kwargs)
        made.append(src)
        src.start()
        return src

    try:
        yield _make
    finally:
        for src in made:
            src.stop()
