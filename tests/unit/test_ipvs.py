"""ebpflb.takeover.ipvs, pure: IPVS generic netlink replies decoded into virtual services, which
of them (and which ipsets, which kube-ipvs0 addresses) are kube-proxy's, and how an IPVS flow in
netfilter's conntrack is told apart. The kernel edge on this machine (no IPVS, a stand-in
kube-ipvs0, real ipsets): tests/lab/test_ipvs_kernel.py.

The replies below are laid out byte for byte as the kernel's IPVS family builds them
(include/uapi/linux/ip_vs.h; ip_vs_genl_fill_service / ip_vs_genl_fill_dest in
net/netfilter/ipvs/ip_vs_ctl.c, which put the attributes in the order shown): little-endian
host fields, big-endian ports, every address a 16-byte union nf_inet_addr, every attribute
padded to 4 bytes. 0x0024 stands for the family id the kernel hands out at run time. The
counters nests (STATS, STATS64) are kept in one message only: the decoder skips both."""
import socket
import struct
from typing import List

import pytest
from pyroute2.netlink import NLM_F_DUMP
from pyroute2.netlink.nlsocket import Marshal

from ebpflb.takeover.flows import IPS_ASSURED, IPS_SEEN_REPLY, IPS_SRC_NAT, NfFlow
from ebpflb.takeover.ipvs import (IPVS_CMD_GET_DEST, IPVS_CMD_GET_SERVICE, KUBE_PROXY_IPSETS,
                                  IpsetEntry, IpvsDecodeError, IpvsDest, IpvsError, IpvsRemoval,
                                  IpvsService, KubeIpset, _read, _reply_parser, decode_message,
                                  frontends_of, ipvs_msg, ipvs_removals, ipvs_translated,
                                  parse_replies, services_from)

pytestmark = pytest.mark.unit

TCP, UDP, SCTP = socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_SCTP


def unhex(text: str) -> bytes:
    """The bytes of a commented hex listing: everything after '#' on a line is a comment."""
    return bytes.fromhex("".join(line.split("#", 1)[0] for line in text.splitlines()))


# IPVS_CMD_GET_SERVICE dump, first reply: TCP 10.96.0.1:443, round robin (a ClusterIP).
SVC_V4 = unhex("""
c4000000 2400 0200 01000000 00000000  # nlmsghdr: len=196, IPVS family, NLM_F_MULTI, seq=1, pid 0
01 01 0000                            # genlmsghdr: cmd=IPVS_CMD_NEW_SERVICE, version=1, reserved
  b0000100                            # IPVS_CMD_ATTR_SERVICE (nest, no NLA_F_NESTED): len=176
    0600 0100 0200 0000               # IPVS_SVC_ATTR_AF: len=6, u16 AF_INET (2), 2 pad
    0600 0200 0600 0000               # IPVS_SVC_ATTR_PROTOCOL: len=6, u16 IPPROTO_TCP (6), 2 pad
    1400 0300 0a600001 000000000000000000000000  # IPVS_SVC_ATTR_ADDR: 10.96.0.1, 12 zeros
    0600 0400 01bb 0000               # IPVS_SVC_ATTR_PORT: len=6, be16 443, 2 pad
    0700 0600 727200 00               # IPVS_SVC_ATTR_SCHED_NAME: len=7, "rr\\0", 1 pad
    0c00 0700 02000000 ffffffff       # IPVS_SVC_ATTR_FLAGS: struct ip_vs_flags
                                      #   {flags=IP_VS_SVC_F_HASHED, mask=~0}
    0800 0800 00000000                # IPVS_SVC_ATTR_TIMEOUT: u32 0 s (no persistence)
    0800 0900 ffffffff                # IPVS_SVC_ATTR_NETMASK: be32 255.255.255.255
    5c00 0a00                         # IPVS_SVC_ATTR_STATS (nest): len=92
      0800 0100 07000000              #   IPVS_STATS_ATTR_CONNS: u32 7
      0800 0200 78000000              #   INPKTS: u32 120
      0800 0300 62000000              #   OUTPKTS: u32 98
      0c00 0400 2823000000000000      #   INBYTES: u64 9000
      0c00 0500 f049020000000000      #   OUTBYTES: u64 150000
      0800 0600 00000000              #   CPS
      0800 0700 00000000              #   INPPS
      0800 0800 00000000              #   OUTPPS
      0800 0900 00000000              #   INBPS
      0800 0a00 00000000              #   OUTBPS
""")

