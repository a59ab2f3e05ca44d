"""Packet fixtures for the IPv6 side of the TC programs (lb6_tc.c, reached from the lb4_* entry
points by a tail call), run with BPF_PROG_TEST_RUN on the real programs, programmed from a
dual-stack manifest through the real control-plane path.

Each case builds its expected packet independently with scapy (checksums recomputed from
scratch) and predicts a new flow's backend with the control plane's own flow hash. IPv6 has no
header checksum: what must stay right is the TCP/UDP/ICMPv6 one over the IPv6 pseudo header.
"""
import socket

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (ICMPv6DestUnreach, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ebpflb.dataplane.bcc_maps import lookup_conntrack
from ebpflb.dataplane.testrun import test_run as bpf_test_run
from ebpflb.flowhash import packet_hash
from ebpflb.maps import HAIRPIN_ADDR6

from .conftest import TC_ACT_OK, TC_ACT_SHOT

pytestmark = pytest.mark.bpf

TC_ACT_REDIRECT = 7

MANIFEST = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:96::10"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: PreferDualStack
  ports: [{name: http, port: 80, protocol: TCP, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: demo}
spec:
  clusterIP: "fd00:96::20"
  clusterIPs: ["fd00:96::20"]
  ipFamilies: [IPv6]
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 9053}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: demo}
spec:
  clusterIP: "fd00:96::30"
  clusterIPs: ["fd00:96::30"]
  ipFamilies: [IPv6]
  ports:
  - {name: http, port: 80, protocol: TCP}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.0.11], conditions: {ready: true}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["fd00:10:244::11"], conditions: {ready: true}}
