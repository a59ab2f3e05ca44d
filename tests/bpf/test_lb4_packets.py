"""Packet fixtures for the TC programs, run with BPF_PROG_TEST_RUN on the real programs.

Each row: description, input packet, expected verdict, expected output packet. Expected packets
are built independently with scapy (checksums recomputed from scratch), and the backend a new flow
should reach is predicted by the control plane's own flow hash over the programmed slots.
"""
from ipaddress import IPv4Address

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from ebpflb.dataplane.testrun import test_run as bpf_test_run
from ebpflb.flowhash import FLOW_HASH_SEED, flow_hash

from .conftest import TC_ACT_OK, TC_ACT_SHOT

pytestmark = pytest.mark.bpf

MANIFEST = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: demo}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 9053}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: demo}
spec:
  clusterIP: 10.96.0.30
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.0.11], conditions: {ready: true}}
- {addresses: [10.244.0.12], conditions: {ready: true}}
- {addresses: [10.244.0.13], conditions: {ready: true}}
- {addresses: [10.244.0.14], conditions: {ready: false}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-a, namespace: demo, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{name: dns, port: 9053, protocol: UDP}]
endpoints:
- {addresses: [10.244.0.21], conditions: {ready: true}}
- {addresses: [10.244.0.22], conditions: {ready: true}}
"""

CLIENT = "10.244.0.2"
WEB_BACKENDS = ["10.244.0.11", "10.244.0.12", "10.244.0.13"]
DNS_BACKENDS = ["10.244.0.21", "10.244.0.22"]
ETH = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


@pytest.fixture(scope="module")
def dp(dataplane):
    dataplane.program(MANIFEST)
    return dataplane


@pytest.fixture(autouse=True)
def fresh_conntrack(dataplane):
    dataplane.clear_conntrack()


def predicted(src, sport, dst, dport, proto, backends):
    h = flow_hash(int(IPv4Address(src)), int(IPv4Address(dst)), sport, dport, proto, FLOW_HASH_SEED)
    return backends[h % len(backends)]


def rebuilt(pkt):
    """The packet as bytes with every checksum recomputed by scapy (independent of the program)."""
    p = Ether(bytes(pkt))
    for layer in (IP, TCP, UDP):
        if layer in p and not (layer is UDP and p[UDP].chksum == 0):
            del p[layer].chksum
    return bytes(p)


def run(dp, prog, pkt):
    return bpf_test_run(prog.fd, bytes(pkt))


def tcp(src, sport, dst, dport, flags="S", payload=b""):
    return Ether(**ETH) / IP(src=src, dst=dst, ttl=64) / TCP(sport=sport, dport=dport, flags=flags) / Raw(payload)


def udp(src, sport, dst, dport, payload=b"ping", chksum=None):
    u = UDP(sport=sport, dport=dport)
    if chksum is not None:
        u.chksum = chksum
    return Ether(**ETH) / IP(src=src, dst=dst) / u / Raw(payload)


def dnat_case(desc, pkt, backends, target_port):
    ip = pkt[IP]
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    backend = predicted(ip.src, l4.sport, ip.dst, l4.dport, ip.proto, backends)
    exp = pkt.copy()
    exp[IP].dst = backend
    (exp[TCP] if TCP in exp else exp[UDP]).dport = target_port
    return (desc, pkt, TC_ACT_OK, rebuilt(exp))


DNAT_CASES = [
    dnat_case("TCP SYN to ClusterIP is DNATed to the hashed backend",
              tcp(CLIENT, 40000, "10.96.0.10", 80), WEB_BACKENDS, 8080),
    dnat_case("TCP with payload and another source port",
              tcp(CLIENT, 51234, "10.96.0.10", 80, flags="PA", payload=b"GET / HTTP/1.1\r\n\r\n"),
              WEB_BACKENDS, 8080),
    dnat_case("UDP datagram to ClusterIP is DNATed with its checksum fixed",
              udp(CLIENT, 33333, "10.96.0.20", 53), DNS_BACKENDS, 9053),
    dnat_case("UDP without checksum keeps checksum 0",
              udp(CLIENT, 33334, "10.96.0.20", 53, chksum=0), DNS_BACKENDS, 9053),
]

PASS_CASES = [
    ("TCP to a non-service address passes untouched", tcp(CLIENT, 40000, "10.244.0.11", 8080)),
    ("TCP to the VIP on a port that is not a frontend", tcp(CLIENT, 40000, "10.96.0.10", 81)),
    ("UDP to a TCP-only frontend", udp(CLIENT, 40000, "10.96.0.10", 80)),
    ("ICMP echo to the VIP", Ether(**ETH) / IP(src=CLIENT, dst="10.96.0.10") / ICMP()),
    ("ARP passes", Ether(**ETH) / ARP(pdst="10.96.0.10")),
    ("IPv6 passes", Ether(**ETH) / IPv6(dst="fd00::1") / UDP(dport=53)),
    ("non-first fragment to a frontend, its first never seen, passes untouched",
     Ether(**ETH) / IP(src=CLIENT, dst="10.96.0.10", frag=10, proto=6) / Raw(b"x" * 16)),
]


def _truncated(n_l4_bytes):
    full = bytes(tcp(CLIENT, 40000, "10.96.0.10", 80))
    return full[: 14 + 20 + n_l4_bytes]


def _bad_ip(**fields):
    return bytes(Ether(**ETH) / IP(src=CLIENT, dst="10.96.0.10", **fields) / TCP(sport=40000, dport=80))


MALFORMED_CASES = [
    # BPF_PROG_TEST_RUN refuses an IPv4 ethertype followed by less than 20 bytes (the kernel
    # pulls the IP header before the program runs), so the shortest IPv4 cases here carry 20.
    ("IPv4 header claims options past the end of the frame",
     bytes(Ether(**ETH) / IP(src=CLIENT, dst="10.96.0.10", ihl=15, proto=6))[: 14 + 20] + b"\0" * 4),
    ("IPv4 header only, no L4 header", bytes(tcp(CLIENT, 40000, "10.96.0.10", 80))[: 14 + 20]),
    ("TCP header cut after 10 bytes", _truncated(10)),
    ("IHL below 5", _bad_ip(ihl=4)),
    ("total length larger than the frame", _bad_ip(len=400)),
    ("TCP data offset below 5",
     bytes(Ether(**ETH) / IP(src=CLIENT, dst="10.96.0.10") / TCP(sport=40000, dport=80, dataofs=4))),
    ("UDP length below 8",
     bytes(Ether(**ETH) / IP(src=CLIENT, dst="10.96.0.20") / UDP(sport=40000, dport=53, len=4))),
]


@pytest.mark.parametrize("desc,pkt,verdict,expected", DNAT_CASES, ids=[c[0] for c in DNAT_CASES])
def test_dnat(dp, desc, pkt, verdict, expected):
    res = run(dp, dp.progs.from_pod, pkt)
    assert res.retval == verdict
    assert res.data == expected, Ether(res.data).show2(dump=True)
    # Checksums verified by scapy on the output itself, not just equal to our expectation.
    out = Ether(res.data)
    assert rebuilt(out) == res.data


@pytest.mark.parametrize("desc,pkt", PASS_CASES, ids=[c[0] for c in PASS_CASES])
def test_passthrough_untouched(dp, desc, pkt):
    for prog, hook in ((dp.progs.from_pod, "from_pod"), (dp.progs.to_pod, "to_pod")):
        before = dp.stats()
        res = run(dp, prog, pkt)
        assert res.retval == TC_ACT_OK
        assert res.data == bytes(pkt)
        after = dp.stats()
        # A fragment to a frontend with no first seen is also counted as such on the way in.
        miss = {"frag_miss": 1} if "first never seen" in desc else {}
        assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {
            f"{hook}/pass": 1, **miss}


@pytest.mark.parametrize("desc,raw", MALFORMED_CASES, ids=[c[0] for c in MALFORMED_CASES])
def test_malformed_neither_crash_nor_rewrite(dp, desc, raw):
    for prog, hook in ((dp.progs.from_pod, "from_pod"), (dp.progs.to_pod, "to_pod")):
        before = dp.stats()
        res = bpf_test_run(prog.fd, raw)
        assert res.retval == TC_ACT_OK
        assert res.data == raw
        after = dp.stats()
        assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {
            f"{hook}/malformed": 1}
    assert dp.ct_entries() == 0


TC_ACT_REDIRECT = 7


def moved(before, after):
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def test_frontend_without_backends_rejects_tcp_with_a_reset(dp):
    before = dp.stats()
    syn = tcp(CLIENT, 40000, "10.96.0.30", 80)
    syn[TCP].seq = 1000
    res = run(dp, dp.progs.from_pod, syn)
    assert res.retval == TC_ACT_REDIRECT  # sent back out of the device it came from
    rst = Ether(res.data)
    assert (rst.src, rst.dst) == (ETH["dst"], ETH["src"])
    assert (rst[IP].src, rst[IP].dst, rst[TCP].sport, rst[TCP].dport) == ("10.96.0.30", CLIENT, 80, 40000)
    assert str(rst[TCP].flags) == "RA" and rst[TCP].seq == 0 and rst[TCP].ack == 1001
    assert len(res.data) == 14 + 40 and rebuilt(rst) == res.data  # exact size, valid checksums
    assert moved(before, dp.stats()) == {"from_pod/reject": 1}  # answered: not a drop
    # A segment with ACK set is answered with RST whose sequence is that ACK (RFC 793).
    ack = tcp(CLIENT, 40001, "10.96.0.30", 80, flags="PA", payload=b"hello")
    ack[TCP].ack = 777
    rst = Ether(run(dp, dp.progs.from_pod, ack).data)
    assert str(rst[TCP].flags) == "R" and rst[TCP].seq == 777
    # A reset is never answered.
    before = dp.stats()
    res = run(dp, dp.progs.from_pod, tcp(CLIENT, 40002, "10.96.0.30", 80, flags="R"))
    assert res.retval == TC_ACT_SHOT
    assert moved(before, dp.stats()) == {"from_pod/drop": 1, "no_backend": 1}


def test_frontend_without_backends_rejects_udp_with_port_unreachable(dp):
    dp.program(MANIFEST.replace("- {addresses: [10.244.0.21], conditions: {ready: true}}\n", "")
               .replace("- {addresses: [10.244.0.22], conditions: {ready: true}}\n", ""))
    try:
        dgram = udp(CLIENT, 33000, "10.96.0.20", 53, payload=b"query")
        res = run(dp, dp.progs.from_pod, dgram)
        assert res.retval == TC_ACT_REDIRECT
        err = Ether(res.data)
        assert (err[IP].src, err[IP].dst) == ("10.96.0.20", CLIENT)
        assert (err[ICMP].type, err[ICMP].code) == (3, 3)
        quoted = bytes(err[ICMP].payload)
        # The client's own IP header and the first 8 bytes of its UDP header, unchanged.
        assert quoted == bytes(dgram[IP])[:28]
        assert len(res.data) == 14 + 20 + 8 + 28
        fresh = Ether(res.data)
        del fresh[IP].chksum, fresh[ICMP].chksum
        assert bytes(Ether(bytes(fresh))) == res.data  # checksums as scapy computes them
    finally:
        dp.program(MANIFEST)


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_reply_is_reverse_nated(dp, proto):
    if proto == "tcp":
        fwd, vip, vport, bport, backends = tcp(CLIENT, 45000, "10.96.0.10", 80), "10.96.0.10", 80, 8080, WEB_BACKENDS
    else:
        fwd, vip, vport, bport, backends = udp(CLIENT, 45000, "10.96.0.20", 53), "10.96.0.20", 53, 9053, DNS_BACKENDS
    out = Ether(run(dp, dp.progs.from_pod, fwd).data)
    backend = out[IP].dst
    assert backend == predicted(CLIENT, 45000, vip, vport, fwd[IP].proto, backends)
    if proto == "tcp":
        reply = tcp(backend, bport, CLIENT, 45000, flags="SA", payload=b"hello")
    else:
        reply = udp(backend, bport, CLIENT, 45000, payload=b"pong")
    res = run(dp, dp.progs.to_pod, reply)
    assert res.retval == TC_ACT_OK
    exp = reply.copy()
    exp[IP].src = vip
    (exp[TCP] if proto == "tcp" else exp[UDP]).sport = vport
    assert res.data == rebuilt(exp)
    # The reply program does not touch replies of flows it has not seen.
    stranger = tcp(backend, bport, CLIENT, 45001, flags="SA")
    assert run(dp, dp.progs.to_pod, stranger).data == bytes(stranger)


def test_conntrack_keeps_backend_when_backends_change(dp):
    pkt = tcp(CLIENT, 47000, "10.96.0.10", 80)
    first = Ether(run(dp, dp.progs.from_pod, pkt).data)[IP].dst
    remaining = [b for b in WEB_BACKENDS if b != first]
    # Remove the chosen backend from the Service: established flow keeps it, new flows avoid it.
    dp.program(MANIFEST.replace(f"- {{addresses: [{first}], conditions: {{ready: true}}}}",
                                f"- {{addresses: [{first}], conditions: {{ready: false}}}}"))
    try:
        again = run(dp, dp.progs.from_pod, tcp(CLIENT, 47000, "10.96.0.10", 80, flags="A"))
        assert Ether(again.data)[IP].dst == first
        for sport in range(48000, 48050):
            new = Ether(run(dp, dp.progs.from_pod, tcp(CLIENT, sport, "10.96.0.10", 80)).data)
            assert new[IP].dst == predicted(CLIENT, sport, "10.96.0.10", 80, 6, remaining)
    finally:
        dp.program(MANIFEST)


def test_hash_spreads_sequential_source_ports(dp):
    """curl-like nearly sequential source ports must not pile onto one backend."""
    hits = {}
    for sport in range(50000, 50300):
        dst = Ether(run(dp, dp.progs.from_pod, tcp(CLIENT, sport, "10.96.0.10", 80)).data)[IP].dst
        hits[dst] = hits.get(dst, 0) + 1
    assert set(hits) == set(WEB_BACKENDS)
    assert min(hits.values()) >= 60, hits


def test_hairpin_a_pod_reaching_itself(dp):
    """The pod that the hash picks as backend is the client: its packet comes back to it from
    169.254.42.1, and its reply to that address goes back to it from the VIP."""
    HAIRPIN = "169.254.42.1"
    me, port = next((b, port) for port in range(46000, 47000) for b in WEB_BACKENDS
                    if predicted(b, port, "10.96.0.10", 80, 6, WEB_BACKENDS) == b)
    syn = tcp(me, port, "10.96.0.10", 80)
    res = run(dp, dp.progs.from_pod, syn)
    assert res.retval == TC_ACT_REDIRECT  # straight back out of the pod's own device
    exp = syn.copy()
    exp[IP].src, exp[IP].dst, exp[TCP].dport = HAIRPIN, me, 8080
    exp[Ether].src, exp[Ether].dst = syn[Ether].dst, syn[Ether].src  # bounced to the pod
    assert res.data == rebuilt(exp)
    reply = tcp(me, 8080, HAIRPIN, port, flags="SA")
    res = run(dp, dp.progs.from_pod, reply)
    assert res.retval == TC_ACT_REDIRECT
    exp = reply.copy()
    exp[IP].src, exp[TCP].sport, exp[IP].dst = "10.96.0.10", 80, me
    exp[Ether].src, exp[Ether].dst = reply[Ether].dst, reply[Ether].src
    assert res.data == rebuilt(exp)
    # A packet to the hairpin address of no known flow is left alone.
    stray = tcp(me, 8080, HAIRPIN, port + 1, flags="SA")
    assert run(dp, dp.progs.from_pod, stray).data == bytes(stray)


def _icmp_error(src, dst, quoted, icmp_type=3, code=3):
    return Ether(**ETH) / IP(src=src, dst=dst) / ICMP(type=icmp_type, code=code) / Raw(bytes(quoted)[:28])


def _recomputed(pkt):
    """Checksums recomputed by scapy: the outer and quoted IP headers' and the ICMP one (the
    quoted UDP checksum is left as sent: RFC 792 quotes only 8 bytes, it cannot be checked)."""
    p = Ether(bytes(pkt))
    del p[IP].chksum, p[ICMP].chksum
    inner = IP(bytes(p[ICMP].payload)[:20])
    del inner.chksum
    p[ICMP].remove_payload()
    p = p / Raw(bytes(inner) + bytes(pkt[ICMP].payload)[20:28])
    return bytes(Ether(bytes(p)))


@pytest.mark.parametrize("icmp_type,code", [(3, 3), (3, 4), (11, 0)],
                         ids=["port unreachable", "fragmentation needed", "time exceeded"])
def test_icmp_error_from_the_backend_reaches_the_client_as_the_vip(dp, icmp_type, code):
    fwd = udp(CLIENT, 45500, "10.96.0.20", 53)
    backend = Ether(run(dp, dp.progs.from_pod, fwd).data)[IP].dst
    # What the backend received, and quotes in its error.
    seen = IP(src=CLIENT, dst=backend) / UDP(sport=45500, dport=9053) / Raw(b"ping")
    err = _icmp_error(backend, CLIENT, seen, icmp_type, code)
    res = run(dp, dp.progs.to_pod, err)
    assert res.retval == TC_ACT_OK
    sent_csum = IP(bytes(seen))[UDP].chksum  # the quoted UDP checksum stays as the backend saw it
    client_view = IP(src=CLIENT, dst="10.96.0.20") / UDP(sport=45500, dport=53, chksum=sent_csum) / Raw(b"ping")
    expected = _icmp_error("10.96.0.20", CLIENT, client_view, icmp_type, code)
    assert res.data == _recomputed(expected)
    # An error from a router on the way keeps its source; only the quote is translated.
    err = _icmp_error("10.244.0.1", CLIENT, seen, icmp_type, code)
    out = Ether(run(dp, dp.progs.to_pod, err).data)
    assert out[IP].src == "10.244.0.1"
    assert IP(bytes(out[ICMP].payload)[:20]).dst == "10.96.0.20"


def test_icmp_error_from_the_client_reaches_the_backend(dp):
    fwd = udp(CLIENT, 45600, "10.96.0.20", 53)
    backend = Ether(run(dp, dp.progs.from_pod, fwd).data)[IP].dst
    # The client got a reply from the VIP and answers it with port unreachable.
    got = IP(src="10.96.0.20", dst=CLIENT) / UDP(sport=53, dport=45600) / Raw(b"pong")
    err = _icmp_error(CLIENT, "10.96.0.20", got)
    res = run(dp, dp.progs.from_pod, err)
    assert res.retval == TC_ACT_OK
    got_csum = IP(bytes(got))[UDP].chksum
    backend_view = IP(src=backend, dst=CLIENT) / UDP(sport=9053, dport=45600, chksum=got_csum) / Raw(b"pong")
    assert res.data == _recomputed(_icmp_error(CLIENT, backend, backend_view))


def test_icmp_error_about_an_unknown_flow_is_untouched(dp):
    quoted = IP(src=CLIENT, dst="10.244.0.99") / UDP(sport=1, dport=2)
    err = _icmp_error("10.244.0.99", CLIENT, quoted)
    for prog in (dp.progs.to_pod, dp.progs.from_pod):
        assert run(dp, prog, err).data == bytes(err)