# Second reply: UDP [fd00:10:96::a]:53 with ClientIP affinity (persistent, 10800 s).
SVC_V6 = unhex("""
68000000 2400 0200 01000000 00000000  # nlmsghdr: len=104, IPVS family, NLM_F_MULTI, seq=1
01 01 0000                            # genlmsghdr: IPVS_CMD_NEW_SERVICE, version 1
  54000100                            # IPVS_CMD_ATTR_SERVICE: len=84
    0600 0100 0a00 0000               # AF: u16 AF_INET6 (10)
    0600 0200 1100 0000               # PROTOCOL: u16 IPPROTO_UDP (17)
    1400 0300 fd00001000960000000000000000000a  # ADDR: len=20, fd00:10:96::a (all 16 bytes)
    0600 0400 0035 0000               # PORT: be16 53
    0700 0600 727200 00               # SCHED_NAME: "rr\\0"
    0c00 0700 03000000 ffffffff       # FLAGS: {IP_VS_SVC_F_PERSISTENT|IP_VS_SVC_F_HASHED, mask ~0}
    0800 0800 302a0000                # TIMEOUT: u32 10800 s
    0800 0900 80000000                # NETMASK: 128 (the IPv6 persistence prefix length)
""")

# Third reply: a firewall-mark service (no PROTOCOL, ADDR or PORT), weighted least-connection:
# keepalived's kind of service, not kube-proxy's.
SVC_FWMARK = unhex("""
4c000000 2400 0200 01000000 00000000  # nlmsghdr: len=76, IPVS family, NLM_F_MULTI, seq=1
01 01 0000                            # genlmsghdr: IPVS_CMD_NEW_SERVICE, version 1
  38000100                            # IPVS_CMD_ATTR_SERVICE: len=56
    0600 0100 0200 0000               # AF: AF_INET
    0800 0500 00010000                # FWMARK: u32 256
    0800 0600 776c6300                # SCHED_NAME: "wlc\\0"
    0c00 0700 02000000 ffffffff       # FLAGS: {HASHED, ~0}
    0800 0800 00000000                # TIMEOUT: 0
    0800 0900 ffffffff                # NETMASK: 255.255.255.255
""")

DONE = unhex("""
14000000 0300 0200 01000000 00000000  # nlmsghdr: len=20, NLMSG_DONE, NLM_F_MULTI, seq=1
00000000                              # the dump's result: 0
""")

SERVICES_DUMP = SVC_V4 + SVC_V6 + SVC_FWMARK + DONE


