"""The lab's address plan (ebpflb/lab/topology.py, pure): the IPv6 side of a dual-stack lab, the
IPv6-only lab's plan and its validation, what a lab object and its state file say of the family,
and the manifests the lab's agent harness writes for an IPv6-only lab."""
import ipaddress

import pytest

from ebpflb.lab import topology as topo
from ebpflb.lab.agent_runner import ECHO_VIP6, WEB_VIP6, manifest
from ebpflb.lab.lab import Lab
from ebpflb.lab.topology import PodSpec
from ebpflb.manifests import parse_documents

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
    for family in ("ipv4", "ipv6", "dual"):
        assert topo.validate_ip_family(family) == family
    for bad in ("ipv5", "IPv6", "both", ""):
        with pytest.raises(ValueError, match=f"invalid IP family {bad!r}: use ipv4, ipv6 or dual"):
            topo.validate_ip_family(bad)
    assert [topo.has_ipv4(f) for f in topo.IP_FAMILIES] == [True, False, True]
    assert [topo.has_ipv6(f) for f in topo.IP_FAMILIES] == [False, True, True]
    # An IPv6-only lab's primary addresses are the IPv6 ones; the others' stay IPv4.
    assert topo.node_address_of(1, "ipv6") == "fd00:200::b"
    assert topo.node_address_of(1, "dual") == topo.node_address_of(1, "ipv4") == "192.168.200.11"
    assert topo.ext_address_of("ipv6") == topo.EXT_ADDRESS6
    assert topo.ext_address_of("dual") == topo.EXT_ADDRESS
    assert topo.node_pod_cidr_of(2, "ipv6") == "fd00:10:244:2::/64"
    assert topo.node_pod_cidr_of(2, "ipv4") == "10.244.2.0/24"
    with pytest.raises(ValueError, match="invalid node count"):
        topo.node_address6(topo.MAX_NODES)


def test_ipv6_only_default_pods_are_the_twins_of_the_ipv4_plan():
    four, six = topo.default_pods(nodes=3), topo.default_pods(nodes=3, ip_family="ipv6")
    assert [(p.name, p.node) for p in six] == [(p.name, p.node) for p in four]
    assert [p.ip for p in six] == [topo.pod_ip6(p.ip) for p in four]
    assert six[0] == PodSpec("client", "fd00:10:244::2")
    assert topo.validate_pods(six, 3, "ipv6") == six
    with pytest.raises(ValueError, match="invalid IP family"):
        topo.default_pods(ip_family="ipv7")


@pytest.mark.parametrize("pod,nodes,why", [
    (PodSpec("web-1", "10.244.0.11"), 1, r"pod web-1: ip '10\.244\.0\.11' is not an IPv6 address; "
                                         r"the pods of an IPv6-only lab have one in fd00:10:244::/56"),
    (PodSpec("web-1", "fd00:10:245::b"), 1, r"pod web-1: ip fd00:10:245::b is not in fd00:10:244::/56"),
    (PodSpec("web-1", "2001:db8::b"), 1, "is not in fd00:10:244::/56"),
    (PodSpec("web-1", "fd00:10:244:1::"), 2, r"not a host address \(interface id 0"),
    (PodSpec("web-1", "fd00:10:244::b%eth0"), 1, r"is not an IPv6 address a pod can have \(a zone"),
    (PodSpec("web-1", None), 1, "is not an IPv6 address"),
    (PodSpec("web-1", "fd00:10:244::b", 1), 2, r"not in node 1's pod CIDR fd00:10:244:1::/64"),
    (PodSpec("web-1", "fd00:10:244:1::b", 2), 2, r"node 2 is not a node of this lab"),
])
def test_ipv6_only_pods_are_refused_with_the_field_named(pod, nodes, why):
    with pytest.raises(ValueError, match=why):
        topo.validate_pods([pod], nodes, "ipv6")


def test_one_ipv6_address_in_two_spellings_is_one_address():
    pods = [PodSpec("web-1", "fd00:10:244:0:0::B"), PodSpec("web-2", "fd00:10:244::b")]
    assert topo.validate_pods(pods[:1], 1, "ipv6") == [PodSpec("web-1", "fd00:10:244::b")]
    with pytest.raises(ValueError, match="pod web-2: address fd00:10:244::b is used by another pod"):
        topo.validate_pods(pods, 1, "ipv6")


