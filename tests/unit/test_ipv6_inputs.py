"""IPv6 text from every source reaches the records in the one form the kernel's maps give back
(inet_ntop), or is refused with a clear error: a zoned address (fe80::1%eth0) used to escape as
an OSError from canonicalization, and a CIDR spelled by Python's ipaddress differed from its
read-back (a full sync then deleted what it had written)."""
import pytest

from ebpflb.explain import parse_flow
from ebpflb.fields import canonical_cidr, canonical_ip
from ebpflb.manifests import parse_documents
from ebpflb.model import desired_state
from ebpflb.node_info import primary_addresses
from ebpflb.plan import compute_plan
from ebpflb.maps import empty_snapshot
from ebpflb.policy import parse_policy

pytestmark = pytest.mark.unit


def test_canonical_forms():
    assert canonical_ip("FD00:0:0::A") == "fd00::a"
    assert canonical_ip("10.0.0.1") == "10.0.0.1"
    assert canonical_cidr("::ffff:a00:0/104") == "::ffff:10.0.0.0/104"
    with pytest.raises(ValueError, match="not a valid IPv6 address"):
        canonical_ip("fe80::1%eth0")


def test_source_ranges_are_written_as_the_maps_read_them_back():
    text = """
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: demo}
spec:
  type: LoadBalancer
  clusterIP: "fd00:10:96::5"
  clusterIPs: ["fd00:10:96::5"]
  ipFamilies: [IPv6]
  loadBalancerSourceRanges: ["2001:DB8:0::/32", "::ffff:10.0.0.0/104"]
  ports: [{port: 80, protocol: TCP}]
status: {loadBalancer: {ingress: [{ip: "2001:db8:1::50"}]}}
"""
    m = parse_documents(text, "lb.yaml")
    plan = compute_plan(desired_state(m.services, m.slices), empty_snapshot())
    cidrs = sorted(op.key.cidr for op in plan.ops if str(op.map) == "lb6_src_ranges")
    assert cidrs == ["2001:db8::/32", "::ffff:10.0.0.0/104"]


def test_a_zoned_address_is_refused_cleanly_wherever_it_comes_in():
    _, problems = parse_policy({"lb.ebpflb.io/backend-weights": "fd00::1%x=3"})
    assert problems and "is not IP=WEIGHT" in problems[0][1]
    with pytest.raises(ValueError, match=r"is not IPv4:PORT or \[IPv6\]:PORT"):
        parse_flow("[fe80::1%eth0]:4000", "[fd00::10]:80", "tcp")
    node = {"status": {"addresses": [{"type": "InternalIP", "address": "fe80::1%eth0"},
                                     {"type": "InternalIP", "address": "fd00::5"}]}}
    assert primary_addresses(node) == ("fd00::5",)
    import click

    from ebpflb.cli.agent_cmd import _ip_list

    with pytest.raises(click.BadParameter):
        _ip_list(["fe80::1%eth0"], "--node-address")
    assert _ip_list(["FD00::5", "10.0.0.1"], "--node-address") == ("fd00::5", "10.0.0.1")


def test_explain_takes_ipv6_endpoints_in_brackets_and_canonical():
    flow = parse_flow("[FD00:10:244::2]:4000", "[fd00:10:96:0::10]:80", "tcp")
    assert (flow.saddr, flow.daddr) == ("fd00:10:244::2", "fd00:10:96::10")
    with pytest.raises(ValueError, match="different IP families"):
        parse_flow("10.244.0.2:4000", "[fd00:10:96::10]:80", "tcp")
    with pytest.raises(ValueError):
        parse_flow("fd00::2:4000", "[fd00:10:96::10]:80", "tcp")  # no brackets