def dest_reply(addr16: str, port: str, fwd: str, weight: str, active: str, inactive: str,
               family: str) -> bytes:
    """One IPVS_CMD_GET_DEST dump reply; the fields are hex. (STATS and STATS64, which follow
    ADDR_FAMILY in a kernel reply, are left out.)"""
    return unhex(f"""
8c000000 2400 0200 02000000 00000000  # nlmsghdr: len=140, IPVS family, NLM_F_MULTI, seq=2
05 01 0000                            # genlmsghdr: cmd=IPVS_CMD_NEW_DEST, version 1
  78000200                            # IPVS_CMD_ATTR_DEST: len=120
    1400 0100 {addr16}                # IPVS_DEST_ATTR_ADDR: len=20, 16-byte address
    0600 0200 {port} 0000             # PORT: be16, 2 pad
    0800 0300 {fwd}                   # FWD_METHOD: u32 (0 masq, 2 tunnel, 3 route)
    0800 0400 {weight}                # WEIGHT: u32
    0500 0d00 00 000000               # TUN_TYPE: u8 0 (IPIP), 3 pad
    0600 0e00 0000 0000               # TUN_PORT: be16 0
    0600 0f00 0000 0000               # TUN_FLAGS: u16 0
    0800 0500 00000000                # U_THRESH: 0 (none)
    0800 0600 00000000                # L_THRESH: 0
    0800 0700 {active}                # ACTIVE_CONNS: u32
    0800 0800 {inactive}              # INACT_CONNS: u32
    0800 0900 00000000                # PERSIST_CONNS: 0
    0600 0b00 {family} 0000           # ADDR_FAMILY: u16, 2 pad
""")


# Real servers of the ClusterIP: 10.244.0.2:6443 (3 active, 1 inactive connection) and
# 10.244.0.3:6443, weight 0 (terminating: kube-proxy's graceful deletion).
DESTS_V4 = (dest_reply("0af40002 000000000000000000000000", "192b", "00000000", "01000000",
                       "03000000", "01000000", "0200")
            + dest_reply("0af40003 000000000000000000000000", "192b", "00000000", "00000000",
                         "00000000", "02000000", "0200")
            + DONE)
# Real server of the IPv6 service: [fd00:10:244::5]:5353.
DESTS_V6 = dest_reply("fd000010024400000000000000000005", "14e9", "00000000", "01000000",
                      "00000000", "00000000", "0a00") + DONE
# Real server of the fwmark service: 192.168.1.10, direct routing (3), weight 100.
DESTS_FWMARK = dest_reply("c0a8010a 000000000000000000000000", "0000", "03000000", "64000000",
                          "01000000", "00000000", "0200") + DONE

# A service reply with an attribute this kernel interface does not define, inside the service
# nest (type 42) and at the top level (type 99): a newer kernel's; both are skipped.
SVC_UNKNOWN = unhex("""
78000000 2400 0200 01000000 00000000  # nlmsghdr: len=120
01 01 0000                            # genlmsghdr: IPVS_CMD_NEW_SERVICE
  5c000100                            # IPVS_CMD_ATTR_SERVICE: len=92
    0600 0100 0200 0000               # AF: AF_INET
    0600 0200 8400 0000               # PROTOCOL: u16 IPPROTO_SCTP (132)
    1400 0300 0a60000a 000000000000000000000000  # ADDR: 10.96.0.10
    0600 0400 0b84 0000               # PORT: be16 2948
    0700 0600 727200 00               # SCHED_NAME: "rr\\0"
    0800 2a00 deadbeef                # attribute type 42: unknown, skipped
    0c00 0700 02000000 ffffffff       # FLAGS
    0800 0800 00000000                # TIMEOUT
    0800 0900 ffffffff                # NETMASK
  0800 6300 01000000                  # top-level attribute type 99: unknown, skipped
""")


def decoded(*buffers: bytes):
    return [m for b in buffers for m in parse_replies(b)]


def dumped():
    """The services and their real servers in the order read_services reads them."""
    v4, v6, fw = decoded(SERVICES_DUMP)
    return [v4, *decoded(DESTS_V4), v6, *decoded(DESTS_V6), fw, *decoded(DESTS_FWMARK)]


# ------------------------------------------------------------------ decoding

def test_fixture_lengths_match_their_headers():
    for buf in (SVC_V4, SVC_V6, SVC_FWMARK, SVC_UNKNOWN, DESTS_V4[:140]):
        assert int.from_bytes(buf[:4], "little") == len(buf)


