"""A hitless takeover from kube-proxy, with real traffic: the lab's node namespace gets
kube-proxy's rules for the lab's Services and 20 more (the shapes ebpflb/lab/kubeproxy_rules.py
generates, loaded with iptables-legacy, iptables-nft or nft, beside rules of other components),
kube-proxy's netfilter serves a client pod (8 keep-alive connections asked every 0.1 s, a 30 s
download checked byte for byte, 50 new connections a second), and ebpflb takes the node over
in the middle of it: the agent with --takeover, or `ebpflb takeover` once; then hands it back
(`ebpflb cleanup --handback`) once kube-proxy's rules are back. Nothing may fail, reset or move;
after the takeover kube-proxy's chains and tables are gone and every other rule is as it was,
after the hand-back kube-proxy's rules serve again and ebpflb is gone.

Nothing here is faked: kube-proxy itself is not run (its rules are what it would write), which is
all of kube-proxy the data path ever meets."""
import json
import sys
import re
import subprocess
import time
from pathlib import Path
from typing import List, Optional

import pytest

from ebpflb.lab import kubeproxy_rules as kp
from ebpflb.lab.agent_runner import node_pin_dir
from ebpflb.lab.topology import node_address, node_netns
from ebpflb.status import read_status
from ebpflb.takeover.flows import HOST_CLIENT

from .agent_harness import WEB_VIP, RunningAgent, ebpflb, force_cleanup
from .load import Download, KeptConnections, NewConnections

WEB_PODS = [("10.244.0.11", 8080), ("10.244.0.12", 8080), ("10.244.0.13", 8080)]
SECONDS = 34  # of load; the download takes 30 s of it: both hand-overs fall inside it

# Other components' rules: what must be exactly as it was afterwards.
OTHERS_IPTABLES = """\
*mangle
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*filter
:CNI-FORWARD - [0:0]
:KUBE-FIREWALL - [0:0]
-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD
-A CNI-FORWARD -s 10.244.0.0/16 -j ACCEPT
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -j DROP
-A INPUT -j KUBE-FIREWALL
COMMIT
*nat
:CNI-HOSTPORT-DNAT - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A CNI-HOSTPORT-DNAT -p tcp -m tcp --dport 18080 -j DNAT --to-destination 10.244.0.14:8080
-A POSTROUTING -s 10.250.0.0/16 -j MASQUERADE
COMMIT
"""
OTHERS_NFT = """\
table inet cni {
  chain forward {
    type filter hook forward priority filter; policy accept;
    ip saddr 10.244.0.0/16 counter accept
  }
}
"""


def services() -> List[kp.Svc]:
    web = kp.Svc("demo", "web", "http", WEB_VIP, 80, tuple(WEB_PODS))
    return [web] + kp.make_services(20, [ip for ip, _ in WEB_PODS], 8080, per_service=3)


def sh(ns: str, argv: List[str], stdin: Optional[str] = None) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, text=True,
                          capture_output=True, check=True, timeout=120).stdout


def ruleset(ns: str, shape: str) -> str:
    """The node's rules as the shape's tool prints them, counters and comment lines aside, and
    without the table a takeover adds to keep netfilter's NAT alive (nat_keeper_present)."""
    if shape == "nftables":
        text = re.sub(r"counter packets \d+ bytes \d+", "counter", sh(ns, ["nft", "list", "ruleset"]))
        return re.sub(r"(?ms)^table ip ebpflb-takeover \{.*?^\}\n", "", text)
    text = sh(ns, [f"iptables-{shape.split('-')[1]}-save"])
    return "\n".join(re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines()
                     if not line.startswith("#"))


def load_others(ns: str, shape: str) -> None:
    """Other components' rules first, then kube-proxy's, as a node would have them."""
    if shape == "nftables":
        sh(ns, ["nft", "-f", "-"], OTHERS_NFT)
    else:
        sh(ns, [f"iptables-{shape.split('-')[1]}-restore"], OTHERS_IPTABLES)


