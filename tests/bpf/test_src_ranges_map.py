"""lb4_src_ranges in the kernel: loadBalancerSourceRanges go through the real apply path into the
LPM trie, dump back as the planner wrote them, and the kernel's longest-prefix lookup with the
key the programs build ({prefixlen 64, svc id, client}) matches exactly the clients inside."""
import shutil

import pytest

from ebpflb.apply import read_snapshot
from ebpflb.dataplane.bcc_maps import BccMapWriter, ip_to_be32
from ebpflb.dataplane.config import DataplaneConfig
from ebpflb.dataplane.loader import open_maps
from ebpflb.manifests import parse_documents
from ebpflb.maps import SERVICES, SRC_RANGES, SVC_F_SRC_RANGES, SrcRangeKey, SvcKey
from ebpflb.model import desired_state
from ebpflb.reconcile import reconcile

from ..conftest import unique

pytestmark = pytest.mark.bpf

LB_IP = "192.0.2.50"
MANIFEST = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP, nodePort: 30080}]
  %s
status: {loadBalancer: {ingress: [{ip: 192.0.2.50}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.0.11], nodeName: node-0, conditions: {ready: true}}
"""
RANGES = 'loadBalancerSourceRanges: [10.1.0.0/16, "203.0.113.7/32"]'


@pytest.fixture
def maps(require_root):
    config = DataplaneConfig(pin_dir=f"/sys/fs/bpf/{unique('ebpflb-srcr-')}")
    try:
        yield config, open_maps(config, create=True)
    finally:
        shutil.rmtree(config.pin_dir, ignore_errors=True)


def sync(config, bpf, spec_extra: str):
    m = parse_documents(MANIFEST % spec_extra, "<test>")
    return reconcile(desired_state(m.services, m.slices, node_addresses=["192.168.200.10"]),
                     BccMapWriter(bpf), config.map_limits)


def allowed(bpf, svc_id: int, client: str) -> bool:
    """The programs' lookup: the full 64 bits, the kernel picks the longest matching prefix."""
    t = bpf[SRC_RANGES.encode()]
    try:
        return t[t.Key(prefixlen=64, svc_id=svc_id, addr=ip_to_be32(client))].value == 1
    except KeyError:
        return False


def test_ranges_apply_dump_and_match(maps):
    config, bpf = maps
    result = sync(config, bpf, RANGES)
    snap = read_snapshot(BccMapWriter(bpf))
    assert snap == result.snapshot  # what the kernel holds is what the planner expects
    lb = snap[SERVICES][SvcKey(LB_IP, 80, 6)]
    assert lb.flags & SVC_F_SRC_RANGES
    assert snap[SRC_RANGES] == {SrcRangeKey(lb.svc_id, "10.1.0.0/16"): 1,
                                SrcRangeKey(lb.svc_id, "203.0.113.7/32"): 1}
    # The cluster IP and node port of the same Service are not restricted.
    others = [v for k, v in snap[SERVICES].items() if k.vip != LB_IP]
    assert len(others) == 2 and not any(v.flags & SVC_F_SRC_RANGES for v in others)

    assert allowed(bpf, lb.svc_id, "10.1.0.1") and allowed(bpf, lb.svc_id, "10.1.255.255")
    assert allowed(bpf, lb.svc_id, "203.0.113.7")
    assert not allowed(bpf, lb.svc_id, "10.2.0.1")
    assert not allowed(bpf, lb.svc_id, "203.0.113.8")
    # svc_id is matched in full: another frontend's clients are not let in by these ranges
    assert not any(allowed(bpf, v.svc_id, "10.1.0.1") for v in others)

    # Ranges removed: the flag is cleared and the records deleted; nothing else changes.
    cleared = sync(config, bpf, "")
    assert read_snapshot(BccMapWriter(bpf))[SRC_RANGES] == {}
    assert not read_snapshot(BccMapWriter(bpf))[SERVICES][SvcKey(LB_IP, 80, 6)].flags & SVC_F_SRC_RANGES
    assert {op.map for op in cleared.plan.ops} == {SERVICES, SRC_RANGES}
    assert not allowed(bpf, lb.svc_id, "10.1.0.1")
    assert not sync(config, bpf, "").plan  # a second pass over the dump finds nothing to do