def test_service_dump_decodes_into_three_messages():
    msgs = parse_replies(SERVICES_DUMP)
    assert [m["cmd"] for m in msgs] == [1, 1, 1]
    svc = msgs[0].get_attr("IPVS_CMD_ATTR_SERVICE")
    assert svc.get_attr("IPVS_SVC_ATTR_PORT") == 443
    assert svc.get_attr("IPVS_SVC_ATTR_FLAGS")["mask"] == 0xFFFFFFFF


def test_services_with_real_servers():
    v4, v6, fw = services_from(dumped())
    assert v4 == IpvsService(
        family=4, protocol=TCP, address="10.96.0.1", port=443, fwmark=0, scheduler="rr",
        dests=(IpvsDest("10.244.0.2", 6443, 1, "masq", 3, 1),
               IpvsDest("10.244.0.3", 6443, 0, "masq", 0, 2)),
        flags=0x2, timeout=0)
    assert v6 == IpvsService(
        family=6, protocol=UDP, address="fd00:10:96::a", port=53, fwmark=0, scheduler="rr",
        dests=(IpvsDest("fd00:10:244::5", 5353, 1, "masq", 0, 0),), flags=0x3, timeout=10800)
    assert fw == IpvsService(
        family=4, protocol=0, address=None, port=0, fwmark=256, scheduler="wlc",
        dests=(IpvsDest("192.168.1.10", 0, 100, "route", 1, 0),), flags=0x2)
    assert (str(v4), str(v6), str(fw)) == ("TCP 10.96.0.1:443 rr", "UDP [fd00:10:96::a]:53 rr",
                                           "FWM 256 IPv4 wlc")


def test_a_service_without_real_servers():
    [svc] = services_from(decoded(SVC_V4 + DONE))
    assert svc.dests == () and svc.address == "10.96.0.1"


def test_unknown_attributes_are_skipped():
    [msg] = parse_replies(SVC_UNKNOWN)
    [svc] = services_from([msg])
    assert (svc.protocol, svc.address, svc.port, svc.scheduler) == (SCTP, "10.96.0.10", 2948,
                                                                     "rr")


@pytest.mark.parametrize("cut", [1, 20, 60, len(SVC_V6) - 1])
def test_truncated_buffer_is_an_error_naming_the_offset(cut):
    with pytest.raises(IpvsDecodeError, match=r"offset 0 .*truncated"):
        parse_replies(SERVICES_DUMP[:cut])
    with pytest.raises(IpvsDecodeError, match="truncated"):
        parse_replies(SVC_V4 + SVC_V6[:cut])


def test_attribute_running_past_its_nest_is_an_error():
    # SVC_V6 with its ADDR claiming 96 bytes instead of 20: the message's own length is
    # right, its service nest does not hold the attribute. pyroute2 alone would clamp it.
    bad = bytearray(SVC_V6)
    at = SVC_V6.index(bytes.fromhex("14000300"))
    bad[at] = 0x60
    with pytest.raises(IpvsDecodeError, match="IPVS_SVC_ATTR_ADDR .* claims 96 bytes, 64 left"):
        decode_message(bytes(bad))


def test_attribute_shorter_than_its_type_is_an_error():
    # The first service's PORT with a 1-byte payload (length 5): not a be16.
    bad = bytearray(SVC_V4)
    at = SVC_V4.index(bytes.fromhex("06000400"))
    bad[at] = 0x05
    with pytest.raises(IpvsDecodeError, match="IPVS_SVC_ATTR_PORT .* has 1 bytes, needs 2"):
        decode_message(bytes(bad))


def test_error_reply_raises_with_errno():
    eperm = unhex("""
24000000 0200 0000 01000000 00000000  # nlmsghdr: len=36, NLMSG_ERROR
ffffffff                              # error: -EPERM
14000000 2400 0500 01000000 00000000  # the request's header, echoed
""")
    with pytest.raises(IpvsError, match=r"errno 1\b"):
        parse_replies(eperm)


