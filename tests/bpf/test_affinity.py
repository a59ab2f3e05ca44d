"""sessionAffinity: ClientIP in the data path (real programs): every new flow of a client goes to
the backend of its last new flow until the timeout since that use; switching the Service back to
None, or draining the backend (weight 0), takes effect for new flows."""
import time
from ipaddress import IPv4Address

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from ebpflb.dataplane.testrun import test_run as bpf_run
from ebpflb.flowhash import FLOW_HASH_SEED, flow_hash

from .test_lb4_packets import ETH, MANIFEST, WEB_BACKENDS

pytestmark = pytest.mark.bpf

VIP = "10.96.0.10"


def with_affinity(timeout: int, extra: str = "") -> str:
    return MANIFEST.replace(
        "  clusterIP: 10.96.0.10\n",
        f"  clusterIP: 10.96.0.10\n  sessionAffinity: ClientIP\n"
        f"  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {timeout}}}}}\n", 1).replace(
        "metadata: {name: web, namespace: demo}",
        f"metadata: {{name: web, namespace: demo, annotations: {{{extra}}}}}", 1)


def new_flow(dp, client: str, sport: int) -> str:
    pkt = Ether(**ETH) / IP(src=client, dst=VIP) / TCP(sport=sport, dport=80, flags="S")
    return Ether(bpf_run(dp.progs.from_pod.fd, bytes(pkt)).data)[IP].dst


def hashed(client: str, sport: int, backends=WEB_BACKENDS) -> str:
    h = flow_hash(int(IPv4Address(client)), int(IPv4Address(VIP)), sport, 80, 6, FLOW_HASH_SEED)
    return backends[h % len(backends)]


@pytest.fixture
def dp(dataplane):
    yield dataplane
    dataplane.program(MANIFEST)
    dataplane.progs.bpf[b"lb4_affinity"].clear()
    dataplane.clear_conntrack()


def test_client_sticks_to_one_backend(dp):
    dp.program(with_affinity(3600))
    for client in ("10.244.3.1", "10.244.3.2", "10.244.3.3"):
        picks = {new_flow(dp, client, sport) for sport in range(30000, 30040)}
        assert len(picks) == 1
        assert picks == {hashed(client, 30000)}  # the first flow chose by hash
    # Without affinity the same ports spread.
    dp.program(MANIFEST)
    assert len({new_flow(dp, "10.244.3.1", sport) for sport in range(31000, 31040)}) == 3


def test_affinity_times_out_after_its_last_use(dp):
    dp.program(with_affinity(1))
    client = "10.244.3.9"
    bound = new_flow(dp, client, 32000)
    first, second = [p for p in range(32001, 33000) if hashed(client, p) != bound][:2]
    assert new_flow(dp, client, first) == bound  # within the timeout: the binding wins
    time.sleep(1.3)  # idle past the 1 s timeout: a new flow is hashed again
    assert new_flow(dp, client, second) == hashed(client, second)


def test_draining_backend_gets_no_new_flows_through_affinity(dp):
    dp.program(with_affinity(3600))
    client = "10.244.3.20"
    bound = new_flow(dp, client, 34000)
    dp.program(with_affinity(3600, f'"lb.ebpflb.io/backend-weights": "{bound}=0"'))
    picks = {new_flow(dp, client, sport) for sport in range(34001, 34030)}
    assert bound not in picks and len(picks) == 1  # re-bound to one live backend