- {addresses: ["fd00:10:244::12"], conditions: {ready: true}}
- {addresses: ["fd00:10:244::13"], conditions: {ready: true}}
- {addresses: ["fd00:10:244::2"], conditions: {ready: true}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-v6, namespace: demo, labels: {kubernetes.io/service-name: dns}}
addressType: IPv6
ports: [{name: dns, port: 9053, protocol: UDP}]
endpoints:
- {addresses: ["fd00:10:244::21"], conditions: {ready: true}}
- {addresses: ["fd00:10:244::22"], conditions: {ready: true}}
"""

CLIENT = "fd00:10:244::2"
WEB = "fd00:96::10"
DNS = "fd00:96::20"
EMPTY = "fd00:96::30"
# In the order the model programs them (by address): the slots are this list.
WEB_BACKENDS = ["fd00:10:244::2", "fd00:10:244::11", "fd00:10:244::12", "fd00:10:244::13"]
DNS_BACKENDS = ["fd00:10:244::21", "fd00:10:244::22"]
ETH = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


@pytest.fixture(scope="module")
def dp(dataplane):
    dataplane.program(MANIFEST)
    return dataplane


@pytest.fixture(autouse=True)
def fresh_conntrack(dataplane):
    dataplane.clear_conntrack()
    for table in (b"ct6", b"ct6_syn"):
        dataplane.progs.bpf[table].clear()


def moved(before, after):
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def predicted(src, sport, dst, dport, proto, backends):
    return backends[packet_hash(src, sport, dst, dport, proto) % len(backends)]


def rebuilt(pkt):
    """The packet as bytes with every checksum recomputed by scapy (independent of the program)."""
    p = Ether(bytes(pkt))
    for layer in (TCP, UDP):
        if layer in p:
            del p[layer].chksum
    if ICMPv6DestUnreach in p:
        del p[ICMPv6DestUnreach].cksum
    return bytes(p)


def run(prog, pkt):
    return bpf_test_run(prog.fd, bytes(pkt))


def tcp6(src, sport, dst, dport, flags="S", payload=b"", ext=None):
    ip = IPv6(src=src, dst=dst, hlim=64)
    if ext is not None:
        ip = ip / ext
    return Ether(**ETH) / ip / TCP(sport=sport, dport=dport, flags=flags, seq=1000) / Raw(payload)


def udp6(src, sport, dst, dport, payload=b"ping"):
    return Ether(**ETH) / IPv6(src=src, dst=dst, hlim=64) / UDP(sport=sport, dport=dport) / Raw(payload)


def dnat(pkt, backend, port):
    exp = pkt.copy()
    exp[IPv6].dst = backend
    (exp[TCP] if TCP in exp else exp[UDP]).dport = port
    return rebuilt(exp)


def l4(pkt):
    return pkt[TCP] if TCP in pkt else pkt[UDP]


OTHER = "fd00:10:244::99"  # a client that is no backend (CLIENT is one: see the hairpin test)
NEW = {"from_pod/new": 1, "conntrack_insert": 1}

DNAT_CASES = [
    ("TCP SYN to an IPv6 ClusterIP", tcp6(OTHER, 40000, WEB, 80), WEB_BACKENDS, 8080, NEW),
    # Not a connection start, for a flow never seen: sent by hash, no state created.
    ("TCP with payload, no flow known", tcp6(OTHER, 51234, WEB, 80, "PA", b"GET / HTTP/1.1\r\n\r\n"),
     WEB_BACKENDS, 8080, {"from_pod/stateless": 1}),
    ("UDP datagram", udp6(OTHER, 33333, DNS, 53), DNS_BACKENDS, 9053, NEW),
    ("after a hop-by-hop and a destination options header",
     tcp6(OTHER, 40001, WEB, 80, ext=IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()),
     WEB_BACKENDS, 8080, NEW),
    ("after a routing header with no segments left",
     tcp6(OTHER, 40002, WEB, 80, ext=IPv6ExtHdrRouting(segleft=0, addresses=[])),
     WEB_BACKENDS, 8080, NEW),
    ("a first fragment (offset 0, more fragments)",
     Ether(bytes(Ether(**ETH) / IPv6(src=OTHER, dst=DNS, hlim=64) / IPv6ExtHdrFragment(m=1, id=7)
                 / UDP(sport=33334, dport=53, len=400) / Raw(b"x" * 64))),
     DNS_BACKENDS, 9053, NEW),
]


@pytest.mark.parametrize("desc,pkt,backends,port,counted", DNAT_CASES,
                         ids=[c[0] for c in DNAT_CASES])
def test_dnat(dp, desc, pkt, backends, port, counted):
    ip, seg = pkt[IPv6], l4(pkt)
    proto = 6 if TCP in pkt else 17
    backend = predicted(ip.src, seg.sport, ip.dst, seg.dport, proto, backends)
    before = dp.stats()
    res = run(dp.progs.from_pod, pkt)
    assert res.retval == TC_ACT_OK
    if "fragment" in desc:
        # The UDP length is the whole datagram's: scapy cannot recompute that checksum; the
        # program's is checked by the incremental rule (only addresses and port changed).
        out = Ether(res.data)
        assert (out[IPv6].dst, out[UDP].dport) == (backend, port)
    else:
        assert res.data == dnat(pkt, backend, port), Ether(res.data).show2(dump=True)
        assert rebuilt(res.data) == res.data  # the output's own checksums are right
    assert moved(before, dp.stats()) == counted
    entry = lookup_conntrack(dp.progs.bpf, ip.src, seg.sport, ip.dst, seg.dport, proto)
    if counted == NEW:
        assert (entry.nat_addr, entry.nat_port) == (backend, port)
    else:
        assert entry is None


def test_flow_keeps_its_backend_and_replies_come_from_the_frontend(dp):
    syn = tcp6(CLIENT, 41000, WEB, 80)
    out = Ether(run(dp.progs.from_pod, syn).data)
    backend = out[IPv6].dst
    assert backend in WEB_BACKENDS
    # The backend's SYN-ACK, on its way into the client's pod, is from the frontend again.
    synack = tcp6(backend, 8080, CLIENT, 41000, flags="SA")
    before = dp.stats()
    res = run(dp.progs.to_pod, synack)
    assert res.retval == TC_ACT_OK
    expected = synack.copy()
    expected[IPv6].src, expected[TCP].sport = WEB, 80
    assert res.data == rebuilt(expected)
    assert moved(before, dp.stats()) == {"to_pod/reply": 1}
    # The client's ACK, and every later packet, follows the flow.
    for flags in ("A", "PA", "FA"):
        out = Ether(run(dp.progs.from_pod, tcp6(CLIENT, 41000, WEB, 80, flags=flags)).data)
        assert (out[IPv6].dst, out[TCP].dport) == (backend, 8080)
    # Promoted from the half-open table once the client ACKed.
    assert lookup_conntrack(dp.progs.bpf, CLIENT, 41000, WEB, 80, 6).half_open is False


def test_reply_of_no_flow_passes_untouched(dp):
    pkt = tcp6("fd00:10:244::11", 8080, CLIENT, 42000, flags="SA")
    before = dp.stats()
    res = run(dp.progs.to_pod, pkt)
    assert (res.retval, res.data) == (TC_ACT_OK, bytes(pkt))
    assert moved(before, dp.stats()) == {"to_pod/pass": 1}


def test_tcp_to_a_frontend_without_backends_gets_a_reset(dp):
    before = dp.stats()
    res = run(dp.progs.from_pod, tcp6(CLIENT, 40000, EMPTY, 80))
    assert res.retval == TC_ACT_REDIRECT  # back out of the device it came from
    expected = (Ether(src=ETH["dst"], dst=ETH["src"])
                / IPv6(src=EMPTY, dst=CLIENT, hlim=64)
                / TCP(sport=80, dport=40000, flags="RA", seq=0, ack=1001, window=0))
    assert res.data == bytes(expected)  # exact bytes, checksum as scapy computes it
    assert moved(before, dp.stats()) == {"from_pod/reject": 1}
    # A reset is never answered.
    before = dp.stats()
    res = run(dp.progs.from_pod, tcp6(CLIENT, 40001, EMPTY, 80, flags="R"))
    assert res.retval == TC_ACT_SHOT
    assert moved(before, dp.stats()) == {"from_pod/drop": 1, "no_backend": 1}


def test_udp_to_a_frontend_without_backends_gets_port_unreachable(dp):
    dgram = udp6(CLIENT, 33000, EMPTY, 53, payload=b"query")
    before = dp.stats()
    res = run(dp.progs.from_pod, dgram)
    assert res.retval == TC_ACT_REDIRECT
    expected = (Ether(src=ETH["dst"], dst=ETH["src"])
                / IPv6(src=EMPTY, dst=CLIENT, hlim=64)
                / ICMPv6DestUnreach(code=4) / Raw(bytes(dgram[IPv6])[:48]))
    assert res.data == bytes(expected)  # the client's header and 8 bytes of UDP, quoted
    assert moved(before, dp.stats()) == {"from_pod/reject": 1}


def test_a_pod_reaching_itself_goes_through_the_hairpin_address(dp):
    """CLIENT is also a backend of web: a flow the hash sends to itself comes back from the
    hairpin address, and its reply goes back as from the frontend."""
    sport = next(p for p in range(30000, 31000)
                 if predicted(CLIENT, p, WEB, 80, 6, WEB_BACKENDS) == CLIENT)
    res = run(dp.progs.from_pod, tcp6(CLIENT, sport, WEB, 80))
    assert res.retval == TC_ACT_REDIRECT
    out = Ether(res.data)
    assert (out[IPv6].src, out[IPv6].dst, out[TCP].dport) == (HAIRPIN_ADDR6, CLIENT, 8080)
    assert rebuilt(res.data) == res.data
    # The pod answers the hairpin address: it leaves the pod as the frontend talking to it.
    res = run(dp.progs.from_pod, tcp6(CLIENT, 8080, HAIRPIN_ADDR6, sport, flags="SA"))
    assert res.retval == TC_ACT_REDIRECT
    out = Ether(res.data)
    assert (out[IPv6].src, out[TCP].sport, out[IPv6].dst, out[TCP].dport) == (WEB, 80, CLIENT, sport)
    assert rebuilt(res.data) == res.data


PASS_CASES = [
    ("TCP to an IPv6 address that is not a frontend", tcp6(CLIENT, 40000, "fd00:10:244::11", 8080)),
    ("the frontend on a port it does not serve", tcp6(CLIENT, 40000, WEB, 81)),
    ("a routing header with segments left (the destination is not the final one)",
     tcp6(CLIENT, 40000, WEB, 80, ext=IPv6ExtHdrRouting(segleft=1, addresses=["fd00::77"]))),
    ("more extension headers than are walked",
     tcp6(CLIENT, 40000, WEB, 80, ext=IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
          / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt())),
]


@pytest.mark.parametrize("desc,pkt", PASS_CASES, ids=[c[0] for c in PASS_CASES])
def test_passes_untouched(dp, desc, pkt):
    for prog, hook in ((dp.progs.from_pod, "from_pod"), (dp.progs.to_pod, "to_pod")):
        before = dp.stats()
        res = run(prog, pkt)
        assert (res.retval, res.data) == (TC_ACT_OK, bytes(pkt))
        assert moved(before, dp.stats()) == {f"{hook}/pass": 1}
    assert len(dp.progs.bpf[b"ct6"]) + len(dp.progs.bpf[b"ct6_syn"]) == 0


def _cut(pkt, n):
    return bytes(pkt)[:n]


MALFORMED_CASES = [
    ("TCP header cut after 10 bytes", _cut(tcp6(CLIENT, 40000, WEB, 80), 14 + 40 + 10)),
    ("payload length larger than the frame",
     bytes(Ether(**ETH) / IPv6(src=CLIENT, dst=WEB, plen=400) / TCP(sport=40000, dport=80))),
    ("an extension header cut short",
     _cut(tcp6(CLIENT, 40000, WEB, 80, ext=IPv6ExtHdrDestOpt(len=4)), 14 + 40 + 6)),
    ("an extension header claiming more than the payload",
     bytes(Ether(**ETH) / IPv6(src=CLIENT, dst=WEB) / IPv6ExtHdrDestOpt(len=200, nh=6)
           / TCP(sport=40000, dport=80))),
    ("version 4 in an IPv6 frame",
     bytes(Ether(**ETH) / IPv6(src=CLIENT, dst=WEB, version=4) / TCP(sport=40000, dport=80))),
]


@pytest.mark.parametrize("desc,raw", MALFORMED_CASES, ids=[c[0] for c in MALFORMED_CASES])
def test_malformed_neither_crash_nor_rewrite(dp, desc, raw):
    for prog, hook in ((dp.progs.from_pod, "from_pod"), (dp.progs.to_pod, "to_pod")):
        before = dp.stats()
        res = bpf_test_run(prog.fd, raw)
        assert (res.retval, res.data) == (TC_ACT_OK, raw)
        assert moved(before, dp.stats()) == {f"{hook}/malformed": 1}


def test_ipv4_family_of_the_dual_stack_service_is_served_too(dp):
    from scapy.layers.inet import IP

    pkt = Ether(**ETH) / IP(src="10.244.0.2", dst="10.96.0.10") / TCP(sport=40000, dport=80, flags="S")
    out = Ether(run(dp.progs.from_pod, pkt).data)
    assert (out[IP].dst, out[TCP].dport) == ("10.244.0.11", 8080)


def test_a_pod_may_use_only_its_own_ipv6_addresses(dp):
    """lb6_pod_addrs, written through the agent's device-map path: on a device whose IPv6
    addresses are listed (its marker ::), a new flow from another IPv6 source is dropped as
    spoofed; its own address passes; the device's IPv4 sources stay unchecked (no IPv4 marker).
    BPF_PROG_TEST_RUN runs the program on loopback (ifindex 1): the entries are for it, and
    removed at the end."""
    from ebpflb.dataplane.bcc_maps import BccMapWriter
    from ebpflb.dataplane.device_maps import write_device_map
    from ebpflb.maps import POD_ADDR_MARKER6, POD_ADDRS, PodAddrKey

    writer = BccMapWriter(dp.progs.bpf)
    lo = 1
    write_device_map(writer, POD_ADDRS, {PodAddrKey(lo, OTHER): 1, PodAddrKey(lo, POD_ADDR_MARKER6): 1},
                     only=lambda key: key.ifindex == lo)
    try:
        keys = {(k.ifindex, socket.inet_ntop(socket.AF_INET6, bytes(k.addr)))
                for k in dp.progs.bpf[b"lb6_pod_addrs"].keys()}
        assert {(lo, OTHER), (lo, "::")} <= keys  # the IPv6 twin map holds them
        assert all(k.ifindex != lo for k in dp.progs.bpf[b"lb4_pod_addrs"].keys())
        before = dp.stats()
        res = run(dp.progs.from_pod, tcp6("fd00:10:244::66", 40000, WEB, 80))
        assert res.retval == TC_ACT_SHOT
        assert moved(before, dp.stats()) == {"from_pod/drop": 1, "spoofed": 1}
        res = run(dp.progs.from_pod, tcp6(OTHER, 40000, WEB, 80))
        assert res.retval == TC_ACT_OK and Ether(res.data)[IPv6].dst in WEB_BACKENDS
    finally:
        write_device_map(writer, POD_ADDRS, {}, only=lambda key: key.ifindex == lo)
    assert not [k for k in dp.progs.bpf[b"lb6_pod_addrs"].keys() if k.ifindex == lo]


AFFINITY = """
apiVersion: v1
kind: Service
metadata: {name: sticky6, namespace: demo}
spec:
  clusterIP: "fd00:96::40"
  clusterIPs: ["fd00:96::40"]
  ipFamilies: [IPv6]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sticky6-a, namespace: demo, labels: {kubernetes.io/service-name: sticky6}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["fd00:10:244::31"], conditions: {ready: true}}