def test_real_server_before_any_service_is_an_error():
    with pytest.raises(IpvsDecodeError, match="before any virtual service"):
        services_from(decoded(DESTS_V4))


def test_request_encodes_what_the_decoder_reads():
    # A GET_DEST request for the first service, encoded by the same class: the nest names the
    # service the way ip_vs_genl_parse_service wants it (AF, PROTOCOL, 16-byte ADDR, PORT).
    msg = ipvs_msg()
    msg["cmd"], msg["version"] = 8, 1
    msg["attrs"] = [("IPVS_CMD_ATTR_SERVICE", {"attrs": [
        ("IPVS_SVC_ATTR_AF", socket.AF_INET), ("IPVS_SVC_ATTR_PROTOCOL", TCP),
        ("IPVS_SVC_ATTR_ADDR", socket.inet_aton("10.96.0.1").ljust(16, b"\0")),
        ("IPVS_SVC_ATTR_PORT", 443)]})]
    msg["header"]["type"] = 0x24
    msg.encode()
    data = bytes(msg.data)
    assert data[20:] == unhex("""
  30000100                            # IPVS_CMD_ATTR_SERVICE: len=48
    0600 0100 0200 0000               # AF
    0600 0200 0600 0000               # PROTOCOL
    1400 0300 0a600001 000000000000000000000000  # ADDR
    0600 0400 01bb 0000               # PORT
""")
    [back] = parse_replies(data)
    assert back.get_attr("IPVS_CMD_ATTR_SERVICE").get_attr("IPVS_SVC_ATTR_PORT") == 443


class RecordedIpvs:
    """Stands in for the IPVS generic netlink socket of the kernel edge: each request is
    answered with the next recorded reply buffer, parsed by pyroute2's own receive parser with
    the hook the edge installs, as a real socket's replies are."""

    prid = 0x24

    def __init__(self, replies: List[bytes]) -> None:
        self.marshal = Marshal()
        self.replies = list(replies)
        self.requests: List[ipvs_msg] = []

    def nlm_request(self, msg, msg_type, msg_flags, parser=None):
        msg["header"]["type"], msg["header"]["flags"] = msg_type, msg_flags
        msg.encode()
        self.requests.append(parse_replies(bytes(msg.data))[0])
        reply = self.replies.pop(0)
        seq = struct.unpack_from("=I", reply, 8)[0]
        self.marshal.seq_map[seq] = parser
        return list(self.marshal.parse(reply, seq))


def test_edge_reads_services_then_real_servers_of_each():
    sock = RecordedIpvs([SERVICES_DUMP, DESTS_V4, DESTS_V6, DESTS_FWMARK])
    assert services_from(list(_read(sock))) == services_from(dumped())
    cmds = [r["cmd"] for r in sock.requests]
    assert cmds == [IPVS_CMD_GET_SERVICE] + [IPVS_CMD_GET_DEST] * 3
    assert all(r["header"]["flags"] & NLM_F_DUMP == NLM_F_DUMP for r in sock.requests)
    assert sock.requests[0].get_attr("IPVS_CMD_ATTR_SERVICE") is None
    names = [{k: v for k, v in r.get_attr("IPVS_CMD_ATTR_SERVICE")["attrs"]}
             for r in sock.requests[1:]]
    assert names[0] == {"IPVS_SVC_ATTR_AF": socket.AF_INET, "IPVS_SVC_ATTR_PROTOCOL": TCP,
                        "IPVS_SVC_ATTR_ADDR": socket.inet_aton("10.96.0.1") + bytes(12),
                        "IPVS_SVC_ATTR_PORT": 443}
    assert names[1]["IPVS_SVC_ATTR_ADDR"] == socket.inet_pton(socket.AF_INET6, "fd00:10:96::a")
    assert names[2] == {"IPVS_SVC_ATTR_AF": socket.AF_INET, "IPVS_SVC_ATTR_FWMARK": 256}


