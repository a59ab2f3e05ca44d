"""Which endpoints receive new flows (pure, a table of cases): ready, the serving-and-terminating
fallback (KEP-1669), publishNotReadyAddresses, internalTrafficPolicy Local; and the same rules
end to end through the manifest parser and desired_state."""
import pytest

from ebpflb.manifests import ManifestErrors, parse_documents
from ebpflb.model import Endpoint, desired_state, usable_endpoints

pytestmark = pytest.mark.unit


def ep(name, ready, serving=None, terminating=False, node="node-a"):
    return Endpoint((name,), ready, ready if serving is None else serving, terminating, node)


READY_A = ep("ready-a", True)
READY_B = ep("ready-b", True, node="node-b")
NOT_READY = ep("not-ready", False, serving=False)
TERM_SERVING = ep("term-serving", False, serving=True, terminating=True)
TERM_SERVING_B = ep("term-serving-b", False, serving=True, terminating=True, node="node-b")
TERM_DEAD = ep("term-dead", False, serving=False, terminating=True)
SERVING_NOT_TERM = ep("serving-not-terminating", False, serving=True)
NO_NODE = Endpoint(("no-node",), True, True, False, None)

CASES = [
    # (description, endpoints, publish_not_ready, local_only, node, expected names)
    ("only ready endpoints when some are ready",
     [READY_A, NOT_READY, TERM_SERVING], False, False, "node-a", ["ready-a"]),
    ("no ready: serving and terminating ones take the flows",
     [NOT_READY, TERM_SERVING, TERM_DEAD], False, False, "node-a", ["term-serving"]),
    ("no ready and none serving-and-terminating: nothing",
     [NOT_READY, TERM_DEAD, SERVING_NOT_TERM], False, False, "node-a", []),
    ("publishNotReadyAddresses: every endpoint",
     [READY_A, NOT_READY, TERM_DEAD], True, False, "node-a", ["ready-a", "not-ready", "term-dead"]),
    ("Local: only this node's ready endpoints",
     [READY_A, READY_B], False, True, "node-a", ["ready-a"]),
    ("Local: no local endpoint, none at all (never another node's)",
     [READY_B], False, True, "node-a", []),
    ("Local with an unknown node: nothing",
     [READY_A, READY_B], False, True, None, []),
    ("Local: the terminating fallback among local endpoints only",
     [READY_B, TERM_SERVING, TERM_SERVING_B], False, True, "node-a", ["term-serving"]),
    ("Cluster: nodes do not matter",
     [READY_A, READY_B, NO_NODE], False, False, "node-a", ["ready-a", "ready-b", "no-node"]),
    ("Local and publishNotReadyAddresses",
     [NOT_READY, READY_B], True, True, "node-a", ["not-ready"]),
    ("no endpoints", [], False, False, "node-a", []),
]


@pytest.mark.parametrize("desc,endpoints,publish,local,node,expected", CASES,
                         ids=[c[0] for c in CASES])
def test_usable_endpoints(desc, endpoints, publish, local, node, expected):
    got = usable_endpoints(endpoints, publish, local, node)
    assert [e.addresses[0] for e in got] == expected


def manifest(spec_extra: str, endpoints: str) -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  clusterIP: 10.96.0.10
  ports: [{{name: http, port: 80, protocol: TCP}}]
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


ENDPOINTS = """\
- {addresses: [10.244.0.11], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.244.1.11], nodeName: node-b, conditions: {ready: true}}
- {addresses: [10.244.0.12], nodeName: node-a, conditions: {ready: false, serving: false}}"""


@pytest.mark.parametrize("spec_extra,node,expected", [
    ("", "node-a", ["10.244.1.11"]),
    ("  internalTrafficPolicy: Local", "node-a", ["10.244.0.11"]),  # local fallback
    ("  internalTrafficPolicy: Local", "node-b", ["10.244.1.11"]),
    ("  publishNotReadyAddresses: true", "node-a", ["10.244.0.11", "10.244.0.12", "10.244.1.11"]),
], ids=["cluster", "local on node-a", "local on node-b", "publish not ready"])
def test_rules_through_the_manifests(spec_extra, node, expected):
    m = parse_documents(manifest(spec_extra, ENDPOINTS), "x.yaml")
    (backends,) = desired_state(m.services, m.slices, node_name=node).frontends.values()
    assert [b.ip for b in backends] == expected


def test_session_affinity_fields_parse_and_validate():
    m = parse_documents(manifest("  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: "
                                 "{timeoutSeconds: 60}}", ENDPOINTS), "x.yaml")
    (svc,) = m.services
    assert (svc.session_affinity, svc.affinity_timeout) == ("ClientIP", 60)
    (svc,) = parse_documents(manifest("  sessionAffinity: ClientIP", ENDPOINTS), "x.yaml").services
    assert svc.affinity_timeout == 10800
    for bad, field in [("  sessionAffinity: Sticky", "spec.sessionAffinity"),
                       ("  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: "
                        "{timeoutSeconds: 0}}", "spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
                       ("  internalTrafficPolicy: Nearby", "spec.internalTrafficPolicy"),
                       ("  publishNotReadyAddresses: maybe", "spec.publishNotReadyAddresses")]:
        with pytest.raises(ManifestErrors, match=f"Service demo/web: {field}"):
            parse_documents(manifest(bad, ENDPOINTS), "x.yaml")


@pytest.mark.parametrize("label,proxy_name,programmed", [
    (None, None, True),
    ("other-proxy", None, False),
    ("ebpflb", "ebpflb", True),
    ("ebpflb", None, False),
])
def test_services_of_another_proxy_are_skipped(label, proxy_name, programmed):
    labels = f"labels: {{service.kubernetes.io/service-proxy-name: {label}}}, " if label else ""
    text = manifest("", ENDPOINTS).replace("metadata: {name: web, namespace: demo}",
                                           f"metadata: {{{labels}name: web, namespace: demo}}")
    m = parse_documents(text, "x.yaml")
    state = desired_state(m.services, m.slices, proxy_name=proxy_name)
    assert bool(state.frontends) == programmed
    if not programmed:
        assert "served by another proxy" in state.skipped[0].reason