- {addresses: ["fd00:10:244::32"], conditions: {ready: true}}
- {addresses: ["fd00:10:244::33"], conditions: {ready: true}}
"""


def test_session_affinity_keeps_an_ipv6_client_on_one_backend(dp):
    """ClientIP affinity over IPv6: every new flow of one client goes where its first went
    (lb6_affinity, keyed by the client's IPv6 address), whatever its source port hashes to."""
    from ebpflb.dataplane.bcc_maps import lookup_affinity

    dp.program(MANIFEST + "---" + AFFINITY)
    try:
        dp.progs.bpf[b"lb6_affinity"].clear()
        first = Ether(run(dp.progs.from_pod, tcp6(OTHER, 42000, "fd00:96::40", 80)).data)[IPv6].dst
        hashed = {predicted(OTHER, p, "fd00:96::40", 80, 6,
                            ["fd00:10:244::31", "fd00:10:244::32", "fd00:10:244::33"])
                  for p in range(42001, 42031)}
        assert len(hashed) > 1  # the hash alone would spread these flows
        for sport in range(42001, 42031):
            out = Ether(run(dp.progs.from_pod, tcp6(OTHER, sport, "fd00:96::40", 80)).data)
            assert out[IPv6].dst == first
        svc_id = next(v.svc_id for k, v in read_snapshot_of(dp).services.items()
                      if k.vip == "fd00:96::40")
        bound = lookup_affinity(dp.progs.bpf, svc_id, OTHER)
        backend = read_snapshot_of(dp).backends[bound[0]]
        assert backend.addr == first
    finally:
        dp.progs.bpf[b"lb6_affinity"].clear()
        dp.program(MANIFEST)


def read_snapshot_of(dp):
    from ebpflb.apply import read_snapshot

    return read_snapshot(dp.writer)


def test_the_ipv6_programs_stay_in_their_array_when_the_loader_is_gone(tmp_path):
    """lb6_progs and lb6_xdp_progs are pinned: once the process that loaded the programs closes
    everything (an agent exiting with --on-exit keep, its TC filters and XDP programs left
    attached), the arrays still hold the four TC and two XDP IPv6 programs the entry points
    tail-call. An unpinned array is emptied by the kernel when its last user-space holder goes,
    which left IPv6 untranslated until the next agent."""
    import json
    import shutil
    import subprocess

    from ebpflb.dataplane.config import DataplaneConfig
    from ebpflb.dataplane.loader import load_programs

    from ..conftest import unique

    config = DataplaneConfig(pin_dir=f"/sys/fs/bpf/{unique('ebpflb-test6-')}", ct_max_entries=1024)
    try:
        progs = load_programs(config, socket_hooks=False)
        assert len(progs.ipv6) == 6
        progs.bpf.cleanup()  # every fd this process held: maps and programs
        for array, count in (("lb6_progs", 4), ("lb6_xdp_progs", 2)):
            out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned",
                                  f"{config.pin_dir}/{array}"], capture_output=True, text=True,
                                 check=True)
            entries = json.loads(out.stdout)
            assert len(entries) == count, (array, entries)
    finally:
        shutil.rmtree(config.pin_dir, ignore_errors=True)