def test_reply_hook_hands_a_decode_error_to_the_receive_loop():
    # A cut attribute inside a reply the kernel framed correctly: the hook does not raise in
    # the middle of pyroute2's loop; it puts the error where the loop raises it from.
    bad = bytearray(SVC_V6)
    bad[SVC_V6.index(bytes.fromhex("14000300"))] = 0x60
    entry = _reply_parser(Marshal(), bytes(bad), 0, len(bad))
    assert isinstance(entry["header"]["error"], IpvsDecodeError) and entry["msg"] is None
    done = _reply_parser(Marshal(), DONE, 0, len(DONE))
    assert done["header"]["type"] == 3 and done["header"]["error"] is None


# ------------------------------------------------------------------ ownership

CLUSTER = IpvsService(4, TCP, "10.96.0.1", 443, 0, "rr",
                      (IpvsDest("10.244.0.2", 6443, 1, "masq"),
                       IpvsDest("10.244.0.3", 6443, 1, "masq")))
DNS = IpvsService(4, UDP, "10.96.0.10", 53, 0, "rr", (IpvsDest("10.244.0.4", 53, 1, "masq"),))
NODEPORT = IpvsService(4, TCP, "192.168.50.10", 30080, 0, "rr",
                       (IpvsDest("10.244.0.5", 8080, 1, "masq"),))
LB = IpvsService(4, TCP, "203.0.113.7", 80, 0, "rr", (IpvsDest("10.244.0.5", 8080, 1, "masq"),))
SCTP_NODEPORT = IpvsService(4, SCTP, "192.168.50.10", 30999, 0, "rr")
CLUSTER6 = IpvsService(6, TCP, "fd00:10:96::1", 443, 0, "rr",
                       (IpvsDest("fd00:10:244::2", 6443, 1, "masq"),))
NODEPORT6 = IpvsService(6, UDP, "fd00:192:168:50::10", 30053, 0, "rr")
# Another user's: keepalived's fwmark service, a VIP of its own, a port kube-proxy does not use.
KEEPALIVED_FWM = IpvsService(4, 0, None, 0, 256, "wlc", (IpvsDest("192.168.1.10", 0, 100,
                                                                  "route"),))
OTHER_VIP = IpvsService(4, TCP, "192.168.50.200", 443, 0, "wrr",
                        (IpvsDest("192.168.50.21", 443, 1, "route"),))
OTHER_PORT = IpvsService(4, TCP, "192.168.50.10", 8443, 0, "rr")

ADDRESSES = ["10.96.0.1", "10.96.0.10", "203.0.113.7", "fd00:10:96::1"]
IPSETS = [
    KubeIpset("KUBE-CLUSTER-IP", "hash:ip,port",
              (IpsetEntry("10.96.0.1", 443, TCP), IpsetEntry("10.96.0.10", 53, UDP))),
    KubeIpset("KUBE-LOAD-BALANCER", "hash:ip,port", (IpsetEntry("203.0.113.7", 80, TCP),)),
    KubeIpset("KUBE-NODE-PORT-TCP", "bitmap:port", (IpsetEntry(None, 30080),)),
    KubeIpset("KUBE-NODE-PORT-SCTP-HASH", "hash:ip,port",
              (IpsetEntry("192.168.50.10", 30999, SCTP),)),
    KubeIpset("KUBE-LOOP-BACK", "hash:ip,port,ip", (IpsetEntry("10.244.0.2", 6443, TCP),)),
    KubeIpset("KUBE-6-CLUSTER-IP", "hash:ip,port", (IpsetEntry("fd00:10:96::1", 443, TCP),)),
    KubeIpset("KUBE-6-NODE-PORT-UDP", "bitmap:port", (IpsetEntry(None, 30053),)),
    KubeIpset("cali40all-ipam-pools", "hash:net"),  # Calico's: never in a removal
]


def by_family(removals):
    return {r.family: r for r in removals}


