"""The lens of the conformance scenarios' IPv6 twins (ebpflb/lab/family.py, pure): what a
scenario writes gets its IPv6 twin, what it reads back its IPv4 address again."""
import socket

import pytest

from ebpflb.lab import topology as topo
from ebpflb.lab.family import Family, ipv4_twin, ipv6_twin
from ebpflb.maps import HAIRPIN_ADDR, HAIRPIN_ADDR6

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("ip,six", [
    ("10.244.0.2", "fd00:10:244::2"), ("10.244.1.11", "fd00:10:244:1::b"),
    ("10.96.1.53", "fd00:10:96::135"), ("10.96.0.10", "fd00:10:96::a"), ("192.168.200.10", topo.node_address6(0)),
    ("192.168.200.2", topo.EXT_ADDRESS6), ("192.168.200.200", "fd00:200::c8"),
    (HAIRPIN_ADDR, HAIRPIN_ADDR6), ("0.0.0.0", "::")])
def test_twins_both_ways(ip, six):
    assert ipv6_twin(ip) == six and ipv4_twin(six) == ip


def test_only_lab_addresses_have_twins():
    with pytest.raises(ValueError):
        ipv6_twin("8.8.8.8")
    with pytest.raises(ValueError):
        ipv4_twin("2001:db8::1")


def test_the_lens():
    four, six = Family("ipv4"), Family("ipv6")
    text = ("  clusterIP: 10.96.1.1\naddressType: IPv4\nendpoints:\n"
            "- {addresses: [10.244.0.11]}\n  loadBalancerSourceRanges: [192.168.200.8/29]\n")
    assert four.manifest(text) == text and four.url("http://10.96.1.1/") == "http://10.96.1.1/"
    assert six.manifest(text) == (
        '  clusterIP: "fd00:10:96::101"\naddressType: IPv6\nendpoints:\n'
        '- {addresses: ["fd00:10:244::b"]}\n  loadBalancerSourceRanges: ["fd00:200::8/125"]\n')
    assert six.url("http://192.168.200.10:30080/client") == "http://[fd00:200::a]:30080/client"
    assert six.back("[fd00:10:96::101]:80/TCP") == "10.96.1.1:80/TCP"
    assert six.back("[fd00:10:244::2]:41000") == "10.244.0.2:41000"
    assert six.back("fd00:10:244::b") == "10.244.0.11"  # a whole bare address
    assert six.back("web-1 hello fd00::1") == "web-1 hello fd00::1"  # nobody's twin: kept
    assert six.sockaddr(("10.96.1.2", 53)) == ("fd00:10:96::102", 53)
    assert six.back_addr(("fd00:10:96::102", 53, 0, 0)) == ("10.96.1.2", 53)
    # Every twin cluster IP is inside the lab's IPv6 Service range (blackholed, range-checked).
    import ipaddress
    assert ipaddress.ip_address(ipv6_twin("10.96.255.255")) in ipaddress.ip_network(
        topo.SERVICE_CIDR6)
    # A path is no prefix; an address already quoted is not quoted twice.
    assert six.url("http://10.96.1.1/10") == "http://[fd00:10:96::101]/10"
    assert six.manifest('ip: "10.96.1.1"') == 'ip: "fd00:10:96::101"'
    # IPv4 read back in an IPv6 twin's run is a failure, not a pass.
    with pytest.raises(AssertionError, match="IPv4 address 10.244.0.2"):
        six.back("10.244.0.2:41000")
    assert six.socket_family() == socket.AF_INET6 and four.socket_family() == socket.AF_INET
