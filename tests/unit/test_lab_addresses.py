"""The lab's address plan (ebpflb/lab/topology.py, pure): the IPv6 side of a dual-stack lab."""
import ipaddress

import pytest

from ebpflb.lab import topology as topo

pytestmark = pytest.mark.unit


def test_a_pods_ipv6_address_follows_its_ipv4_one():
    assert topo.pod_ip6("10.244.0.2") == "fd00:10:244::2"
    assert topo.pod_ip6("10.244.0.11") == "fd00:10:244::b"
    assert topo.pod_ip6("10.244.3.200") == "fd00:10:244:3::c8"
    # Every pod of every node: distinct, in its node's /64, inside the lab's IPv6 pod range.
    pods = topo.default_pods(nodes=4)
    six = [topo.pod_ip6(p.ip) for p in pods]
    assert len(set(six)) == len(pods)
    for pod, ip6 in zip(pods, six):
        assert ipaddress.IPv6Address(ip6) in ipaddress.IPv6Network(topo.node_pod_cidr6(pod.node))
        assert ipaddress.IPv6Address(ip6) in ipaddress.IPv6Network(topo.POD_CIDR6)


def test_node_addresses_and_families():
    assert [topo.node_address6(k) for k in range(3)] == ["fd00:200::a", "fd00:200::b",
                                                         "fd00:200::c"]
    assert topo.EXT_ADDRESS6 not in {topo.node_address6(k) for k in range(topo.MAX_NODES)}
    assert topo.validate_ip_family("dual") == "dual"
    with pytest.raises(ValueError, match="invalid IP family 'ipv6'"):
        topo.validate_ip_family("ipv6")