def test_an_ipv6_address_in_an_ipv4_lab_says_which_family_takes_it():
    for family in ("ipv4", "dual"):
        with pytest.raises(ValueError, match=r"pod web-1: invalid IPv4 address 'fd00:10:244::b' "
                                             r"\(an IPv6 address: use ip_family 'ipv6'"):
            topo.validate_pods([PodSpec("web-1", "fd00:10:244::b")], 1, family)
    with pytest.raises(ValueError, match="invalid IP family 'v6'"):
        topo.validate_pods([PodSpec("web-1", "10.244.0.11")], 1, "v6")


def test_ipv6_addresses_find_their_node_and_give_distinct_macs():
    pods = topo.default_pods(nodes=4, ip_family="ipv6")
    assert [topo.node_of_ip(p.ip, 4) for p in pods] == [p.node for p in pods]
    assert topo.node_of_ip("fd00:10:244:9::b", 4) == 0  # no such node: node 0, as for IPv4
    assert topo.node_of_ip("2001:db8::1", 4) == 0
    assert topo.pod_mac("fd00:10:244::b") == "0a:58:00:00:00:0b"
    assert topo.host_mac("fd00:10:244:1::b") == "ee:ee:01:00:00:0b"
    macs = {topo.pod_mac(p.ip) for p in pods} | {topo.host_mac(p.ip) for p in pods}
    assert len(macs) == 2 * len(pods)
    underlay = [topo.underlay_mac(topo.node_address6(k)) for k in range(topo.MAX_NODES)]
    underlay.append(topo.underlay_mac(topo.EXT_ADDRESS6))
    assert len(set(underlay)) == len(underlay)
    # Bridge ports are ca:fe:ff:ff:ff:<n>: never an addressed device's.
    assert not any(m.startswith("ca:fe:ff:ff:ff:") for m in underlay)


def _state(**extra):
    state = {"version": 1, "name": "t1", "node_ns": "t1-node", "nodes": 2,
             "pods": [{"name": "client", "ip": "10.244.0.2", "node": 0},
                      {"name": "n1-web-1", "ip": "10.244.1.11", "node": 1}]}
    state.update(extra)
    return state


def test_the_state_file_records_the_family_and_old_ones_read_as_ipv4():
    old = Lab.from_state(_state())  # written before there were families
    assert old.ip_family == "ipv4" and old.has_ipv4 and not old.has_ipv6
    assert old.ip("n1-web-1") == old.ip4("n1-web-1") == "10.244.1.11"
    assert old.ip6("n1-web-1") is None and old.ext_address == topo.EXT_ADDRESS
    assert Lab.from_state(_state(ip_family="bogus")).ip_family == "ipv4"
    dual = Lab.from_state(_state(ip_family="dual"))
    assert dual.ip4("n1-web-1") == "10.244.1.11" and dual.ip6("n1-web-1") == "fd00:10:244:1::b"
    six = Lab.from_state(_state(ip_family="ipv6", pods=[
        {"name": p.name, "ip": p.ip, "node": p.node}
        for p in topo.default_pods(1, nodes=2, n_web_per_node=1, ip_family="ipv6")]))
    assert six.ip_family == "ipv6" and six.has_ipv6 and not six.has_ipv4
    assert six.ip("n1-web-1") == six.ip6("n1-web-1") == "fd00:10:244:1::b"
    assert six.ip4("n1-web-1") is None
    assert six.node_address(1) == "fd00:200::b" and six.ext_address == topo.EXT_ADDRESS6
    assert Lab.from_state(six.to_state()).to_state() == six.to_state()
    assert six.to_state()["ip_family"] == "ipv6"


def test_the_harness_manifest_of_an_ipv6_only_lab_is_single_stack_ipv6():
    eps = [("web-1", "fd00:10:244::b", True), ("n1-web-1", "fd00:10:244:1::b", False)]
    m = parse_documents(manifest(eps, ip_family="ipv6"), "six.yaml",
                        service_cidrs=[topo.SERVICE_CIDR6])
    assert sorted(s.cluster_ips for s in m.services) == [(WEB_VIP6,), (ECHO_VIP6,)]
    assert {s.address_type for s in m.slices} == {"IPv6"}
    assert {tuple(e.addresses) for s in m.slices for e in s.endpoints} == {
        ("fd00:10:244::b",), ("fd00:10:244:1::b",)}
    with pytest.raises(ValueError, match="invalid ip_family 'dual'"):
        manifest(eps, ip_family="dual")
