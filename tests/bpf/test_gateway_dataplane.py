"""Gateway listeners in the real programs: Gateway API objects and Services go through the
agent's own pipeline (changes -> store -> ClusterModel -> Planner -> apply through bcc), and
SYNs run through lb4_from_pod with BPF_PROG_TEST_RUN. `ebpflb explain` predicts each one.

- A TCPRoute splitting 90/10 over Services of 3 and 2 endpoints: 10,000 new flows, every pick
  predicted by explain, each Service's share within 1.5 points of its weight.
- Moving the weights to 50/50 moves only the flows Maglev must move: a flow whose slot kept its
  backend goes where it went before.
- A backendRef that does not resolve keeps its weight: the flows hashed to its share are
  rejected by the program (a TCP RST from the Gateway address), as explain says, and the others
  are translated.
Nothing here is faked; the maps are emptied again at the end."""
import random
from typing import Any, Dict, List

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from ebpflb.apply import read_snapshot
from ebpflb.changes import Change
from ebpflb.dataplane import testrun
from ebpflb.documents import load_documents
from ebpflb.explain import Flow, explain
from ebpflb.gateway import convert_any_document
from ebpflb.model import ModelContext
from ebpflb.syncer import Syncer

pytestmark = pytest.mark.bpf

GW_IP, GW_PORT = "192.0.2.10", 9000
N_FLOWS = 10_000
STABLE = ["10.244.1.1", "10.244.1.2", "10.244.1.3"]
CANARY = ["10.244.2.1", "10.244.2.2"]


def service(name: str, vip: str, endpoints: List[str]) -> str:
    eps = "\n".join(f"- {{addresses: [{ip}], conditions: {{ready: true}}}}" for ip in endpoints)
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: gw}}
spec: {{clusterIP: {vip}, ports: [{{name: p, port: 80, protocol: TCP, targetPort: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-a, namespace: gw, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: p, port: 8080, protocol: TCP}}]
endpoints:
{eps}
---"""


def objects(stable: int, canary: int, canary_name: str = "canary") -> str:
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: ebpflb}}
spec: {{controllerName: ebpflb.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: gw}}
spec:
  gatewayClassName: ebpflb
  addresses: [{{type: IPAddress, value: {GW_IP}}}]
  listeners: [{{name: app, port: {GW_PORT}, protocol: TCP}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: app, namespace: gw}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - backendRefs:
    - {{name: stable, port: 80, weight: {stable}}}
    - {{name: {canary_name}, port: 80, weight: {canary}}}
---""" + service("stable", "10.96.9.1", STABLE) + service("canary", "10.96.9.2", CANARY)


def changes(text: str) -> List[Change]:
    out = []
    for doc in load_documents(text):
        if doc is None:
            continue
        c = convert_any_document(doc, "test")
        assert not c.refused and c.obj is not None and c.key is not None, c.problems
        out.append(Change(c.kind or "", c.key, c.obj))
    return out


def syn(src: str, sport: int) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src=src, dst=GW_IP) / TCP(sport=sport, dport=GW_PORT, flags="S"))


def flows(seed: str, n: int = N_FLOWS):
    rng = random.Random(seed)
    return [(f"10.{rng.randrange(244, 246)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
             rng.randrange(1024, 65536)) for _ in range(n)]


def run(dataplane, src: str, sport: int) -> Dict[str, Any]:
    """What lb4_from_pod does with a SYN to the Gateway: ("dnat", backend) or ("rst", source)."""
    res = testrun.test_run(dataplane.progs.from_pod.fd, syn(src, sport))
    out = Ether(res.data)
    if out[TCP].flags.R:
        return {"verdict": "reject", "from": f"{out[IP].src}:{out[TCP].sport}"}
    return {"verdict": "dnat", "backend": f"{out[IP].dst}:{out[TCP].dport}"}


@pytest.fixture
def gateway_syncer(dataplane):
    # A Gateway address must be inside the agent's --external-ip-allow.
    syncer = Syncer(dataplane.writer, dataplane.config.map_limits,
                    ctx=ModelContext(external_ip_allow=(f"{GW_IP}/32",)))
    dataplane.clear_conntrack()
    try:
        yield syncer
    finally:
        # Everything this test programmed goes: a full sync of nothing.
        dataplane.clear_conntrack()
        cleared = Syncer(dataplane.writer, dataplane.config.map_limits).full_sync("test end")
        assert cleared.applied


def program(syncer: Syncer, text: str) -> None:
    syncer.take(changes(text))
    outcome = syncer.sync()
    assert outcome is not None and outcome.applied, outcome


def test_a_90_10_split_is_served_as_weighted_and_predicted_by_explain(dataplane, gateway_syncer):
    program(gateway_syncer, objects(90, 10))
    snapshot = read_snapshot(dataplane.writer)
    picks: Dict[str, int] = {}
    for src, sport in flows("90/10"):
        got = run(dataplane, src, sport)
        assert got["verdict"] == "dnat"
        e = explain(snapshot, Flow(src, sport, GW_IP, GW_PORT, "TCP"))
        assert (e.verdict, e.backend) == ("dnat", got["backend"]), (src, sport, e.reason)
        assert e.service == "Gateway gw/edge:app" and e.kind == "ExternalIP"
        picks[got["backend"]] = picks.get(got["backend"], 0) + 1
    canary = sum(n for b, n in picks.items() if b.startswith("10.244.2.")) / N_FLOWS
    assert abs(canary - 0.10) < 0.015, picks
    assert set(picks) == {f"{ip}:8080" for ip in STABLE + CANARY}


def test_moving_weight_moves_only_the_flows_it_must(dataplane, gateway_syncer):
    """Each new flow after 90/10 -> 50/50 goes to the backend its slot now holds; those whose
    slot kept its backend (about 60%) go where they went before."""
    program(gateway_syncer, objects(90, 10))
    sample = flows("shift", 4000)
    before = {f: run(dataplane, *f)["backend"] for f in sample}
    dataplane.clear_conntrack()
    program(gateway_syncer, objects(50, 50))
    snapshot = read_snapshot(dataplane.writer)
    after = {f: run(dataplane, *f)["backend"] for f in sample}
    dataplane.clear_conntrack()
    for f in sample:
        assert after[f] == explain(snapshot, Flow(f[0], f[1], GW_IP, GW_PORT, "TCP")).backend
    kept = sum(before[f] == after[f] for f in sample) / len(sample)
    assert 0.50 < kept < 0.65, kept  # 60% of the slots keep their backend
    canary = sum(b.startswith("10.244.2.") for b in after.values()) / len(sample)
    assert abs(canary - 0.50) < 0.03


def test_the_share_of_an_unresolved_backend_ref_is_rejected(dataplane, gateway_syncer):
    program(gateway_syncer, objects(3, 1, canary_name="missing"))
    snapshot = read_snapshot(dataplane.writer)
    verdicts = {"reject": 0, "dnat": 0}
    for src, sport in flows("reject", 4000):
        got = run(dataplane, src, sport)
        e = explain(snapshot, Flow(src, sport, GW_IP, GW_PORT, "TCP"))
        assert e.verdict == got["verdict"], (src, sport, e.reason)
        if got["verdict"] == "reject":
            assert got["from"] == f"{GW_IP}:{GW_PORT}" and "reject share" in e.reason
        else:
            assert got["backend"] == e.backend and got["backend"].startswith("10.244.1.")
        verdicts[got["verdict"]] += 1
    dataplane.clear_conntrack()
    assert abs(verdicts["reject"] / 4000 - 0.25) < 0.03, verdicts
