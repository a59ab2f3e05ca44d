"""What the NodePort benchmark (benchmarks/nodeport.py) feeds to each side: kube-proxy's
iptables-mode rules for NodePort Services (externalTrafficPolicy Cluster), and the same Services
as Kubernetes objects for the ebpflb agent. Pure: text generation only, no kernel.

kube-proxy iptables mode (pkg/proxy/iptables/proxier.go, 1.28+), per Service port with a
nodePort, on every node:

  nat   PREROUTING/OUTPUT -> KUBE-SERVICES: the cluster IP rule, and last
        `-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`
        KUBE-NODEPORTS: `--dport <nodePort> -j KUBE-EXT-<hash>`
        KUBE-EXT-<hash>: KUBE-MARK-MASQ (externalTrafficPolicy Cluster: every external
                         connection is masqueraded, in case it crosses nodes), then KUBE-SVC-<hash>
        KUBE-SVC-<hash>: one rule per endpoint, `-m statistic --mode random --probability
                         1/(n-i)`, the last without, to KUBE-SEP-<hash> (DNAT)
        POSTROUTING -> KUBE-POSTROUTING: MASQUERADE --random-fully what carries 0x4000
  filter INPUT/FORWARD/OUTPUT hooks into KUBE-PROXY-FIREWALL, KUBE-FORWARD (INVALID drop,
        masq-marked and RELATED,ESTABLISHED accepted), KUBE-SERVICES, KUBE-EXTERNAL-SERVICES,
        KUBE-NODEPORTS (health check ports) and KUBE-FIREWALL (localnet guard)

KUBE-EXT-<hash> uses the same hash as KUBE-SVC-<hash> (portProtoHash). The Service and
endpoint chains come from ebpflb/lab/kubeproxy_rules.py, so the two benchmarks agree on them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from ebpflb.lab import kubeproxy_rules as kp


@dataclass(frozen=True)
class NodePortSvc:
    """One NodePort Service port: the cluster-internal part (kp.Svc) plus its nodePort and the
    node each endpoint runs on."""

    svc: kp.Svc
    node_port: int
    endpoint_nodes: Tuple[str, ...]  # nodeName of each of svc.endpoints, same order


def ext_chain(s: kp.Svc) -> str:
    """KUBE-EXT-<hash>: the same portProtoHash as the Service's KUBE-SVC chain."""
    return "KUBE-EXT-" + kp.svc_chain(s)[len("KUBE-SVC-"):]


def iptables_nat(services: Sequence[NodePortSvc]) -> List[str]:
    lines = ["*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]",
             ":KUBE-POSTROUTING - [0:0]", ":KUBE-MARK-MASQ - [0:0]"]
    for n in services:
        lines += [f":{kp.svc_chain(n.svc)} - [0:0]", f":{ext_chain(n.svc)} - [0:0]"]
        lines += [f":{kp.sep_chain(n.svc, ep)} - [0:0]" for ep in n.svc.endpoints]
    lines += ['-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
              '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
              '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
              f"-A KUBE-POSTROUTING -m mark ! --mark {kp.MASQ_MARK}/{kp.MASQ_MARK} -j RETURN",
              f"-A KUBE-POSTROUTING -j MARK --xor-mark {kp.MASQ_MARK}",
              '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
              '-j MASQUERADE --random-fully',
              f"-A KUBE-MARK-MASQ -j MARK --or-mark {kp.MASQ_MARK}"]
    chains: List[str] = []
    for n in services:
        s = n.svc
        name = s.port_name_string
        svc_rules = kp._svc_rules(s)  # [KUBE-SERVICES cluster IP rule, the KUBE-SVC chain...]
        lines.append(svc_rules[0])
        lines.append(f"-A KUBE-NODEPORTS -m comment --comment {name} -m {s.proto} -p {s.proto} "
                     f"--dport {n.node_port} -j {ext_chain(s)}")
        chains += [f'-A {ext_chain(s)} -m comment --comment "masquerade traffic for {name} '
                   f'external destinations" -j KUBE-MARK-MASQ',
                   f"-A {ext_chain(s)} -j {kp.svc_chain(s)}"]
        chains += svc_rules[1:]
        for ep in s.endpoints:
            chains += kp._sep_rules(s, ep)
    lines.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this '
                 'must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    return lines + chains + ["COMMIT"]


def iptables_filter() -> List[str]:
    """kube-proxy's filter table with no firewall, health check or reject rules to add (every
    Service has endpoints): the hooks and KUBE-FORWARD, which every forwarded packet walks."""
    chains = ["KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL", "KUBE-FORWARD", "KUBE-NODEPORTS",
              "KUBE-PROXY-FIREWALL", "KUBE-SERVICES"]
    new = "-m conntrack --ctstate NEW"
    return (["*filter"] + [f":{c} - [0:0]" for c in chains] + [
        f'-A INPUT {new} -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
        f'-A INPUT {new} -m comment --comment "kubernetes externally-visible service portals" '
        '-j KUBE-EXTERNAL-SERVICES',
        "-A INPUT -j KUBE-FIREWALL",
        f'-A FORWARD {new} -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        f'-A FORWARD {new} -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        f'-A FORWARD {new} -m comment --comment "kubernetes externally-visible service portals" '
        '-j KUBE-EXTERNAL-SERVICES',
        f'-A OUTPUT {new} -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        f'-A OUTPUT {new} -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "-A OUTPUT -j KUBE-FIREWALL",
        '-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming '
        'localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP',
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark '
        f'{kp.MASQ_MARK}/{kp.MASQ_MARK} -j ACCEPT',
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack '
        '--ctstate RELATED,ESTABLISHED -j ACCEPT',
        "COMMIT"])


def iptables_restore(services: Sequence[NodePortSvc]) -> str:
    """The nat and filter tables of one full kube-proxy sync (iptables-restore input)."""
    return "\n".join(iptables_nat(services) + iptables_filter()) + "\n"


def manifests(services: Sequence[NodePortSvc]) -> str:
    """The same Services for the ebpflb agent: a JSON `kind: List` (YAML loaders read it) of one
    NodePort Service (externalTrafficPolicy Cluster) and one EndpointSlice each, endpoints with
    their nodeName."""
    items = []
    for n in services:
        s = n.svc
        target = s.endpoints[0][1]
        items.append({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": s.name, "namespace": s.namespace},
                      "spec": {"type": "NodePort", "clusterIP": s.vip, "clusterIPs": [s.vip],
                               "externalTrafficPolicy": "Cluster",
                               "ports": [{"name": s.port_name, "port": s.port,
                                          "protocol": s.protocol, "targetPort": target,
                                          "nodePort": n.node_port}]}})
        items.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                      "metadata": {"name": f"{s.name}-abcde", "namespace": s.namespace,
                                   "labels": {"kubernetes.io/service-name": s.name}},
                      "addressType": "IPv4",
                      "ports": [{"name": s.port_name, "port": target, "protocol": s.protocol}],
                      "endpoints": [{"addresses": [ip], "conditions": {"ready": True},
                                     "nodeName": node}
                                    for (ip, _), node in zip(s.endpoints, n.endpoint_nodes)]})
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=0) + "\n"
