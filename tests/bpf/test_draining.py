"""A TCP frontend removed while connections through it are open (here: the Service's port changed)
drains: their packets keep their translation both ways, a new connection to the old port is not
served (it passes untouched, as to a port that never was a frontend), and the record goes with
the next full sync after the flows ended. Real programs (lb4_from_pod, lb4_to_pod) with
BPF_PROG_TEST_RUN, maps programmed through the real apply path and purged by the agent's purge
step. Every test here fails on 8c0200c, where the frontend went at once and its flows with it.
The node-device side is in test_northsouth.py (test_a_removed_node_port_drains)."""
import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from ebpflb.apply import read_snapshot
from ebpflb.dataplane.ct_gc import purge
from ebpflb.dataplane.testrun import test_run as bpf_run
from ebpflb.draining import is_draining
from ebpflb.maps import SERVICES, SvcKey
from ebpflb.plan import conntrack_purge

from .test_lb4_packets import CLIENT, ETH, MANIFEST, WEB_BACKENDS

pytestmark = pytest.mark.bpf

VIP = "10.96.0.10"
OLD, NEW = SvcKey(VIP, 80, 6), SvcKey(VIP, 81, 6)
MOVED = MANIFEST.replace("port: 80, protocol: TCP, targetPort: http}]\n---\napiVersion: v1\nkind: "
                         "Service\nmetadata: {name: dns",
                         "port: 81, protocol: TCP, targetPort: http}]\n---\napiVersion: v1\nkind: "
                         "Service\nmetadata: {name: dns", 1)


def tcp(src, sport, dst, dport, flags, payload=b""):
    return Ether(**ETH) / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags) / payload


def from_pod(dp, pkt):
    return bpf_run(dp.progs.from_pod.fd, bytes(pkt))


def to_pod(dp, pkt):
    return bpf_run(dp.progs.to_pod.fd, bytes(pkt))


def stats_delta(before, after):
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


@pytest.fixture
def open_connection(dataplane):
    """A connection CLIENT:7400 -> VIP:80 past its handshake, then the port changed to 81 (the
    agent's purge step run on the plan). Yields its backend."""
    assert MOVED != MANIFEST
    dataplane.program(MANIFEST)
    dataplane.clear_conntrack()
    backend = Ether(from_pod(dataplane, tcp(CLIENT, 7400, VIP, 80, "S")).data)[IP].dst
    assert backend in WEB_BACKENDS
    to_pod(dataplane, tcp(backend, 8080, CLIENT, 7400, "SA"))
    from_pod(dataplane, tcp(CLIENT, 7400, VIP, 80, "A"))
    result = dataplane.program(MOVED)
    stale = conntrack_purge(result.plan)
    purge(dataplane.progs.bpf, stale.svc_ids, stale.udp_backends, stale.tcp_backends)
    yield backend
    dataplane.clear_conntrack()
    dataplane.program(MANIFEST)


def test_the_open_connection_keeps_its_translation(dataplane, open_connection):
    backend = open_connection
    snap = read_snapshot(dataplane.writer)[SERVICES]
    assert is_draining(snap[OLD]) and snap[OLD].count == 0 and not is_draining(snap[NEW])
    data = tcp(CLIENT, 7400, VIP, 80, "PA", b"GET / HTTP/1.1\r\n\r\n")
    out = Ether(from_pod(dataplane, data).data)
    assert (out[IP].dst, out[TCP].dport, bytes(out[TCP].payload)) == (backend, 8080,
                                                                      bytes(data[TCP].payload))
    reply = Ether(to_pod(dataplane, tcp(backend, 8080, CLIENT, 7400, "PA", b"HTTP/1.1 200")).data)
    assert (reply[IP].src, reply[TCP].sport) == (VIP, 80)
    fin = Ether(from_pod(dataplane, tcp(CLIENT, 7400, VIP, 80, "FA")).data)
    assert fin[IP].dst == backend  # it closes through the backend it talked to


def test_a_new_connection_to_the_old_port_is_not_served(dataplane, open_connection):
    syn = tcp(CLIENT, 7401, VIP, 80, "S")
    before = dataplane.stats()
    res = from_pod(dataplane, syn)
    assert res.data == bytes(syn)  # untouched, no RST: as a port that never was a frontend
    assert stats_delta(before, dataplane.stats()) == {"from_pod/pass": 1}
    assert Ether(from_pod(dataplane, tcp(CLIENT, 7402, VIP, 81, "S")).data)[IP].dst in WEB_BACKENDS


def test_the_record_goes_once_the_flows_ended(dataplane, open_connection):
    dataplane.clear_conntrack()  # what the conntrack GC does once the connection closed
    dataplane.program(MOVED)
    assert OLD not in read_snapshot(dataplane.writer)[SERVICES]