def test_kube_proxy_services_by_device_sets_and_node_ports():
    services = [CLUSTER, DNS, NODEPORT, LB, SCTP_NODEPORT, CLUSTER6, NODEPORT6, KEEPALIVED_FWM,
                OTHER_VIP, OTHER_PORT]
    r4, r6 = ipvs_removals(services, ADDRESSES, IPSETS)
    assert (r4.family, r6.family) == (4, 6)
    assert r4.services == (CLUSTER, DNS, NODEPORT, LB, SCTP_NODEPORT)
    assert r4.others == 3  # keepalived's fwmark, its VIP, and a port that is no NodePort
    assert r6.services == (CLUSTER6, NODEPORT6) and r6.others == 0
    assert r4.addresses == ("10.96.0.1", "10.96.0.10", "203.0.113.7")
    assert r6.addresses == ("fd00:10:96::1",)
    assert r4.device == r6.device == "kube-ipvs0"
    assert r4.ipsets == ("KUBE-CLUSTER-IP", "KUBE-LOAD-BALANCER", "KUBE-LOOP-BACK",
                         "KUBE-NODE-PORT-SCTP-HASH", "KUBE-NODE-PORT-TCP")
    assert r6.ipsets == ("KUBE-6-CLUSTER-IP", "KUBE-6-NODE-PORT-UDP")
    assert (r4.backend, r4.table) == ("ipvs", "ipvs")


@pytest.mark.parametrize("desc, services, addresses, ipsets, expected", [
    ("on kube-ipvs0 only (no sets yet)", [CLUSTER], ["10.96.0.1"], [], [CLUSTER]),
    ("named by a set only (address already unbound)", [DNS], [], IPSETS, [DNS]),
    ("NodePort: the port is in the protocol's bitmap set", [NODEPORT], [], IPSETS, [NODEPORT]),
    ("a NodePort's port but another protocol", [IpvsService(4, UDP, "192.168.50.10", 30080, 0,
                                                            "rr")], [], IPSETS, []),
    ("an IPv6 set does not claim an IPv4 service", [IpvsService(4, UDP, "192.168.50.10", 30053,
                                                                0, "rr")], [], IPSETS, []),
    ("KUBE-LOOP-BACK names endpoints, not frontends",
     [IpvsService(4, TCP, "10.244.0.2", 6443, 0, "rr")], [], IPSETS, []),
    ("a fwmark service is never kube-proxy's", [KEEPALIVED_FWM], ADDRESSES, IPSETS, []),
    ("another user's VIP", [OTHER_VIP], ADDRESSES, IPSETS, []),
    ("a foreign set's members claim nothing",
     [OTHER_VIP], [], [KubeIpset("OTHER", "hash:ip,port",
                                 (IpsetEntry("192.168.50.200", 443, TCP),))], []),
])
def test_which_services_are_kube_proxys(desc, services, addresses, ipsets, expected):
    removals = ipvs_removals(services, addresses, ipsets)
    assert [s for r in removals for s in r.services] == expected, desc
    assert sum(r.others for r in removals) == len(services) - len(expected), desc


def test_nothing_of_kube_proxys_means_no_removal():
    assert ipvs_removals([KEEPALIVED_FWM, OTHER_VIP], None, []) == []
    assert ipvs_removals([], None, [KubeIpset("cali40all-ipam-pools", "hash:net")]) == []


def test_an_empty_kube_ipvs0_is_still_removed():
    [r] = ipvs_removals([OTHER_VIP], [], [])
    assert (r.family, r.device, r.services, r.addresses, r.others) == (4, "kube-ipvs0", (), (), 1)


def test_no_device_means_no_device_in_the_removal():
    [r] = ipvs_removals([CLUSTER], None, IPSETS[:1])
    assert r.device is None and r.addresses == () and r.services == (CLUSTER,)


