"""Maglev with real connections: removing one of four backends breaks none of 200 established
TCP connections, and new connections avoid the removed backend."""
import http.client
import socket

from ebpflb.lab import lab as lablib
from ebpflb.lab import nsops
from ebpflb.lab.topology import PodSpec

from .agent_harness import WEB_VIP, RunningAgent, force_cleanup, wait_until

MAGLEV = '{"lb.ebpflb.io/algorithm": maglev, "lb.ebpflb.io/maglev-table-size": "1021"}'
FOUR = [("web-1", "10.244.0.11", True), ("web-2", "10.244.0.12", True),
        ("web-3", "10.244.0.13", True), ("web-4", "10.244.0.14", True)]


def get(conn: http.client.HTTPConnection) -> str:
    conn.request("GET", "/")
    return conn.getresponse().read().decode().strip()


def test_removing_a_backend_breaks_no_connection(lab, tmp_path):
    agent = RunningAgent(lab.name, tmp_path, FOUR, annotations=MAGLEV)
    conns = []
    try:
        assert agent.services()[0]["algorithm"] == "maglev"
        with nsops.in_netns(f"{lab.name}-client"):
            for _ in range(200):
                c = http.client.HTTPConnection(WEB_VIP, 80, timeout=5)
                c.connect()
                conns.append(c)
        first = [get(c) for c in conns]
        assert set(first) == {"web-1", "web-2", "web-3", "web-4"}

        agent.write_manifest([e for e in FOUR if e[0] != "web-2"], annotations=MAGLEV)
        wait_until(lambda: "10.244.0.12" not in agent.backends(f"{WEB_VIP}:80/TCP"), 10,
                   "web-2 to leave the Maglev table")
        # Every connection, also those to web-2 (conntrack keeps them), still answers, and
        # from the same pod.
        again = [get(c) for c in conns]
        assert again == first
        new = [lablib.run_in_pod(lab.name, "client", ["curl", "-sS", "--max-time", "3",
                                                       f"http://{WEB_VIP}/"]).stdout.strip()
               for _ in range(40)]
        assert "web-2" not in new and set(new) <= {"web-1", "web-3", "web-4"}
    finally:
        for c in conns:
            c.close()
        agent.stop()
        force_cleanup(lab.name)