def add_kube_proxy(ns: str, shape: str) -> None:
    svcs = services()
    if shape == "nftables":
        sh(ns, ["nft", "-f", "-"], kp.nft_ruleset(svcs))
    else:
        sh(ns, [f"iptables-{shape.split('-')[1]}-restore", "--noflush"], kp.iptables_restore(svcs))


def nat_keeper_present(ns: str) -> bool:
    return "table ip ebpflb-takeover" in sh(ns, ["nft", "list", "tables"])


def kube_proxy_left(ns: str, shape: str) -> List[str]:
    text = ruleset(ns, shape)
    if shape == "nftables":
        return [line for line in text.splitlines() if "kube-proxy" in line]
    return [line for line in text.splitlines()
            if re.search(r"KUBE-(SERVICES|SVC-|SEP-|NODEPORTS|POSTROUTING|MARK-MASQ)", line)]


def manifest_file(tmp_path: Path) -> Path:
    path = tmp_path / "services.json"
    path.write_text(kp.manifests(services(), dual_stack=False))
    return path


def host_route_to_vip(ns: str) -> None:
    """The node's own sockets reaching the web VIP, as on a node kube-proxy serves: the lab's
    single node has no address of its own (it gets node 0's underlay address, on lo) and
    blackholes the Service range (connect() to a VIP fails there before netfilter's OUTPUT hook
    is reached), so the VIP gets a route, from that address."""
    node = node_address(0)
    dev = sh(ns, ["ip", "-o", "route", "get", WEB_PODS[0][0]]).split(" dev ")[1].split()[0]
    sh(ns, ["ip", "addr", "add", f"{node}/32", "dev", "lo"])
    sh(ns, ["ip", "route", "replace", f"{WEB_VIP}/32", "dev", dev, "src", node])


class Traffic:
    """The live traffic of the test, started before the takeover and checked after it; with
    `node`, also two keep-alive connections of a host-network client (the node itself), which
    netfilter goes on translating after the takeover."""

    def __init__(self, client: str, node: Optional[str] = None):
        self.host = (KeptConnections(node, WEB_VIP, 80, count=2, interval=0.1, seconds=SECONDS)
                     if node else None)
        self.kept = KeptConnections(client, WEB_VIP, 80, count=8, interval=0.1, seconds=SECONDS)
        self.new = NewConnections(client, WEB_VIP, 80, rate=50, seconds=SECONDS)
        self.download = Download(client, WEB_VIP, 80, size=24 << 20, seconds=30)
        for t in self.threads():
            t.start()

    def threads(self) -> list:
        return [t for t in (self.kept, self.new, self.download, self.host) if t is not None]

    def check(self) -> str:
        for t in self.threads():
            t.join(timeout=SECONDS + 30)
            assert not t.is_alive()
        self.kept.close()
        if self.host is not None:
            self.host.close()
            assert self.host.result.failures == [], self.host.result.failures[:5]
        assert self.kept.result.failures == [], self.kept.result.failures[:5]
        assert self.new.result.failures == [], self.new.result.failures[:5]
        assert self.download.error is None, self.download.error
        assert len(self.new.result.outcomes) >= SECONDS * 50 * 0.8
        assert len(self.kept.result.outcomes) >= 8 * SECONDS * 5
        return (f"{len(self.new.result.outcomes)} new connections, "
                f"{len(self.kept.result.outcomes)} requests on 8 kept connections, "
                f"{self.download.received} bytes downloaded: 0 failed")


def served_by_netfilter_first(client: str) -> None:
    """kube-proxy's rules serve before ebpflb is there (else the test proves nothing)."""
    out = sh(client, ["curl", "-s", "--max-time", "3", f"http://{WEB_VIP}/"])
    assert out.strip() in ("web-1", "web-2", "web-3")


