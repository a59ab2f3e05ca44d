"""netfilter_rules against the real kernel: in a network namespace of its own, each test loads
kube-proxy's rule shapes (ebpflb/lab/kubeproxy_rules.py for the nat and nftables parts, its
filter and canary chains by hand) on top of other components' rules (a CNI's chains and
masquerade, the kubelet's KUBE-FIREWALL and canaries), then reads the state and removes it.
Afterwards every kube-proxy chain is gone and the save output is byte for byte what it was
before kube-proxy's rules were added (counters and comment lines aside).

Each namespace is the node namespace of a fresh lab name, removed by the test's finalizer (and
swept by the session if that ever failed); nothing runs in the host's own namespace."""
from __future__ import annotations

import re
import subprocess
from typing import List, Optional

import pytest

from ebpflb.lab.kubeproxy_rules import iptables_restore, make_services, nft_ruleset
from ebpflb.takeover.kube_rules import IPTABLES_LEGACY, IPTABLES_NFT, NFTABLES
from ebpflb.takeover.netfilter_rules import NetfilterError, read_state, remove

SERVICES = make_services(20, ["10.244.0.2", "10.244.0.3", "10.244.0.4", "10.244.0.5"], 8080)

# Other components' rules, loaded first: what must survive the removal untouched.
OTHERS_V4 = """\
*mangle
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*filter
:FORWARD DROP [0:0]
:CNI-FORWARD - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD
-A OUTPUT -j KUBE-FIREWALL
-A CNI-FORWARD -s 10.244.0.0/16 -j ACCEPT
-A CNI-FORWARD -d 10.244.0.0/16 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
COMMIT
*nat
:CNI-HOSTPORT-DNAT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-MARK-DROP - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -m comment --comment "cni masquerade" -j MASQUERADE
-A CNI-HOSTPORT-DNAT -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.244.0.5:80
-A KUBE-MARK-DROP -j MARK --set-xmark 0x8000/0x8000
COMMIT
"""

OTHERS_V6 = """\
*filter
:CNI-FORWARD - [0:0]
-A FORWARD -j CNI-FORWARD
-A CNI-FORWARD -s fd00:10:244::/64 -j ACCEPT
COMMIT
*nat
-A POSTROUTING -s fd00:10:244::/64 ! -d fd00:10:244::/64 -j MASQUERADE
COMMIT
"""

# kube-proxy's filter and canary chains (its jumps put first, as it prepends them).
KUBE_PROXY_FILTER_V4 = """\
*filter
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-I INPUT 1 -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-I INPUT 2 -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-I INPUT 3 -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-I FORWARD 1 -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-I FORWARD 2 -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-I FORWARD 3 -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-I FORWARD 4 -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-I OUTPUT 1 -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-I OUTPUT 2 -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-SERVICES -d 10.96.0.99/32 -p tcp -m comment --comment "demo/empty:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
COMMIT
*mangle
:KUBE-PROXY-CANARY - [0:0]
COMMIT
*nat
:KUBE-PROXY-CANARY - [0:0]
COMMIT
"""

KUBE_PROXY_NAT_V6 = """\
*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-ABCDEFGHIJKLMNOP - [0:0]
:KUBE-SEP-ABCDEFGHIJKLMNOP - [0:0]
-I PREROUTING 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-I OUTPUT 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d fd00:10:96::101/128 -p tcp -m comment --comment "bench/svc-00000:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-ABCDEFGHIJKLMNOP
-A KUBE-SVC-ABCDEFGHIJKLMNOP -j KUBE-SEP-ABCDEFGHIJKLMNOP
-A KUBE-SEP-ABCDEFGHIJKLMNOP -p tcp -m tcp -j DNAT --to-destination [fd00:10:244::2]:8080
COMMIT
"""

NFT_OTHERS = """\
table inet filter {
  chain input {
    type filter hook input priority filter; policy accept;
    tcp dport 22 accept
    ct state established,related accept
  }
}
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 masquerade
  }
}
"""

NFT_KUBE_PROXY_V6 = """\
add table ip6 kube-proxy { comment "rules for kube-proxy" ; }
add chain ip6 kube-proxy services
add chain ip6 kube-proxy nat-output { type nat hook output priority -100 ; }
add rule ip6 kube-proxy nat-output jump services
add rule ip6 kube-proxy services ip6 daddr fd00:10:96::101 tcp dport 80 dnat to [fd00:10:244::2]:8080
"""

SAVE = {(IPTABLES_LEGACY, 4): "iptables-legacy-save", (IPTABLES_LEGACY, 6): "ip6tables-legacy-save",
        (IPTABLES_NFT, 4): "iptables-nft-save", (IPTABLES_NFT, 6): "ip6tables-nft-save"}
RESTORE = {k: v.replace("-save", "-restore") for k, v in SAVE.items()}


def run(ns: str, argv: List[str], stdin: Optional[str] = None) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{argv}: {proc.stderr}"
    return proc.stdout


def load(ns: str, backend: str, family: int, text: str) -> None:
    run(ns, [RESTORE[(backend, family)], "--noflush"], text)


