"""Endpoint hints as kube-proxy applies them (pkg/proxy/topology.go): the node hints when every
ready endpoint has one and one names this node; else the zone hints when every ready endpoint
has one and one names this node's zone; else every endpoint. Through the manifest parser, the
model, the records (the display flags) and `service list`'s view, for every branch; with the
traffic policies and the terminating fallback as kube-proxy combines them."""
import pytest

from ebpflb.errors import ManifestErrors
from ebpflb.service_view import service_views
from ebpflb.manifests import parse_documents
from ebpflb.model import (TOPOLOGY_NODE, TOPOLOGY_NONE, TOPOLOGY_ZONE, Endpoint, desired_state,
                          topology_mode)

pytestmark = pytest.mark.unit


def manifest(endpoints: str, spec_extra: str = "") -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  trafficDistribution: PreferClose
  ports: [{{name: http, port: 80, protocol: TCP, nodePort: 30080}}]
{spec_extra}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-a, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{endpoints}
"""


def ep(ip: str, zone: str, node: str, for_zones=(), for_nodes=(), ready=True, terminating=False):
    hints = []
    if for_zones:
        hints.append("forZones: [" + ", ".join(f"{{name: {z}}}" for z in for_zones) + "]")
    if for_nodes:
        hints.append("forNodes: [" + ", ".join(f"{{name: {n}}}" for n in for_nodes) + "]")
    cond = f"{{ready: {str(ready).lower()}, serving: true, terminating: {str(terminating).lower()}}}"
    return (f"- {{addresses: [{ip}], zone: {zone}, nodeName: {node}, conditions: {cond}"
            + (f", hints: {{{', '.join(hints)}}}" if hints else "") + "}")


ZONED = "\n".join([ep("10.244.0.11", "a", "n1", ["a"]), ep("10.244.0.12", "a", "n2", ["a"]),
                   ep("10.244.1.11", "b", "n3", ["b"])])
NODED = "\n".join([ep("10.244.0.11", "a", "n1", ["a"], ["n1"]),
                   ep("10.244.0.12", "a", "n2", ["a"], ["n2"]),
                   ep("10.244.1.11", "b", "n3", ["b"], ["n3"])])
PARTLY = "\n".join([ep("10.244.0.11", "a", "n1", ["a"]), ep("10.244.1.11", "b", "n3")])


def frontends(text, node="n1", zone="a", addresses=("192.168.200.10",)):
    m = parse_documents(text, "x.yaml")
    state = desired_state(m.services, m.slices, node_name=node, node_addresses=addresses,
                          node_zone=zone)
    return {str(fe): ([b.ip for b in bes], fe.topology) for fe, bes in state.frontends.items()}


ALL = ["10.244.0.11", "10.244.0.12", "10.244.1.11"]


@pytest.mark.parametrize("text,node,zone,backends,mode", [
    (ZONED, "n1", "a", ["10.244.0.11", "10.244.0.12"], TOPOLOGY_ZONE),
    (ZONED, "n3", "b", ["10.244.1.11"], TOPOLOGY_ZONE),
    (ZONED, "n9", "c", ALL, TOPOLOGY_NONE),  # no endpoint hinted for zone c
    (ZONED, "n1", None, ALL, TOPOLOGY_NONE),  # this node's zone unknown
    (NODED, "n2", "a", ["10.244.0.12"], TOPOLOGY_NODE),  # node hints first
    (NODED, "n9", "a", ["10.244.0.11", "10.244.0.12"], TOPOLOGY_ZONE),  # none for n9: zones
    (PARTLY, "n1", "a", ["10.244.0.11", "10.244.1.11"], TOPOLOGY_NONE),  # not every one hinted
], ids=["zone a", "zone b", "no hint for zone", "zone unknown", "node hints", "node hints "
        "for others: zone", "not all hinted"])
def test_the_hint_rule(text, node, zone, backends, mode):
    got = frontends(manifest(text), node, zone)
    assert got["10.96.0.10:80/TCP"] == (backends, mode)
    # Node ports reach the same endpoints (kube-proxy's cluster endpoints).
    assert got["192.168.200.10:30080/TCP"] == (backends, mode)


def test_not_ready_endpoints_are_not_weighed():
    text = "\n".join([ep("10.244.0.11", "a", "n1", ["a"]),
                      ep("10.244.1.11", "b", "n3", ready=False)])  # no hint, but not ready
    assert frontends(manifest(text))["10.96.0.10:80/TCP"] == (["10.244.0.11"], TOPOLOGY_ZONE)


def test_the_terminating_fallback_ignores_hints():
    text = "\n".join([ep("10.244.0.11", "a", "n1", ["a"], ready=False, terminating=True),
                      ep("10.244.1.11", "b", "n3", ["b"], ready=False, terminating=True)])
    assert frontends(manifest(text))["10.96.0.10:80/TCP"] == (
        ["10.244.0.11", "10.244.1.11"], TOPOLOGY_NONE)


def test_local_traffic_policies_ignore_hints():
    # n1's zone is b but its own endpoint is hinted for zone a.
    text = "\n".join([ep("10.244.0.11", "a", "n1", ["a"]), ep("10.244.1.11", "b", "n3", ["b"])])
    got = frontends(manifest(text, "  internalTrafficPolicy: Local\n"
                                   "  externalTrafficPolicy: Local"), "n1", "b")
    # Local: this node's endpoint, whatever its hint says.
    assert got["10.96.0.10:80/TCP"] == (["10.244.0.11"], TOPOLOGY_NONE)
    assert got["192.168.200.10:30080/TCP@external"] == (["10.244.0.11"], TOPOLOGY_NONE)
    # Pods reaching the node port get the cluster endpoints, hints applied.
    assert got["192.168.200.10:30080/TCP"] == (["10.244.1.11"], TOPOLOGY_ZONE)


def test_publish_not_ready_counts_every_endpoint_as_ready():
    eps = [Endpoint(("10.244.0.11",), False, False, False, hint_zones=("a",)),
           Endpoint(("10.244.1.11",), True, True, False)]
    assert topology_mode(eps, "n1", "a") == TOPOLOGY_NONE  # the ready one has no hint
    assert topology_mode(eps[:1], "n1", "a") == TOPOLOGY_NONE  # none ready
    assert topology_mode(eps[:1], "n1", "a", publish_not_ready=True) == TOPOLOGY_ZONE


def test_the_rule_reaches_the_records_and_service_list():
    from ebpflb.maps import SERVICES, empty_snapshot
    from ebpflb.plan import apply_to, compute_plan

    m = parse_documents(manifest(NODED), "x.yaml")
    state = desired_state(m.services, m.slices, node_name="n2", node_zone="a")
    snapshot = apply_to(empty_snapshot(), compute_plan(state, empty_snapshot()))
    (view,) = service_views(snapshot)
    assert view.topology == "PreferSameNode" and [b.address for b in view.backends] == ["10.244.0.12"]
    state = desired_state(m.services, m.slices, node_name="n9", node_zone="a")
    snapshot = apply_to(empty_snapshot(), compute_plan(state, empty_snapshot()))
    assert service_views(snapshot)[0].topology == "PreferSameZone"
    assert SERVICES in snapshot


@pytest.mark.parametrize("hints,field", [
    ("{forZones: [{}]}", "endpoints[0].hints.forZones[0].name"),
    ("{forZones: [{name: ''}]}", "endpoints[0].hints.forZones[0].name"),
    ("{forNodes: [3]}", "endpoints[0].hints.forNodes[0]"),
    ("{forZones: a}", "endpoints[0].hints.forZones"),
    ("[a]", "endpoints[0].hints"),
])
def test_bad_hints_are_refused_naming_the_field(hints, field):
    text = manifest(f"- {{addresses: [10.244.0.11], hints: {hints}}}")
    with pytest.raises(ManifestErrors) as err:
        parse_documents(text, "x.yaml")
    assert field in str(err.value)