@pytest.mark.parametrize("shape", ["iptables-legacy", "iptables-nft", "nftables"])
def test_from_kube_proxy_and_back_without_moving_a_connection(lab, tmp_path, shape):
    """kube-proxy -> ebpflb (the agent's --takeover) -> kube-proxy (its rules back, the agent
    stopped, `ebpflb cleanup --handback`), all under the same traffic."""
    ns, client = node_netns(lab.name, 0), f"{lab.name}-client"
    load_others(ns, shape)
    before = ruleset(ns, shape)
    add_kube_proxy(ns, shape)
    with_kube_proxy = ruleset(ns, shape)
    served_by_netfilter_first(client)
    host_route_to_vip(ns)
    agent = None
    traffic = Traffic(client, node=ns)
    try:
        time.sleep(3)  # the flows are netfilter's
        agent = RunningAgent(lab.name, tmp_path, [], on_exit="keep",
                             text=manifest_file(tmp_path).read_text(),
                             extra_args=["--takeover", "auto", "--socket-lb", "off"])
        report = (read_status(agent.pin_dir) or {}).get("takeover")
        assert report is not None, agent.log()
        print(f"\n{shape}: takeover imported {report['imported']}, handed over "
              f"{report['handed_over']}, removed {report['removed']}")
        assert report["failed"] == [], report["failed"]
        # The 8 kept connections and the download at least; none kept with netfilter.
        assert report["handed_over"] >= 9 and report["kept"] == {}, report
        # The host-network client's flows stay netfilter's, alive without kube-proxy's rules.
        assert report["left"].get(HOST_CLIENT, 0) >= 2 and report["nat_keeper"] == ["IPv4"]
        assert nat_keeper_present(ns)
        assert kube_proxy_left(ns, shape) == []
        assert ruleset(ns, shape) == before
        time.sleep(2)  # the flows are ebpflb's

        # Rolling back: kube-proxy writes its rules again, the agent goes (its data plane
        # stays), and the flows go back to netfilter before the data plane is removed.
        add_kube_proxy(ns, shape)
        assert agent.stop() == 0
        assert traffic.download.is_alive(), "the download ended before the hand-back"
        back = ebpflb("cleanup", "--handback", "--yes", "--netns", ns, "--pin-dir",
                      agent.pin_dir, "-o", "json")
        back_report = json.loads(back.stdout)
        print(f"{shape}: hand-back {back_report['handed_back']} flows, cannot "
              f"{back_report['cannot']}; {traffic.check()}")
        assert back_report["failed"] == [] and back_report["cannot"] == {}, back_report
        assert back_report["handed_back"] >= 9, back_report
        assert not Path(agent.pin_dir).exists() and not nat_keeper_present(ns)
        assert ruleset(ns, shape) == with_kube_proxy
        served_by_netfilter_first(client)  # kube-proxy's rules serve again
    finally:
        if agent is not None:
            agent.stop()
        force_cleanup(lab.name)