def saved(ns: str, backend: str, family: int) -> str:
    """Save output without comment lines and counters: what must not change."""
    text = run(ns, [SAVE[(backend, family)]])
    lines = [re.sub(r"\[\d+:\d+\]", "[-]", line) for line in text.splitlines()
             if not line.startswith("#")]
    return "\n".join(lines) + "\n"


def chains(save_text: str) -> List[str]:
    return [line[1:].split()[0] for line in save_text.splitlines() if line.startswith(":")]


def load_kube_proxy_iptables(ns: str, backend: str) -> None:
    load(ns, backend, 4, iptables_restore(SERVICES, with_hooks=True))
    load(ns, backend, 4, KUBE_PROXY_FILTER_V4)
    load(ns, backend, 6, KUBE_PROXY_NAT_V6)


@pytest.mark.parametrize("backend", [IPTABLES_LEGACY, IPTABLES_NFT])
def test_iptables_kube_proxy_removed_everything_else_intact(netns, backend):
    load(netns, backend, 4, OTHERS_V4)
    load(netns, backend, 6, OTHERS_V6)
    before4, before6 = saved(netns, backend, 4), saved(netns, backend, 6)
    load_kube_proxy_iptables(netns, backend)
    assert saved(netns, backend, 4) != before4

    state = read_state(netns)
    assert {r.backend for r in state.removals} == {backend}
    tables = {(r.family, r.table): r for r in state.removals}
    assert sorted(tables) == [(4, "filter"), (4, "mangle"), (4, "nat"), (6, "nat")]
    nat = tables[(4, "nat")]
    endpoints = sum(len(s.endpoints) for s in SERVICES)
    assert len(nat.chains) == 5 + len(SERVICES) + endpoints  # 4 fixed + canary + per Service
    assert len(nat.jumps) == 3 and len(tables[(4, "filter")].jumps) == 9
    for removal in state.removals:
        remove(removal, netns)

    after4, after6 = saved(netns, backend, 4), saved(netns, backend, 6)
    assert after4 == before4
    assert after6 == before6
    assert "KUBE-FIREWALL" in chains(after4) and "KUBE-MARK-DROP" in chains(after4)
    assert not [c for c in chains(after4) + chains(after6)
                if c.startswith(("KUBE-SVC-", "KUBE-SEP-", "KUBE-SERVICES", "KUBE-PROXY-",
                                 "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-POSTROUTING",
                                 "KUBE-MARK-MASQ", "KUBE-EXTERNAL-SERVICES"))]
    assert read_state(netns).empty


def test_nftables_kube_proxy_tables_removed_others_intact(netns):
    run(netns, ["nft", "-f", "-"], NFT_OTHERS)
    before = run(netns, ["nft", "list", "ruleset"])
    run(netns, ["nft", "-f", "-"], nft_ruleset(SERVICES))
    run(netns, ["nft", "-f", "-"], NFT_KUBE_PROXY_V6)

    state = read_state(netns)
    # iptables-nft-save sees the native `ip nat` table too, and finds nothing of kube-proxy's.
    assert [(r.backend, r.family) for r in state.removals] == [(NFTABLES, 4), (NFTABLES, 6)]
    v4, v6 = state.removals
    endpoints = sum(len(s.endpoints) for s in SERVICES)
    # 7 fixed chains (3 of them base chains) with 10 rules; 2 rules per Service and endpoint
    assert v4.nft_chains == 7 + len(SERVICES) + endpoints and v4.nft_sets == 3
    assert v4.rules == 10 + 2 * len(SERVICES) + 2 * endpoints
    assert (v6.nft_chains, v6.rules) == (2, 2)
    for removal in state.removals:
        remove(removal, netns)

    assert run(netns, ["nft", "list", "ruleset"]) == before
    assert read_state(netns).empty


@pytest.mark.parametrize("backend", [IPTABLES_LEGACY, IPTABLES_NFT])
def test_no_kube_proxy_state_means_nothing_to_remove(netns, backend):
    assert read_state(netns).empty  # a fresh namespace
    load(netns, backend, 4, OTHERS_V4)
    load(netns, backend, 6, OTHERS_V6)
    run(netns, ["nft", "-f", "-"], "table inet filter {\n chain input {\n"
                                   "  type filter hook input priority filter;\n }\n}\n")
    state = read_state(netns)
    assert state.empty and state.removals == ()
    assert "iptables-legacy-save" in state.tools_run and "nft" in state.tools_run


@pytest.mark.parametrize("backend", [IPTABLES_LEGACY, IPTABLES_NFT])
def test_failed_removal_changes_nothing_and_names_the_tool(netns, backend):
    load(netns, backend, 4, iptables_restore(SERVICES[:3], with_hooks=True))
    [nat] = read_state(netns).removals
    # kube-proxy (say) rewrote a hook after the read: the -D of the old one no longer matches.
    run(netns, [backend, "-t", "nat", "-D", "OUTPUT", "-m", "comment", "--comment",
                "kubernetes service portals", "-j", "KUBE-SERVICES"])
    before = saved(netns, backend, 4)
    with pytest.raises(NetfilterError) as info:
        remove(nat, netns)
    assert f"{backend}-restore" in str(info.value) and info.value.stderr.strip()
    assert saved(netns, backend, 4) == before
    # Read again and the removal goes through.
    [nat] = read_state(netns).removals
    remove(nat, netns)
    assert read_state(netns).empty