def test_describe():
    r4, r6 = ipvs_removals([CLUSTER, DNS, NODEPORT, LB, CLUSTER6, KEEPALIVED_FWM], ADDRESSES,
                           IPSETS)
    assert r4.describe() == ("ipvs IPv4: 4 virtual services (5 real servers), kube-ipvs0 with 3 "
                             "addresses, 5 ipsets; left 1 virtual service of another IPVS user")
    assert r6.describe() == ("ipvs IPv6: 1 virtual service (1 real server), kube-ipvs0 with 1 "
                             "address, 2 ipsets")
    bare = IpvsRemoval(family=4, services=(CLUSTER,), ipsets=("KUBE-CLUSTER-IP",))
    assert bare.describe() == ("ipvs IPv4: 1 virtual service (2 real servers), no kube-ipvs0, "
                               "1 ipset")


def test_ipv6_set_names_follow_kube_proxys_rule():
    # "KUBE-" becomes "KUBE-6-", then the name is cut to ipset's 31 characters.
    assert KUBE_PROXY_IPSETS["KUBE-6-CLUSTER-IP"] == (6, "KUBE-CLUSTER-IP")
    assert KUBE_PROXY_IPSETS["KUBE-6-LOAD-BALANCER-SOURCE-CID"] == (
        6, "KUBE-LOAD-BALANCER-SOURCE-CIDR")
    assert KUBE_PROXY_IPSETS["KUBE-6-NODE-PORT-LOCAL-SCTP-HAS"] == (
        6, "KUBE-NODE-PORT-LOCAL-SCTP-HASH")
    assert all(len(n) <= 31 for n in KUBE_PROXY_IPSETS)
    assert len(KUBE_PROXY_IPSETS) == 32


# ------------------------------------------------------------------ flows

def test_frontends_of():
    assert frontends_of([CLUSTER, CLUSTER6, KEEPALIVED_FWM, NODEPORT]) == {
        (4, "10.96.0.1", 443, TCP), (6, "fd00:10:96::1", 443, TCP),
        (4, "192.168.50.10", 30080, TCP)}


FRONTENDS = frontends_of([CLUSTER, NODEPORT, CLUSTER6])


@pytest.mark.parametrize("desc, flow, expected", [
    # IPVS's entry: the reply comes from the real server IPVS picked; no IPS_DST_NAT.
    ("pod -> ClusterIP", NfFlow(4, TCP, ("10.244.0.9", 40000, "10.96.0.1", 443),
                                ("10.244.0.2", 6443, "10.244.0.9", 40000),
                                status=IPS_SEEN_REPLY | IPS_ASSURED), True),
    ("external -> NodePort, masqueraded", NfFlow(
        4, TCP, ("198.51.100.7", 51000, "192.168.50.10", 30080),
        ("10.244.0.5", 8080, "192.168.50.10", 61000),
        status=IPS_SEEN_REPLY | IPS_ASSURED | IPS_SRC_NAT), True),
    ("IPv6", NfFlow(6, TCP, ("fd00:10:244::9", 40000, "fd00:10:96::1", 443),
                    ("fd00:10:244::2", 6443, "fd00:10:244::9", 40000)), True),
    ("to a frontend, not translated (no real server yet)", NfFlow(
        4, TCP, ("10.244.0.9", 40001, "10.96.0.1", 443),
        ("10.96.0.1", 443, "10.244.0.9", 40001)), False),
    ("another protocol on the frontend's port", NfFlow(
        4, UDP, ("10.244.0.9", 40002, "10.96.0.1", 443),
        ("10.244.0.2", 6443, "10.244.0.9", 40002)), False),
    ("not to a frontend", NfFlow(4, TCP, ("10.244.0.9", 40003, "10.244.0.2", 6443),
                                 ("10.244.0.2", 6443, "10.244.0.9", 40003)), False),
])
def test_ipvs_translated(desc, flow, expected):
    assert ipvs_translated(flow, FRONTENDS) is expected, desc