def test_takeover_once_from_the_command_line_and_its_dry_run(lab, tmp_path):
    """`ebpflb takeover --dry-run` reads and changes nothing (rules, pins); `ebpflb takeover`
    then does it for real and leaves the data plane serving after it exits."""
    ns, client = node_netns(lab.name, 0), f"{lab.name}-client"
    shape = "iptables-legacy"
    load_others(ns, shape)
    before = ruleset(ns, shape)
    add_kube_proxy(ns, shape)
    loaded = ruleset(ns, shape)
    manifests = manifest_file(tmp_path)
    pin_dir = node_pin_dir(lab.name, 0)
    kept = KeptConnections(client, WEB_VIP, 80, count=4, interval=0.1, seconds=15)
    kept.start()
    try:
        dry = ebpflb("takeover", "--dry-run", "--netns", ns, "--manifests", str(manifests),
                     "--pin-dir", pin_dir, "-o", "json")
        report = json.loads(dry.stdout)
        assert report["dry_run"] and report["imported"] >= 4, report
        assert {f["state"] for f in report["flows"]} == {"hand over"}
        assert any("nat" in r for r in report["removed"])
        assert ruleset(ns, shape) == loaded, "the dry run changed the rules"
        assert not Path(pin_dir).exists(), "the dry run created pins"

        real = subprocess.run(
            [*ebpflb_argv(), "takeover", "--netns", ns, "--manifests", str(manifests),
             "--pin-dir", pin_dir, "--socket-lb", "off", "-o", "json"],
            capture_output=True, text=True, timeout=120)
        assert real.returncode == 0, real.stderr
        report = json.loads(real.stdout)
        assert report["handed_over"] >= 4 and report["failed"] == [], report
        assert ruleset(ns, shape) == before
        served = sh(client, ["curl", "-s", "--max-time", "3", f"http://{WEB_VIP}/"]).strip()
        assert served in ("web-1", "web-2", "web-3"), "the data plane stopped serving"

        # A dry run beside a data plane (kube-proxy's rules back): neither changes.
        add_kube_proxy(ns, shape)
        maps = ebpflb("service", "list", "--all", "-o", "json", "--pin-dir", pin_dir).stdout
        again = json.loads(ebpflb("takeover", "--dry-run", "--netns", ns, "--manifests",
                                  str(manifests), "--pin-dir", pin_dir, "-o", "json").stdout)
        assert again["dry_run"] and again["removed"], again
        assert ruleset(ns, shape) == loaded, "the dry run changed the rules"
        assert ebpflb("service", "list", "--all", "-o", "json", "--pin-dir",
                      pin_dir).stdout == maps, "the dry run changed the maps"
        kept.join(timeout=30)
        kept.close()
        assert kept.result.failures == [], kept.result.failures[:5]
    finally:
        force_cleanup(lab.name)


def ebpflb_argv() -> List[str]:
    import sys

    return [sys.executable, "-m", "ebpflb.cli"]


def test_a_kube_proxy_still_running_is_seen_by_its_health_port(netns):
    """kube-proxy's health server on :10256 in the node's namespace, another process's: seen;
    a socket of our own on that port (the agent serves kube-proxy's /healthz itself): not."""
    import socket as socketlib

    from ebpflb.lab import nsops
    from ebpflb.takeover.kube_proxy_process import running

    with nsops.in_netns(netns):
        assert running() is None
        own = socketlib.socket()
        own.bind(("0.0.0.0", 10256))
        own.listen()
        try:
            assert running() is None
        finally:
            own.close()
    other = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c",
                              "import socket,time;s=socket.socket();"
                              "s.bind(('0.0.0.0',10256));s.listen();print('up',flush=True);"
                              "time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "up"
        with nsops.in_netns(netns):
            assert "health port 10256" in (running() or "")
    finally:
        other.kill()
        other.wait()


def test_clients_are_placed_by_the_device_their_route_leaves_by(netns):
    """A pod behind a --device, a client outside behind a --node-device, the node itself, and a
    client behind a device no program is attached to (an overlay): only the first two flows can
    be handed over. Devices are port-less bridges (this kernel has no dummy driver)."""
    from ebpflb.dataplane.takeover_maps import client_sides
    from ebpflb.lab import nsops
    from ebpflb.takeover.flows import SIDE_LOCAL, SIDE_NODE, SIDE_OTHER, SIDE_POD

    for dev, route in (("eth0", "203.0.113.0/24"), ("lxcweb", "10.244.0.11/32"),
                       ("flannel1", "10.244.7.0/24")):
        sh(netns, ["ip", "link", "add", dev, "type", "bridge"])
        sh(netns, ["ip", "link", "set", dev, "up"])
        sh(netns, ["ip", "route", "add", route, "dev", dev])
    sh(netns, ["ip", "addr", "add", "192.168.200.10/32", "dev", "eth0"])
    with nsops.netns_ipr(netns) as ipr:
        side_of = client_sides(ipr, ["eth0"], ["lxc*"])
        assert [side_of(a) for a in ("10.244.0.11", "203.0.113.9", "192.168.200.10",
                                     "10.244.7.5")] == [SIDE_POD, SIDE_NODE, SIDE_LOCAL,
                                                        SIDE_OTHER]