def first_ports(frame):
    """(sport, dport) of a first fragment (scapy leaves a fragment's payload raw)."""
    udp = UDP(bytes(frame[IPv6ExtHdrFragment].payload)[:8])
    return udp.sport, udp.dport


def test_a_datagram_in_fragments_follows_its_first_fragment(dp):
    """IPv6 fragments (fragments.tmpl.h as frag6): the first fragment is translated by the normal
    path and recorded; the later ones, which carry no ports, get the same addresses, on the way
    to the backend (lb6_from_pod) and back to the client (lb6_to_pod). A later fragment whose
    first was not seen passes untouched and is counted (frag_miss). Before frag6, later
    fragments passed untranslated: every fragmented IPv6 datagram through a Service was lost."""
    from scapy.layers.inet6 import fragment6

    dgram = (Ether(**ETH) / IPv6(src=OTHER, dst=DNS, hlim=64) / IPv6ExtHdrFragment(id=0x51)
             / UDP(sport=33500, dport=53) / Raw(b"q" * 3000))
    frags = fragment6(dgram[IPv6], 1280)
    assert len(frags) >= 3
    backend = predicted(OTHER, 33500, DNS, 53, 17, DNS_BACKENDS)
    before = dp.stats()
    outs = [Ether(run(dp.progs.from_pod, Ether(**ETH) / f).data) for f in frags]
    assert all((o[IPv6].src, o[IPv6].dst) == (OTHER, backend) for o in outs)
    assert first_ports(outs[0]) == (33500, 9053)
    assert moved(before, dp.stats()) == {"from_pod/new": 1, "conntrack_insert": 1,
                                         "from_pod/fragment": len(frags) - 1}
    # The backend's answer in fragments: back from the frontend to the client.
    answer = (IPv6(src=backend, dst=OTHER, hlim=64) / IPv6ExtHdrFragment(id=0x52)
              / UDP(sport=9053, dport=33500) / Raw(b"a" * 3000))
    back = [Ether(run(dp.progs.to_pod, Ether(**ETH) / f).data) for f in fragment6(answer, 1280)]
    assert all((o[IPv6].src, o[IPv6].dst) == (DNS, OTHER) for o in back)
    assert first_ports(back[0]) == (53, 33500)
    # Reassembled, the translated datagram is whole and its UDP checksum right (the first
    # fragment's checksum covers it all, fixed by the normal path).
    data = b"".join(bytes(o[IPv6ExtHdrFragment].payload)
                    for o in sorted(outs, key=lambda o: o[IPv6ExtHdrFragment].offset))
    whole = IPv6(src=OTHER, dst=backend, nh=17) / UDP(data)
    assert bytes(whole[UDP].payload) == b"q" * 3000
    fresh = IPv6(src=OTHER, dst=backend, nh=17) / UDP(data)
    del fresh[UDP].chksum
    assert IPv6(bytes(fresh))[UDP].chksum == whole[UDP].chksum
    # A later fragment of a datagram never seen: untouched, counted as a miss.
    stray = Ether(**ETH) / frags[1].copy()
    stray[IPv6ExtHdrFragment].id = 0x99
    before = dp.stats()
    res = run(dp.progs.from_pod, stray)
    assert (res.retval, res.data) == (TC_ACT_OK, bytes(stray))
    assert moved(before, dp.stats()) == {"from_pod/pass": 1, "frag_miss": 1}


