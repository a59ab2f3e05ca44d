"""IPv6 Services on real devices: a client pod and a server pod (network namespaces the module
creates and removes), routed Calico-style by a node namespace whose pod-facing veths carry the
session's programs, attached by the agent's own Attacher; real TCP connections and UDP datagrams
from the client to an IPv6 ClusterIP, with the kernel's checksum offloads and neighbour discovery
on the way. What the client and the server see is the proof: the server sees the client's own
address (no SNAT on the pod path), the client's answers come from the frontend (reverse NAT at
the client's device), and the flow is in ct6."""
import subprocess
import sys
import textwrap

import pytest
from pyroute2 import IPRoute

from ebpflb.dataplane.attach import Attacher, PodAddresses, Program, detach
from ebpflb.dataplane.bcc_maps import BccMapWriter, read_conntrack
from ebpflb.lab.nsops import create_netns, in_netns, remove_netns, write_sysctls

from ..conftest import unique

pytestmark = pytest.mark.bpf
# Packets reach the programs over real devices: only the drop check of conftest's
# one_verdict_per_run applies.
REAL_TRAFFIC = True

CLIENT, SERVER = "fd00:10:244:60::2", "fd00:10:244:60::11"
VIP = "fd00:96:60::50"
GATEWAY = "fe80::1"  # the node side of every pod veth, the pods' default route

MANIFEST = f"""
apiVersion: v1
kind: Service
metadata: {{name: web6, namespace: traffic}}
spec:
  clusterIP: "{VIP}"
  clusterIPs: ["{VIP}"]
  ipFamilies: [IPv6]
  ports: [{{name: http, port: 80, protocol: TCP}}, {{name: dns, port: 53, protocol: UDP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web6-a, namespace: traffic, labels: {{kubernetes.io/service-name: web6}}}}
addressType: IPv6
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]
endpoints:
- {{addresses: ["{SERVER}"], conditions: {{ready: true}}}}
"""

# The server pod: a TCP server that answers with the peer it saw, a UDP one that echoes the same;
# both stop after a bounded time.
SERVER_CODE = textwrap.dedent("""
    import socket, threading, time
    t = socket.socket(socket.AF_INET6); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("::", 8080)); t.listen(8); t.settimeout(60)
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.bind(("::", 5353)); u.settimeout(60)
    def udp():
        try:
            while True:
                data, peer = u.recvfrom(65535)
                # A large datagram is answered with as large a one (fragments both ways).
                u.sendto((b"udp from " + peer[0].encode() + b" ").ljust(len(data), b"x")
                         if len(data) > 100 else b"udp from " + peer[0].encode(), peer)
        except OSError:
            pass
    threading.Thread(target=udp, daemon=True).start()
    print("ready", flush=True)
    try:
        while True:
            c, peer = t.accept()
            c.recv(100)
            c.sendall(b"tcp from " + peer[0].encode())
            c.close()
    except OSError:
        pass
""")

CLIENT_CODE = textwrap.dedent(f"""
    import socket
    t = socket.create_connection(("{VIP}", 80), timeout=10)
    t.sendall(b"hello")
    print(t.recv(100).decode(), t.getpeername()[0])
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.settimeout(10)
    u.sendto(b"ping", ("{VIP}", 53))
    data, peer = u.recvfrom(100)
    print(data.decode(), peer[0], peer[1])
    u.sendto(b"y" * 4000, ("{VIP}", 53))  # above the veths' MTU: sent in fragments
    data, peer = u.recvfrom(65535)
    print(data.split(b" ")[0].decode(), data.split(b" ")[2].decode(), len(data), peer[0], peer[1])
""")


def ip_batch(ns: str, commands: str) -> None:
    subprocess.run(["ip", "-n", ns, "-batch", "-"], check=True, text=True, capture_output=True,
                   input=commands)


@pytest.fixture()
def world(dataplane):
    node, client, server = (unique(f"ebpflb-ns-v6{x}-") for x in ("n", "c", "s"))
    servers = []
    for ns in (node, client, server):
        create_netns(ns)
    try:
        quiet = {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"}
        write_sysctls(node, {**quiet, "net.ipv6.conf.all.forwarding": "1"})
        for ns in (client, server):
            write_sysctls(ns, quiet)
        for name, ns, addr in (("lxc-c", client, CLIENT), ("lxc-s", server, SERVER)):
            ip_batch(node, f"link add {name} type veth peer name eth0 netns {ns}\n"
                           f"link set {name} up\naddr add {GATEWAY}/64 dev {name} nodad\n"
                           f"route add {addr}/128 dev {name}\n")
            ip_batch(ns, f"link set lo up\nlink set eth0 up\naddr add {addr}/128 dev eth0 nodad\n"
                         f"route add default via {GATEWAY} dev eth0\n")
        dataplane.program(MANIFEST)
        progs = dataplane.progs
        with in_netns(node):
            ipr = IPRoute()
            attacher = Attacher(ipr, ["lxc-*"],
                                Program(progs.from_pod.fd, progs.from_pod.name.decode()),
                                Program(progs.to_pod.fd, progs.to_pod.name.decode()),
                                PodAddresses(ipr, BccMapWriter(progs.bpf)))
            attacher.rescan()
        proc = subprocess.Popen(["ip", "netns", "exec", server, sys.executable, "-c", SERVER_CODE],
                                stdout=subprocess.PIPE, text=True)
        servers.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        yield dataplane, client, node
        with in_netns(node):
            for ifindex in list(attacher.attached):
                attacher.pod_addrs.forget(ifindex)
                detach(ipr, ifindex)
            ipr.close()
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        for table in (b"ct6", b"ct6_syn", b"lb6_pod_addrs"):
            dataplane.progs.bpf[table].clear()
        for ns in (node, client, server):
            remove_netns(ns)


def test_a_pod_reaches_an_ipv6_clusterip_over_tcp_and_udp(world):
    dp, client, _node = world
    out = subprocess.run(["ip", "netns", "exec", client, sys.executable, "-c", CLIENT_CODE],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    tcp_line, udp_line, big_line = out.stdout.splitlines()
    # The server saw the client's own address; the client talked to the frontend throughout.
    assert tcp_line == f"tcp from {CLIENT} {VIP}"
    # The UDP answer came back from the frontend's address and port (reverse NAT).
    assert udp_line == f"udp from {CLIENT} {VIP} 53"
    # A datagram in fragments reached the backend whole (every fragment translated), and its
    # fragmented answer came back whole, from the frontend.
    assert big_line == f"udp {CLIENT} 4000 {VIP} 53"
    flows = {(e.saddr, e.daddr, e.dport, e.nat_addr, e.nat_port)
             for e in read_conntrack(dp.progs.bpf) if e.direction == "forward"}
    assert (CLIENT, VIP, 80, SERVER, 8080) in flows
    assert (CLIENT, VIP, 53, SERVER, 5353) in flows
