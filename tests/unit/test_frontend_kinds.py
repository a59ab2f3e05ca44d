"""Frontends a Service gets beyond its cluster IPs (issue 5's model): a node port on every node
address, the load balancer's ingress IPs, external IPs only inside the allow-list
(CVE-2020-8554), and externalTrafficPolicy Local keeping outside traffic on local endpoints."""
import re

import pytest

from ebpflb.manifests import ManifestErrors, parse_documents
from ebpflb.model import desired_state

pytestmark = pytest.mark.unit


def text(spec_extra: str = "", status: str = "", typ: str = "LoadBalancer") -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  type: {typ}
  clusterIP: 10.96.0.10
  ports: [{{name: http, port: 80, protocol: TCP, nodePort: 30080}}]
{spec_extra}
{status}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-a, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: [10.244.0.11], nodeName: node-0, conditions: {{ready: true}}}}
- {{addresses: [10.244.1.11], nodeName: node-1, conditions: {{ready: true}}}}
"""


def frontends(manifest: str, **kw):
    m = parse_documents(manifest, "x.yaml")
    state = desired_state(m.services, m.slices, **kw)
    return {(f.kind, str(f)): [b.ip for b in bs] for f, bs in state.frontends.items()}, state.skipped


BOTH = ["10.244.0.11", "10.244.1.11"]


def test_every_kind_of_frontend():
    got, skipped = frontends(
        text("  externalIPs: [203.0.113.7, 198.51.100.9]",
             "status: {loadBalancer: {ingress: [{ip: 192.0.2.50}, {hostname: lb.example}]}}"),
        node_addresses=["192.168.200.10", "192.168.200.11"], external_ip_allow=["203.0.113.0/24"])
    assert got == {
        ("ClusterIP", "10.96.0.10:80/TCP"): BOTH,
        ("NodePort", "192.168.200.10:30080/TCP"): BOTH,
        ("NodePort", "192.168.200.11:30080/TCP"): BOTH,
        ("LoadBalancer", "192.0.2.50:80/TCP"): BOTH,
        ("ExternalIP", "203.0.113.7:80/TCP"): BOTH,
    }
    assert [s.reason for s in skipped] == [
        "externalIP 198.51.100.9 outside the --external-ip-allow list (CVE-2020-8554)"]


def test_external_ips_are_refused_by_default():
    got, skipped = frontends(text("  externalIPs: [203.0.113.7]", typ="ClusterIP"))
    assert set(got) == {("ClusterIP", "10.96.0.10:80/TCP")}
    assert "CVE-2020-8554" in skipped[0].reason


def test_clusterip_services_get_no_node_port():
    got, _ = frontends(text(typ="ClusterIP"), node_addresses=["192.168.200.10"])
    assert set(got) == {("ClusterIP", "10.96.0.10:80/TCP")}


def test_external_traffic_policy_local_keeps_outside_traffic_local():
    got, _ = frontends(text("  externalTrafficPolicy: Local", typ="NodePort"),
                       node_addresses=["192.168.200.10"], node_name="node-0")
    # From outside: this node's endpoints only (a record of its own, scope external).
    assert got[("NodePort", "192.168.200.10:30080/TCP@external")] == ["10.244.0.11"]
    # Pods reaching the node port are inside the cluster: every endpoint, as kube-proxy's
    # "pod traffic for external destinations" rule does.
    assert got[("NodePort", "192.168.200.10:30080/TCP")] == BOTH
    assert got[("ClusterIP", "10.96.0.10:80/TCP")] == BOTH  # inside the cluster: every endpoint


def test_external_addresses_ignore_internal_traffic_policy():
    """internalTrafficPolicy governs the cluster IP only; the node port reaches every endpoint
    (kube-proxy's external chain is the cluster chain under externalTrafficPolicy Cluster)."""
    got, _ = frontends(text("  internalTrafficPolicy: Local", typ="NodePort"),
                       node_addresses=["192.168.200.10"], node_name="node-0")
    assert got[("ClusterIP", "10.96.0.10:80/TCP")] == ["10.244.0.11"]
    assert got[("NodePort", "192.168.200.10:30080/TCP")] == BOTH
    assert not any(key.endswith("@external") for _, key in got)


@pytest.mark.parametrize("bad,field", [
    ("  externalTrafficPolicy: Nearest", "spec.externalTrafficPolicy"),
    ("  externalIPs: [not-an-ip]", "spec.externalIPs[0]"),
])
def test_bad_fields_name_themselves(bad, field):
    with pytest.raises(ManifestErrors, match=re.escape(f"Service demo/web: {field}")):
        parse_documents(text(bad), "x.yaml")


def test_bad_node_port_and_ingress():
    with pytest.raises(ManifestErrors, match=r"spec.ports\[0\].nodePort: 70000"):
        parse_documents(text().replace("nodePort: 30080", "nodePort: 70000"), "x.yaml")
    with pytest.raises(ManifestErrors, match=r"status.loadBalancer.ingress\[0\].ip"):
        parse_documents(text(status="status: {loadBalancer: {ingress: [{ip: 300.1.1.1}]}}"), "x.yaml")


def test_the_kind_reaches_the_maps_and_service_list():
    from ebpflb.service_view import render_table, service_views
    from ebpflb.maps import empty_snapshot
    from ebpflb.plan import apply_to, compute_plan

    m = parse_documents(text(), "x.yaml")
    state = desired_state(m.services, m.slices, node_addresses=["192.168.200.10"])
    snap = apply_to(empty_snapshot(), compute_plan(state, empty_snapshot()))
    kinds = {v.frontend: v.kind for v in service_views(snap)}
    assert kinds == {"10.96.0.10:80/TCP": "ClusterIP", "192.168.200.10:30080/TCP": "NodePort"}
    assert "NodePort" in render_table(service_views(snap))


def test_explain_follows_the_path_a_flow_takes():
    """`ebpflb explain --from-outside`: a flow arriving on a node device takes the node-local
    record of a Local-policy frontend and is refused a ClusterIP; from a pod the same address
    reaches every endpoint."""
    from ebpflb.explain import Flow, explain
    from ebpflb.maps import empty_snapshot
    from ebpflb.plan import apply_to, compute_plan

    m = parse_documents(text("  externalTrafficPolicy: Local", typ="NodePort"), "x.yaml")
    desired = desired_state(m.services, m.slices, node_addresses=["192.168.200.10"],
                            node_name="node-0")
    snap = apply_to(empty_snapshot(), compute_plan(desired, empty_snapshot()))
    seen_inside, seen_outside = set(), set()
    for port in range(40000, 40064):
        flow = Flow("192.168.200.2", port, "192.168.200.10", 30080, "TCP")
        seen_inside.add(explain(snap, flow).backend)
        seen_outside.add(explain(snap, flow, outside=True).backend)
    assert seen_inside == {"10.244.0.11:8080", "10.244.1.11:8080"}
    assert seen_outside == {"10.244.0.11:8080"}
    to_vip = explain(snap, Flow("192.168.200.2", 1, "10.96.0.10", 80, "TCP"), outside=True)
    assert to_vip.verdict == "drop" and "ClusterIP" in to_vip.reason

    m = parse_documents(text("  externalTrafficPolicy: Local", typ="NodePort")
                        .replace("nodeName: node-0", "nodeName: node-1"), "x.yaml")
    desired = desired_state(m.services, m.slices, node_addresses=["192.168.200.10"],
                            node_name="node-0")
    snap = apply_to(empty_snapshot(), compute_plan(desired, empty_snapshot()))
    flow = Flow("192.168.200.2", 40000, "192.168.200.10", 30080, "TCP")
    assert explain(snap, flow, outside=True).verdict == "drop"
    assert explain(snap, flow).verdict == "dnat"


def test_switching_local_to_cluster_keeps_the_flows_from_outside():
    """externalTrafficPolicy Local -> Cluster removes the node-local record for traffic from
    outside, but the address still serves: its flows are not purged (their conntrack entries
    hold all they need); deleting the Service drains every record (TCP)."""
    from ebpflb.draining import is_draining
    from ebpflb.maps import SERVICES, empty_snapshot
    from ebpflb.plan import apply_to, compute_plan, conntrack_purge

    def program(manifest, current):
        m = parse_documents(manifest, "x.yaml")
        desired = desired_state(m.services, m.slices, node_addresses=["192.168.200.10"],
                                node_name="node-0")
        plan = compute_plan(desired, current)
        return plan, apply_to(current, plan)

    _, local = program(text("  externalTrafficPolicy: Local", typ="NodePort"), empty_snapshot())
    external_id = next(v.svc_id for k, v in local[SERVICES].items() if k.scope == 1)
    plan, cluster = program(text(typ="NodePort"), local)
    purge = conntrack_purge(plan, cluster[SERVICES])
    assert external_id not in purge.svc_ids and not purge.udp_backends
    # The Local record drains (a TCP frontend that goes keeps its open flows).
    assert is_draining(cluster[SERVICES][next(k for k in cluster[SERVICES] if k.scope == 1)])
    plan, gone = program("", cluster)
    # Deleting the Service: every TCP record drains, so nothing is purged yet.
    assert not conntrack_purge(plan, gone[SERVICES]).svc_ids
    assert set(gone[SERVICES]) == set(cluster[SERVICES])
    assert all(is_draining(v) and v.count == 0 for v in gone[SERVICES].values())