def test_later_fragments_follow_a_first_fragment_with_options_after_the_fragment_header(dp):
    """Headers after the Fragment header (destination options, RFC 8200's order) are in the first
    fragment only: a later fragment's Fragment header names them, not UDP, as its next header.
    The record of the first fragment is keyed by that same next header, so the later ones still
    follow it."""
    first = (Ether(**ETH) / IPv6(src=OTHER, dst=DNS, hlim=64)
             / IPv6ExtHdrFragment(id=0x61, m=1, offset=0, nh=60) / IPv6ExtHdrDestOpt(nh=17)
             / UDP(sport=33600, dport=53, len=8 + 1200, chksum=0x4321) / Raw(b"q" * 1000))
    later = (Ether(**ETH) / IPv6(src=OTHER, dst=DNS, hlim=64)
             / IPv6ExtHdrFragment(id=0x61, m=0, offset=127, nh=60) / Raw(b"q" * 208))
    backend = predicted(OTHER, 33600, DNS, 53, 17, DNS_BACKENDS)
    before = dp.stats()
    out = Ether(run(dp.progs.from_pod, first).data)
    assert (out[IPv6].dst, out[UDP].dport) == (backend, 9053)
    res = run(dp.progs.from_pod, later)
    assert res.retval == TC_ACT_OK
    got = Ether(res.data)
    assert (got[IPv6].src, got[IPv6].dst) == (OTHER, backend)
    assert bytes(got[IPv6].payload) == bytes(later[IPv6].payload)
    assert moved(before, dp.stats()) == {"from_pod/new": 1, "conntrack_insert": 1,
                                         "from_pod/fragment": 1}


