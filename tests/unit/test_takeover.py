"""A takeover from kube-proxy, pure: which netfilter flows are imported and how
(ebpflb.takeover.flows), and the order of the steps (ebpflb.takeover.run) against a recording
stand-in for the kernel. The real thing, with netfilter and traffic: tests/lab/test_takeover.py;
the programs' side: tests/bpf/test_takeover_flows.py."""
import dataclasses
import socket
from dataclasses import dataclass

import pytest

from ebpflb.manifests import parse_documents
from ebpflb.maps import CT_F_CLOSING, CT_F_ESTABLISHED, CT_F_EXTERNAL, empty_snapshot
from ebpflb.model import desired_state
from ebpflb.plan import apply_to, compute_plan
from ebpflb.dataplane.config import DataplaneConfig
from ebpflb.takeover.flows import (HOST_CLIENT, IPS_ASSURED, IPS_DST_NAT, IPS_SEEN_REPLY,
                                   IPS_SRC_NAT, NOT_SERVED, NOT_TRANSLATED, OVER, SIDE_LOCAL,
                                   SIDE_NODE, SIDE_OTHER, SIDE_POD, SNATED, UNATTACHED, NfFlow,
                                   new_since, plan_imports)
from ebpflb.takeover.run import Takeover, TakeoverError

pytestmark = pytest.mark.unit

TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP
NODE_IP = "192.168.50.10"
MANIFEST = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  type: NodePort
  clusterIP: 10.96.0.50
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: [10.244.1.5], conditions: {ready: true}}
- {addresses: [10.244.1.6], conditions: {ready: true}}
"""
DNAT = IPS_SEEN_REPLY | IPS_ASSURED | IPS_DST_NAT


@pytest.fixture(scope="module")
def snapshot():
    m = parse_documents(MANIFEST, "<test>")
    desired = desired_state(m.services, m.slices, node_addresses=(NODE_IP,))
    limits = DataplaneConfig().map_limits
    return apply_to(empty_snapshot(), compute_plan(desired, empty_snapshot(), limits))


def side(addr: str) -> str:
    if addr == NODE_IP:
        return SIDE_LOCAL
    return SIDE_POD if addr.startswith("10.244.") else SIDE_NODE


def flow(client, cport, dst, dport, backend, bport, proto=TCP, status=DNAT, state=3,
         reply_dst=None):
    rdst, rdport = reply_dst or (client, cport)
    return NfFlow(4, proto, (client, cport, dst, dport), (backend, bport, rdst, rdport), status,
                  state if proto == TCP else None)


def test_a_pods_flow_to_a_cluster_ip_is_handed_over_with_netfilters_backend(snapshot):
    plan = plan_imports([flow("10.244.0.2", 40000, "10.96.0.50", 80, "10.244.1.6", 8080)],
                        snapshot, side)
    (imp,) = plan.imports
    assert imp.kept is None and imp.backend == ("10.244.1.6", 8080)
    assert imp.flags == CT_F_ESTABLISHED
    be = snapshot["lb4_backends"][imp.backend_id]
    assert (be.addr, be.port, be.svc_id) == ("10.244.1.6", 8080, imp.svc_id)
    assert plan.handed_over == (imp,) and not plan.kept


def test_udp_and_closing_tcp_and_a_removed_backend(snapshot):
    plan = plan_imports([
        flow("10.244.0.2", 40001, "10.96.0.50", 53, "10.244.1.5", 5353, proto=UDP),
        flow("10.244.0.2", 40002, "10.96.0.50", 80, "10.244.1.5", 8080, state=5),  # CLOSE_WAIT
        flow("10.244.0.2", 40003, "10.96.0.50", 80, "10.244.1.99", 8080),  # endpoint gone
    ], snapshot, side)
    udp, closing, gone = plan.imports
    assert udp.flags == 0 and udp.backend_id
    assert closing.flags == CT_F_ESTABLISHED | CT_F_CLOSING
    assert gone.backend_id == 0 and gone.backend == ("10.244.1.99", 8080) and gone.kept is None


def test_what_is_kept_with_netfilter_and_what_is_left_alone(snapshot):
    masq = flow("203.0.113.9", 50000, NODE_IP, 30080, "10.244.1.5", 8080,
                status=DNAT | IPS_SRC_NAT, reply_dst=(NODE_IP, 61000))
    hairpin = flow("10.244.1.5", 40010, "10.96.0.50", 80, "10.244.1.5", 8080,
                   status=DNAT | IPS_SRC_NAT, reply_dst=("10.244.1.1", 40010))
    plan = plan_imports([
        masq, hairpin,
        flow(NODE_IP, 40020, "10.96.0.50", 80, "10.244.1.5", 8080),  # a host-network client
        flow("10.244.0.2", 40030, "10.96.0.50", 80, "10.244.1.5", 8080, state=7),  # TIME_WAIT
        flow("10.244.0.2", 40040, "10.96.0.50", 80, "10.96.0.50", 80, status=IPS_SEEN_REPLY),
        flow("10.244.0.2", 40050, "10.96.0.99", 80, "10.244.9.9", 80),  # no frontend there
        flow("10.244.0.2", 40060, "10.96.0.50", 8443, "10.244.1.5", 8443),  # no such port
    ], snapshot, side)
    assert [i.flow for i in plan.kept] == [masq, hairpin]
    assert all(i.kept == SNATED for i in plan.kept)
    assert plan.kept[0].flags & CT_F_EXTERNAL and not plan.kept[1].flags & CT_F_EXTERNAL
    assert plan.left_by_reason() == {HOST_CLIENT: 1, OVER: 1, NOT_TRANSLATED: 1, NOT_SERVED: 2}
    assert plan.others == 0
    # Behind a device no program is attached to: netfilter keeps it.
    unattached = plan_imports([flow("10.250.0.7", 1, "10.96.0.50", 80, "10.244.1.5", 8080)],
                              snapshot, lambda addr: SIDE_OTHER)
    assert unattached.left_by_reason() == {UNATTACHED: 1} and not unattached.imports
    # Not translated, to no frontend: not ours at all.
    plain = NfFlow(4, TCP, ("10.244.0.2", 1, "10.244.1.5", 8080), ("10.244.1.5", 8080,
                                                                  "10.244.0.2", 1), IPS_SEEN_REPLY)
    assert plan_imports([plain], snapshot, side).others == 1


def test_a_second_read_imports_only_the_flows_born_in_between(snapshot):
    old = flow("10.244.0.2", 40000, "10.96.0.50", 80, "10.244.1.5", 8080)
    born = flow("10.244.0.3", 40000, "10.96.0.50", 80, "10.244.1.6", 8080)
    later = new_since(plan_imports([old, born], snapshot, side), [old])
    assert [i.flow for i in later.imports] == [born]


@dataclass(frozen=True)
class Removal:
    backend: str
    table: str
    serving: bool = True

    def describe(self) -> str:
        return f"{self.backend} {self.table}"


class Kernel:
    """Both sides of the kernel, recording each call in order."""

    def __init__(self, removals, flow_reads, fail_remove=(), fail_delete=()):
        self._removals, self._reads = list(removals), list(flow_reads)
        self.fail_remove, self.fail_delete = set(fail_remove), set(fail_delete)
        self.log = []
        self.grace = self.new = False

    # Netfilter
    running = None

    def kube_proxy_running(self):
        return self.running

    def removals(self):
        self.log.append("read rules")
        return self._removals

    def flows(self):
        self.log.append("read conntrack")
        read = self._reads.pop(0) if len(self._reads) > 1 else self._reads[0]
        if isinstance(read, Exception):
            raise read
        return read

    def delete(self, f):
        self.log.append(f"delete {f.orig[1]}")
        if f.orig[1] in self.fail_delete:
            raise OSError(1, "Operation not permitted")
        return True

    def keep_nat(self, families):
        self.log.append(f"keep nat {families}")

    def remove(self, r):
        self.log.append(f"remove {r.describe()}")
        if r.table in self.fail_remove:
            raise RuntimeError("iptables-restore: line 3 failed")

    # the data path's writes (ebpflb.dataplane.takeover_maps)
    def set_netfilter_grace(self, bpf, on):
        self.grace = on
        self.log.append(f"grace {'on' if on else 'off'}")

    def set_netfilter_new(self, bpf, on):
        self.new = on
        self.log.append(f"new {'on' if on else 'off'}")

    def write_imports(self, bpf, imports):
        self.log.append(f"import {[i.flow.orig[1] for i in imports]}")
        return len(imports)

    def hand_over(self, bpf, imp, delete):
        self.log.append(f"hold {imp.flow.orig[1]}")
        delete()
        self.log.append(f"data path {imp.flow.orig[1]}")
        return True


def takeover(kernel, source="auto"):
    return Takeover(source, netfilter=kernel, writes=kernel)


def test_the_steps_run_in_the_order_that_keeps_every_flow(snapshot):
    old = flow("10.244.0.2", 1, "10.96.0.50", 80, "10.244.1.5", 8080)
    masq = flow("10.244.0.2", 2, "10.96.0.50", 80, "10.244.1.5", 8080, status=DNAT | IPS_SRC_NAT,
                reply_dst=("10.244.0.1", 9))
    born = flow("10.244.0.3", 3, "10.96.0.50", 80, "10.244.1.6", 8080)
    k = Kernel([Removal("iptables-legacy", "nat"), Removal("iptables-legacy", "filter")],
               [[old, masq], [old, masq, born]])
    t = takeover(k)
    assert t.before_attach(None, snapshot, side)
    k.log.append("ATTACH")
    report = t.after_attach(None, snapshot, side)
    assert k.log == ["read rules", "read conntrack", "new on", "import [1, 2]", "ATTACH",
                     "read conntrack", "import [3]", "grace on", "new off", "read conntrack",
                     "import []", "grace off",
                     "hold 1", "delete 1", "data path 1", "hold 3", "delete 3", "data path 3",
                     "keep nat [4]", "read rules", "remove iptables-legacy nat",
                     "remove iptables-legacy filter"]
    assert (report.imported, report.handed_over, report.kept) == (3, 2, {SNATED: 1})
    assert report.removed == ["iptables-legacy nat", "iptables-legacy filter"] and not report.failed
    assert {f["state"] for f in report.flows} == {"handed over", f"kept: {SNATED}"}
    assert report.nat_keeper == ["IPv4"]


def test_failures_after_attaching_are_reported_and_the_rest_goes_on(snapshot):
    a = flow("10.244.0.2", 1, "10.96.0.50", 80, "10.244.1.5", 8080)
    b = flow("10.244.0.2", 2, "10.96.0.50", 80, "10.244.1.5", 8080)
    k = Kernel([Removal("nftables", "kube-proxy"), Removal("iptables-nft", "nat")], [[a, b], [a, b]],
               fail_remove={"kube-proxy"}, fail_delete={1})
    t = takeover(k)
    t.before_attach(None, snapshot, side)
    report = t.after_attach(None, snapshot, side)
    assert report.handed_over == 1 and report.removed == ["iptables-nft nat"]
    assert any("kube-proxy" in f for f in report.failed)
    assert any("1 flows stayed with netfilter" in f for f in report.failed)
    assert not k.grace and not k.new


def test_a_failed_read_after_attaching_leaves_kube_proxys_rules_and_netfilters_flows(snapshot):
    a = flow("10.244.0.2", 1, "10.96.0.50", 80, "10.244.1.5", 8080)
    k = Kernel([Removal("nftables", "kube-proxy")], [[a], OSError(105, "No buffer space"),
                                                      OSError(105, "No buffer space")])
    t = takeover(k)
    t.before_attach(None, snapshot, side)
    report = t.after_attach(None, snapshot, side)
    assert k.new and not any(line.startswith(("hold", "remove")) for line in k.log), k.log
    assert report.removed == [] and any("rules left in place" in f for f in report.failed)


def test_nothing_to_take_over_and_a_source_not_found():
    k = Kernel([], [])
    assert not takeover(k).before_attach(None, None, side)
    assert k.log == ["read rules"]
    with pytest.raises(TakeoverError, match="no kube-proxy nftables rules"):
        takeover(Kernel([Removal("iptables-legacy", "nat")], []), "nftables").before_attach(
            None, None, side)
    with pytest.raises(TakeoverError, match="no kube-proxy ipvs rules"):
        takeover(Kernel([Removal("iptables-legacy", "nat")], []), "ipvs").before_attach(
            None, None, side)
    with pytest.raises(ValueError, match="not one of"):
        Takeover("userspace")


def test_a_dry_run_reads_and_changes_nothing(snapshot):
    a = flow("10.244.0.2", 1, "10.96.0.50", 80, "10.244.1.5", 8080)
    k = Kernel([Removal("iptables-nft", "nat")], [[a]])
    report = takeover(k).dry_run(snapshot, side)
    assert k.log == ["read rules", "read conntrack"]
    assert report.dry_run and report.imported == 1 and report.removed == ["iptables-nft nat"]
    assert "would import 1 flows" in report.render()


def ct(direction, saddr, sport, daddr, dport, nat, flags, protocol="TCP"):
    from ebpflb.dataplane.bcc_maps import CtEntry

    naddr, nport = nat
    return CtEntry(direction, saddr, sport, daddr, dport, protocol, naddr, nport, 1, 1, 0, 0,
                   flags)


def test_which_flows_a_hand_back_carries():
    from ebpflb.maps import CT_F_HAIRPIN, CT_F_NETFILTER, CT_F_PORT_NAT, CT_F_RESET, CT_F_SNAT
    from ebpflb.takeover.handback import HAIRPIN, OWN_PORT, SNATED, plan_handback

    est, closing = CT_F_ESTABLISHED, CT_F_ESTABLISHED | CT_F_CLOSING
    vip, be = ("10.96.0.50", 80), ("10.244.1.5", 8080)
    entries = [
        ct("forward", "10.244.0.2", 1, *vip, be, est),
        ct("reply", *be, "10.244.0.2", 1, vip, est),
        ct("forward", "10.244.0.2", 2, *vip, be, closing),  # the client's FIN only: half-closed
        ct("forward", "10.244.0.2", 3, *vip, be, closing),  # both sides closed: over
        ct("reply", *be, "10.244.0.2", 3, vip, closing),
        ct("forward", "10.244.0.2", 4, *vip, be, est | CT_F_RESET | CT_F_CLOSING),
        ct("forward", "10.244.0.2", 5, "10.96.0.50", 53, ("10.244.1.5", 5353), 0, "UDP"),
        ct("forward", "203.0.113.9", 6, "192.168.50.10", 30080, be, est | CT_F_SNAT),
        ct("forward", "10.244.0.2", 7, *vip, be, est | CT_F_PORT_NAT),
        ct("forward", "10.244.1.5", 8, *vip, be, est | CT_F_HAIRPIN),
        ct("forward", "10.244.0.2", 9, *vip, be, est | CT_F_NETFILTER),
    ]
    plan = plan_handback(entries)
    assert [(f.client[1], f.tcp_state) for f in plan.flows] == [(1, 3), (2, 5), (5, None)]
    assert plan.cannot == {SNATED: 1, OWN_PORT: 1, HAIRPIN: 1}
    assert (plan.already, plan.closed) == (1, 2)


def test_a_hand_back_needs_kube_proxys_rules_and_leaves_new_flows_to_them_first():
    from ebpflb.takeover.handback import HandBackError, hand_back

    vip, be = ("10.96.0.50", 80), ("10.244.1.5", 8080)
    entries = [ct("forward", "10.244.0.2", n, *vip, be, CT_F_ESTABLISHED) for n in (1, 2)]

    class Kernel:
        def __init__(self, removals, refuse=()):
            self._removals, self.refuse, self.log = removals, refuse, []

        def removals(self):
            return self._removals

        def swap(self, flow):
            self.log.append(f"swap {flow.client[1]}")
            if flow.client[1] in self.refuse:
                raise RuntimeError("conntrack add: File exists (errno 17)")

        def set_netfilter_new(self, bpf, on):
            self.log.append(f"new flows to netfilter: {on}")

        def hand_back(self, bpf, flow, swap):
            self.log.append(f"hold {flow.client[1]}")
            swap()
            self.log.append(f"netfilter {flow.client[1]}")
            return True

    from ebpflb.takeover.kube_rules import RuleRemoval

    canary_only = RuleRemoval("iptables-legacy", 4, "nat", ("KUBE-PROXY-CANARY",), (), "", 0)
    leftovers = RuleRemoval("iptables-legacy", 4, "nat", ("KUBE-MARK-MASQ", "KUBE-POSTROUTING"),
                            ("-A POSTROUTING -j KUBE-POSTROUTING",), "", 3)
    serving = RuleRemoval("nftables", 4, "kube-proxy", ("kube-proxy",), (), "", 40, services=2)
    for found in ([canary_only], [leftovers], [dataclasses.replace(serving, services=0)]):
        with pytest.raises(HandBackError, match="start kube-proxy first"):
            hand_back(None, Kernel(found), None, lambda b: entries)
    k = Kernel([serving], refuse={2})
    report = hand_back(None, k, k, lambda b: entries)
    assert k.log == ["new flows to netfilter: True", "hold 1", "swap 1", "netfilter 1", "hold 2",
                     "swap 2"]
    assert report.handed_back == 1 and report.failed
    assert report.found == ["nftables IPv4 kube-proxy: whole table (0 chains, 0 sets/maps, 40 rules)"]


def test_kube_proxys_rules_stay_when_netfilter_could_not_go_on_translating_its_flows(snapshot):
    host = flow(NODE_IP, 1, "10.96.0.50", 80, "10.244.1.5", 8080)  # a host-network client's

    class NoNft(Kernel):
        def keep_nat(self, families):
            raise RuntimeError("nft is not installed: the NAT keeper table cannot be added")

    k = NoNft([Removal("nftables", "kube-proxy")], [[host], [host]])
    t = takeover(k)
    t.before_attach(None, snapshot, side)
    report = t.after_attach(None, snapshot, side)
    assert report.left == {HOST_CLIENT: 1} and report.removed == []
    assert not any(line.startswith("remove") for line in k.log)
    assert any("left in place" in f for f in report.failed)


def test_ipvs_flows_are_imported_and_a_virtual_service_with_a_kept_flow_stays(snapshot):
    """kube-proxy's IPVS mode (conntrack=1): its netfilter entries carry IPVS's real server in
    the reply tuple but no IPS_DST_NAT. What the lab cannot run here (no IPVS in this kernel):
    the order, against the recording stand-in."""
    from ebpflb.takeover.ipvs import IpvsDest, IpvsRemoval, IpvsService

    ipvs = IPS_SEEN_REPLY | IPS_ASSURED
    pod = flow("10.244.0.2", 1, "10.96.0.50", 80, "10.244.1.5", 8080, status=ipvs)
    masq = flow("203.0.113.9", 2, NODE_IP, 30080, "10.244.1.6", 8080, status=ipvs | IPS_SRC_NAT,
                reply_dst=(NODE_IP, 61000))
    plan = plan_imports([pod, masq], snapshot, side)
    assert [i.kept for i in plan.imports] == [None, SNATED]

    svc = lambda addr, port: IpvsService(  # noqa: E731
        4, TCP, addr, port, 0, "rr", (IpvsDest("10.244.1.5", 8080, 1, "masq"),))
    cluster, nodeport = svc("10.96.0.50", 80), svc(NODE_IP, 30080)
    removal = IpvsRemoval(family=4, services=(cluster, nodeport), device="kube-ipvs0",
                          addresses=("10.96.0.50", NODE_IP), ipsets=("KUBE-CLUSTER-IP",))
    k = Kernel([Removal("iptables-legacy", "nat"), removal], [[pod, masq], [pod, masq]])
    removed = []
    k.remove = lambda r: removed.append(r)
    t = takeover(k, "ipvs")
    t.before_attach(None, snapshot, side)
    report = t.after_attach(None, snapshot, side)
    assert report.handed_over == 1 and report.kept == {SNATED: 1}
    assert [r.backend for r in removed] == ["iptables-legacy", "ipvs"]
    assert removed[1].services == (cluster,) and removed[1].addresses == ("10.96.0.50",)
    assert any("1 IPVS virtual services left" in f for f in report.failed)


def test_a_takeover_waits_while_kube_proxy_still_runs(snapshot):
    k = Kernel([Removal("iptables-legacy", "nat")], [[]])
    k.running = "process 4242 is kube-proxy"
    with pytest.raises(TakeoverError, match="kube-proxy still runs on this node .process 4242"):
        takeover(k).before_attach(None, snapshot, side)
    assert k.log == ["read rules"]
    assert takeover(k).dry_run(snapshot, side).found  # a dry run still reports
    k.running = None
    assert takeover(k).before_attach(None, snapshot, side)


def test_ct_list_says_which_flows_netfilter_translates_and_which_are_held():
    from ebpflb.maps import CT_F_HANDOVER, CT_F_NETFILTER
    from ebpflb.views import ct_state

    vip, be = ("10.96.0.50", 80), ("10.244.1.5", 8080)
    est = CT_F_ESTABLISHED
    assert ct_state(ct("forward", "10.244.0.2", 1, *vip, be, est)) == "established"
    assert ct_state(ct("forward", "10.244.0.2", 1, *vip, be, est | CT_F_NETFILTER)) == \
        "established (netfilter)"
    assert ct_state(ct("forward", "10.244.0.2", 1, *vip, be,
                       est | CT_F_NETFILTER | CT_F_HANDOVER)) == "established (handover)"
    assert ct_state(ct("forward", "10.244.0.2", 1, "10.96.0.50", 53, be, CT_F_NETFILTER,
                       "UDP")) == "- (netfilter)"