def _icmp6_expected(raw: bytes, outer=None, inner=None, icmp=ICMPv6DestUnreach) -> bytes:
    """`raw` (an ICMPv6 error frame) with outer and quoted fields changed, the ICMPv6 checksum
    recomputed by scapy; the quoted TCP/UDP checksum left as quoted (nobody fixes it: the
    receiver's stack only reads the ports)."""
    from scapy.layers.inet6 import IPerror6, TCPerror, UDPerror

    e = Ether(raw)
    for k, v in (outer or {}).items():
        setattr(e[IPv6], k, v)
    for k, v in (inner or {}).items():
        layer = IPerror6 if k in ("src", "dst") else (TCPerror if TCPerror in e else UDPerror)
        setattr(e[layer], k, v)
    del e[icmp].cksum
    return bytes(Ether(bytes(e)))


def test_icmpv6_errors_about_a_flow_are_translated_both_ways(dp):
    """The backend's "port unreachable" about the client's packet reaches the client as from the
    frontend, quoting client -> frontend (lb6_to_pod); the client's error about a reply it got
    (quoting frontend -> client) reaches the backend quoting backend -> client, addressed to it
    (lb6_from_pod). Without this the client's socket never hears of the error; for "packet too
    big", path MTU discovery breaks (IPv6 routers never fragment)."""
    from scapy.layers.inet6 import ICMPv6PacketTooBig

    syn = tcp6(OTHER, 43000, WEB, 80)
    backend = Ether(run(dp.progs.from_pod, syn).data)[IPv6].dst
    assert backend in WEB_BACKENDS
    # To the client, from the backend itself, about the client's (translated) packet.
    err = bytes(Ether(**ETH) / IPv6(src=backend, dst=OTHER)
                / ICMPv6DestUnreach(code=4) / IPv6(src=OTHER, dst=backend, hlim=63)
                / TCP(sport=43000, dport=8080, flags="S", seq=1000))
    before = dp.stats()
    res = run(dp.progs.to_pod, err)
    assert res.retval == TC_ACT_OK
    assert res.data == _icmp6_expected(err, {"src": WEB}, {"dst": WEB, "dport": 80})
    assert moved(before, dp.stats()) == {"to_pod/icmp_error": 1}
    # From the client, about a reply it got (too big for its link, say).
    err = bytes(Ether(**ETH) / IPv6(src=OTHER, dst=WEB)
                / ICMPv6PacketTooBig(mtu=1280) / IPv6(src=WEB, dst=OTHER)
                / TCP(sport=80, dport=43000, flags="A"))
    before = dp.stats()
    res = run(dp.progs.from_pod, err)
    assert res.retval == TC_ACT_OK
    assert res.data == _icmp6_expected(err, {"dst": backend}, {"src": backend, "sport": 8080},
                                       icmp=ICMPv6PacketTooBig)
    assert moved(before, dp.stats()) == {"from_pod/icmp_error": 1}
    # An error about no flow of ours passes untouched.
    stray = bytes(Ether(**ETH) / IPv6(src="fd00:10:244::11", dst=OTHER)
                  / ICMPv6DestUnreach(code=4) / IPv6(src=OTHER, dst="fd00:10:244::11")
                  / TCP(sport=43999, dport=8080))
    before = dp.stats()
    res = run(dp.progs.to_pod, stray)
    assert (res.retval, res.data) == (TC_ACT_OK, stray)
    assert moved(before, dp.stats()) == {"to_pod/pass": 1}


def _frontend6(frame: bytes, frontends):
    """The frontend an IPv6 frame is addressed to, as the parser would find it: the destination
    and, after any hop-by-hop or destination options headers (at most six), a TCP/UDP header's
    destination port. None when it is not one; "unknown" for what this oracle does not walk
    (other extension headers, fragments)."""
    if len(frame) < 54 or frame[12:14] != b"\x86\xdd" or frame[14] >> 4 != 6:
        return None
    plen = int.from_bytes(frame[18:20], "big")
    if 54 + plen > len(frame):
        return None  # malformed: untouched
    nh, off = frame[20], 54
    for _ in range(6):
        if nh not in (0, 60):
            break
        if off + 8 > len(frame):
            return None
        nh, off = frame[off], off + (frame[off + 1] + 1) * 8
    if nh in (0, 60, 43, 44, 51):
        return "unknown"
    if nh not in (6, 17) or off > 54 + plen or off + (20 if nh == 6 else 8) > len(frame):
        return None
    key = (frame[38:54], int.from_bytes(frame[off + 2:off + 4], "big"), nh)
    return (key, off) if key in frontends else None


def test_fuzz_ipv6(dp):
    """30,000 mutated IPv6 frames (bounded to 40 s), as the IPv4 fuzz run: the program always
    returns OK, SHOT or a redirect; never rewrites a frame that is not a well-formed packet to a
    frontend (from a pod); rewrites one only to a backend of that frontend with its target port,
    or, for a frontend with no backend, into a rejection back to the sender."""
    import random
    import time

    a6 = lambda ip: socket.inet_pton(socket.AF_INET6, ip)  # noqa: E731
    frontends = {(a6(WEB), 80, 6): ([a6(b) for b in WEB_BACKENDS], 8080),
                 (a6(DNS), 53, 17): ([a6(b) for b in DNS_BACKENDS], 9053),
                 (a6(EMPTY), 80, 6): ([], None), (a6(EMPTY), 53, 17): ([], None)}
    templates = [bytes(tcp6(OTHER, 40000, WEB, 80)), bytes(tcp6(OTHER, 40000, WEB, 80, "A")),
                 bytes(udp6(OTHER, 5000, DNS, 53, b"z" * 20)),
                 bytes(tcp6(OTHER, 40000, "fd00:10:244::11", 8080)),
                 bytes(tcp6(OTHER, 41000, EMPTY, 80)),
                 bytes(tcp6(OTHER, 40000, WEB, 80, ext=IPv6ExtHdrDestOpt())),
                 bytes(Ether(**ETH) / IPv6(src=OTHER, dst=DNS) / IPv6ExtHdrFragment(m=1, id=9)
                       / UDP(sport=5, dport=53) / Raw(b"q" * 32))]
    rng = random.Random(20261205)
    started = time.monotonic()
    rewritten = rejected = checked = 0
    for i in range(30_000):
        frame = bytearray(rng.choice(templates))
        for _ in range(rng.randrange(1, 4)):
            frame[rng.randrange(14, len(frame))] = rng.randrange(256)
        if rng.random() < 0.2:
            frame = frame[:rng.randrange(54, len(frame) + 1)]
        if rng.random() < 0.3:
            frame[38:54] = a6(WEB)
        frame = bytes(frame)
        from_pod = i % 2 == 0
        prog = dp.progs.from_pod if from_pod else dp.progs.to_pod
        res = run(prog, frame)
        assert res.retval in (TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT), frame.hex()
        found = _frontend6(frame, frontends) if from_pod else None
        target, l4_off = found if isinstance(found, tuple) else (found, 0)
        if target == "unknown":
            pass
        elif res.retval == TC_ACT_REDIRECT:
            assert target is not None, frame.hex()
            backends, _ = frontends[target]
            if backends:  # a pod reaching itself
                assert frame[22:38] in backends and res.data[38:54] == frame[22:38], frame.hex()
            else:  # a RST or an ICMPv6 error from the frontend back to the sender
                assert res.data[22:38] == frame[38:54] and res.data[38:54] == frame[22:38]
                rejected += 1
        elif res.data != frame and from_pod:
            assert target is not None, f"rewrote a non-frontend frame {frame.hex()}"
            backends, port = frontends[target]
            assert res.data[38:54] in backends, frame.hex()
            assert int.from_bytes(res.data[l4_off + 2:l4_off + 4], "big") == port, frame.hex()
            rewritten += 1
        if i % 10_000 == 0:
            dp.clear_conntrack()
        checked += 1
        if time.monotonic() - started > 40:
            break
    print(f"\nipv6 fuzz: {checked} frames, {rewritten} rewritten, {rejected} rejected")
    assert checked >= 10_000, f"only {checked} frames in the time bound"
    assert rewritten > 500 and rejected > 50


def test_icmpv6_errors_quoting_extension_headers_are_translated(dp):
    """An ICMPv6 error quoting a packet with extension headers (the first fragment of a large UDP
    datagram, destination options) is translated as one quoting the bare packet: the quoted
    ports are found after the headers. This is how path MTU discovery learns about a fragmented
    datagram: packet too big quotes its first fragment. A quoted later fragment has no ports and
    passes untouched."""
    from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6ExtHdrDestOpt
    from scapy.layers.inet6 import IPerror6, UDPerror

    out = Ether(run(dp.progs.from_pod, udp6(OTHER, 5300, DNS, 53, b"q" * 8)).data)
    backend = out[IPv6].dst
    assert backend in DNS_BACKENDS
    for ext in (IPv6ExtHdrFragment(m=1, id=77, offset=0, nh=17),
                IPv6ExtHdrDestOpt(nh=17),
                IPv6ExtHdrDestOpt(nh=44) / IPv6ExtHdrFragment(m=1, id=78, offset=0, nh=17)):
        # A router between the pods answers the client's datagram, as translated, with too big.
        err = bytes(Ether(**ETH) / IPv6(src="fd00:200::99", dst=OTHER)
                    / ICMPv6PacketTooBig(mtu=1280) / IPv6(src=OTHER, dst=backend, hlim=63)
                    / ext / UDP(sport=5300, dport=9053, len=1408, chksum=0x1234)
                    / Raw(b"q" * 64))
        before = dp.stats()
        res = run(dp.progs.to_pod, err)
        assert res.retval == TC_ACT_OK
        got = Ether(res.data)
        # (scapy dissects the quoted UDP header after extension headers as UDP, not UDPerror)
        quoted = lambda p: p.getlayer(UDPerror) or p.getlayer(UDP)  # noqa: E731
        assert (got[IPerror6].dst, quoted(got).dport) == (DNS, 53), ext.summary()
        fresh = Ether(err)
        fresh[IPerror6].dst = DNS
        quoted(fresh).dport = 53
        del fresh[ICMPv6PacketTooBig].cksum
        assert res.data == bytes(Ether(bytes(fresh))), ext.summary()
        assert moved(before, dp.stats()) == {"to_pod/icmp_error": 1}
    later = bytes(Ether(**ETH) / IPv6(src="fd00:200::99", dst=OTHER)
                  / ICMPv6PacketTooBig(mtu=1280) / IPv6(src=OTHER, dst=backend, hlim=63)
                  / IPv6ExtHdrFragment(m=0, id=77, offset=175, nh=17) / Raw(b"q" * 64))
    before = dp.stats()
    res = run(dp.progs.to_pod, later)
    assert (res.retval, res.data) == (TC_ACT_OK, later)
    assert moved(before, dp.stats()) == {"to_pod/pass": 1}
