"""North-south Service fields (issue 5), from manifest to map records: loadBalancerSourceRanges
only on LoadBalancer frontends (flag plus LPM records, written before the frontend and removed
after it), externalTrafficPolicy Local flagged on outside-facing kinds only, and the
healthCheckNodePort each Service asks this node to answer, with its local endpoint count."""
import json
import re

import pytest

from ebpflb.explain import NODE, Device, Flow, explain
from ebpflb.service_view import render_table, service_views
from ebpflb.manifests import ManifestErrors, parse_documents
from ebpflb.maps import (SERVICES, SRC_RANGES, SVC_F_DRAINING, SVC_F_DROP_EMPTY, SVC_F_ETP_LOCAL,
                         SVC_F_SRC_RANGES, SrcRangeKey,
                         SvcKey, empty_snapshot, frontend_kind)
from ebpflb.model import (Backend, DesiredState, Endpoint, EndpointPort, EndpointSlice, Frontend,
                          HealthCheck, Service, ServicePort, desired_state)
from ebpflb.plan import DELETE, UPSERT, apply_to, compute_plan

pytestmark = pytest.mark.unit

NODE_ADDR = "192.168.200.10"
LB_IP = "192.0.2.50"


def manifest(spec_extra: str = "", typ: str = "LoadBalancer", name: str = "web",
             cluster_ip: str = "10.96.0.10", node_port: int = 30080, lb_ip: str = LB_IP) -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: demo}}
spec:
  type: {typ}
  clusterIP: {cluster_ip}
  ports: [{{name: http, port: 80, protocol: TCP, nodePort: {node_port}}}]
{spec_extra}
status: {{loadBalancer: {{ingress: [{{ip: {lb_ip}}}]}}}}
"""


SLICE = """
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: metrics, port: 9090, protocol: TCP}]
endpoints:
- {addresses: [10.244.0.11], nodeName: node-0, conditions: {ready: true}}
- {addresses: [10.244.0.12], nodeName: node-0, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.244.1.11], nodeName: node-1, conditions: {ready: true}}
"""
SLICE_B = """
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.0.11], nodeName: node-0, conditions: {ready: true}}
- {addresses: [10.244.0.13], nodeName: node-0}
"""

LOCAL_LB = """\
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  loadBalancerSourceRanges: [" 203.0.113.0/24", 198.51.100.7/16, "2001:db8::/32", 203.0.113.9/24]
"""


def state(text: str, node_name: str = "node-0") -> DesiredState:
    m = parse_documents(text, "x.yaml")
    return desired_state(m.services, m.slices, node_name=node_name, node_addresses=[NODE_ADDR])


def by_kind(desired: DesiredState):
    return {fe.kind: fe for fe in desired.frontends}


# --- manifests --------------------------------------------------------------------------------

def test_fields_are_parsed_and_ranges_normalized():
    (svc,) = parse_documents(manifest(LOCAL_LB), "x.yaml").services
    # spaces trimmed, host bits masked (as kube-proxy does), duplicates after masking dropped
    assert svc.lb_source_ranges == ("203.0.113.0/24", "198.51.0.0/16", "2001:db8::/32")
    assert svc.health_check_node_port == 32000


def test_api_json_converts_the_same_way():
    """The API source validates each object with the same parser (sources/kubernetes.py)."""
    obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "demo"},
           "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "externalTrafficPolicy": "Local",
                    "healthCheckNodePort": 31999, "loadBalancerSourceRanges": ["10.0.0.0/8"],
                    "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}]}}
    (svc,) = parse_documents(json.dumps(obj), "<api>").services
    assert (svc.lb_source_ranges, svc.health_check_node_port) == (("10.0.0.0/8",), 31999)


def test_leading_zeros_are_read_as_decimal_like_the_api_server():
    (svc,) = parse_documents(manifest('  loadBalancerSourceRanges: ["010.001.0.0/16"]'),
                             "x.yaml").services
    assert svc.lb_source_ranges == ("10.1.0.0/16",)


@pytest.mark.parametrize("extra,field,message", [
    ('  loadBalancerSourceRanges: [10.0.0.0/8, "garbage"]', "spec.loadBalancerSourceRanges[1]",
     "not a valid CIDR"),
    ("  loadBalancerSourceRanges: [10.0.0.1]", "spec.loadBalancerSourceRanges[0]",
     "not a valid CIDR"),
    ("  loadBalancerSourceRanges: [10.0.0.0/33]", "spec.loadBalancerSourceRanges[0]",
     "not a valid CIDR"),
    ("  loadBalancerSourceRanges: [10.0.0.0/255.0.0.0]", "spec.loadBalancerSourceRanges[0]",
     "not a valid CIDR"),
    ("  loadBalancerSourceRanges: [8]", "spec.loadBalancerSourceRanges[0]", "not a string"),
    ("  loadBalancerSourceRanges: 10.0.0.0/8", "spec.loadBalancerSourceRanges", "must be a list"),
    ("  externalTrafficPolicy: Local\n  healthCheckNodePort: 70000", "spec.healthCheckNodePort",
     "1-65535"),
    ('  externalTrafficPolicy: Local\n  healthCheckNodePort: "32000"', "spec.healthCheckNodePort",
     "not a string"),
    ("  healthCheckNodePort: 32000", "spec.healthCheckNodePort", "externalTrafficPolicy is Local"),
])
def test_bad_fields_name_themselves(extra, field, message):
    with pytest.raises(ManifestErrors) as exc:
        parse_documents(manifest(extra), "x.yaml")
    text = str(exc.value)
    assert re.search(rf"x\.yaml:\d+: Service demo/web: {re.escape(field)}: ", text), text
    assert message in text, text


def test_fields_only_on_a_load_balancer():
    with pytest.raises(ManifestErrors, match=r"spec.loadBalancerSourceRanges: may only be used "
                                             r"when type is LoadBalancer"):
        parse_documents(manifest("  loadBalancerSourceRanges: [10.0.0.0/8]", typ="NodePort"), "x.yaml")
    with pytest.raises(ManifestErrors, match=r"spec.healthCheckNodePort: may only be set"):
        parse_documents(manifest("  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000",
                                 typ="NodePort"), "x.yaml")


# --- model ------------------------------------------------------------------------------------

def test_source_ranges_only_on_load_balancer_frontends():
    fes = by_kind(state(manifest(LOCAL_LB) + SLICE))
    assert fes["LoadBalancer"].source_ranges == ("203.0.113.0/24", "198.51.0.0/16", "2001:db8::/32")
    assert fes["NodePort"].source_ranges == () and fes["ClusterIP"].source_ranges == ()


def test_external_local_only_on_outside_kinds():
    text = manifest(LOCAL_LB + "  externalIPs: [203.0.113.7]") + SLICE
    m = parse_documents(text, "x.yaml")
    desired = desired_state(m.services, m.slices, node_name="node-0", node_addresses=[NODE_ADDR],
                            external_ip_allow=["203.0.113.0/24"])
    assert {fe.kind: fe.external_local for fe in desired.frontends} == {
        "ClusterIP": False, "NodePort": True, "LoadBalancer": True, "ExternalIP": True}
    cluster = by_kind(state(manifest() + SLICE))
    assert not any(fe.external_local for fe in cluster.values())


def test_health_check_counts_ready_local_addresses():
    desired = state(manifest(LOCAL_LB) + SLICE + SLICE_B)
    # node-0: 10.244.0.11 (in both slices, once), 10.244.0.13 (nil ready = ready); not the
    # terminating 10.244.0.12, not node-1's endpoint.
    assert desired.health_checks == (HealthCheck(32000, "demo/web", 2),)
    assert state(manifest(LOCAL_LB) + SLICE + SLICE_B, "node-1").health_checks == (
        HealthCheck(32000, "demo/web", 1),)
    assert state(manifest(LOCAL_LB) + SLICE, "node-9").health_checks == (
        HealthCheck(32000, "demo/web", 0),)
    assert state(manifest(LOCAL_LB)).health_checks == (HealthCheck(32000, "demo/web", 0),)


def test_health_check_of_publish_not_ready_counts_every_local_endpoint():
    text = manifest(LOCAL_LB + "  publishNotReadyAddresses: true") + SLICE
    assert state(text).health_checks == (HealthCheck(32000, "demo/web", 2),)


def test_no_health_check_without_local_policy_or_port():
    assert state(manifest() + SLICE).health_checks == ()
    assert state(manifest("  externalTrafficPolicy: Local") + SLICE).health_checks == ()


def test_a_health_check_port_clash_keeps_the_first_service():
    first = manifest(LOCAL_LB, name="alpha", cluster_ip="10.96.0.11", node_port=30081,
                     lb_ip="192.0.2.51")
    second = manifest(LOCAL_LB, name="web")
    desired = state(second + "---" + first + SLICE)
    assert desired.health_checks == (HealthCheck(32000, "demo/alpha", 0),)
    assert [(s.ref, s.reason) for s in desired.skipped] == [
        ("demo/web", "healthCheckNodePort 32000 already used by demo/alpha")]
    assert {fe.service for fe in desired.frontends} == {"demo/alpha", "demo/web"}


def test_direct_model_objects_nodeport_type_also_served():
    svc = Service("demo", "np", "NodePort", ("10.96.0.12",),
                  (ServicePort("", "TCP", 80, 8080, 30090),), external_traffic_policy="Local",
                  health_check_node_port=32001)
    eps = EndpointSlice("demo", "np-a", "np", "IPv4", (EndpointPort("", 8080, "TCP"),),
                        (Endpoint(("10.244.0.5",), True, True, False, "node-0"),))
    desired = desired_state([svc], [eps], node_name="node-0")
    assert desired.health_checks == (HealthCheck(32001, "demo/np", 1),)


# --- plan -------------------------------------------------------------------------------------

def lb_frontend(ranges=("10.0.0.0/8", "192.168.0.0/16"), local=False) -> Frontend:
    return Frontend(LB_IP, 80, "TCP", "demo/web", "http", kind="LoadBalancer",
                    source_ranges=tuple(ranges), external_local=local)


def program(*frontends_and_backends) -> DesiredState:
    return DesiredState(frontends=dict(frontends_and_backends), skipped=())


def test_flags_and_range_records():
    desired = state(manifest(LOCAL_LB) + SLICE)
    snap = apply_to(empty_snapshot(), compute_plan(desired, empty_snapshot()))
    flags = {frontend_kind(v.flags): v.flags for v in snap[SERVICES].values()}
    assert flags["LoadBalancer"] & (SVC_F_SRC_RANGES | SVC_F_ETP_LOCAL) == SVC_F_SRC_RANGES | SVC_F_ETP_LOCAL
    assert flags["NodePort"] & (SVC_F_SRC_RANGES | SVC_F_ETP_LOCAL) == SVC_F_ETP_LOCAL
    assert flags["ClusterIP"] & (SVC_F_SRC_RANGES | SVC_F_ETP_LOCAL) == 0
    # Local policy: the load balancer IP has a record for pods (every endpoint) and one for
    # traffic from outside (this node's); both hold the ranges.
    lb_ids = [snap[SERVICES][SvcKey(LB_IP, 80, 6, scope)].svc_id for scope in (0, 1)]
    # IPv4 ranges only: the v4 maps cannot hold the IPv6 one
    assert snap[SRC_RANGES] == {SrcRangeKey(i, cidr): 1 for i in lb_ids
                                for cidr in ("203.0.113.0/24", "198.51.0.0/16")}
    assert not compute_plan(desired, snap)


def test_only_ipv6_ranges_leave_ipv4_clients_unrestricted():
    """Each family is judged by its own ranges (kube-proxy's per-family proxiers): a list of
    IPv6 ranges restricts IPv6 clients only. Before 16's fix an IPv4 frontend with such a list
    refused every IPv4 client."""
    snap = apply_to(empty_snapshot(), compute_plan(
        program((lb_frontend(["2001:db8::/32"]), (Backend("10.244.0.11", 8080),))), empty_snapshot()))
    (svc,) = snap[SERVICES].values()
    assert not svc.flags & SVC_F_SRC_RANGES and snap[SRC_RANGES] == {}
    assert explain(snap, Flow("10.1.2.3", 5555, LB_IP, 80, "TCP")).verdict == "dnat"
    # A mixed list: the IPv4 ranges restrict the IPv4 frontend.
    snap = apply_to(empty_snapshot(), compute_plan(
        program((lb_frontend(["2001:db8::/32", "10.0.0.0/8"]), (Backend("10.244.0.11", 8080),))),
        empty_snapshot()))
    (svc,) = snap[SERVICES].values()
    assert svc.flags & SVC_F_SRC_RANGES
    assert explain(snap, Flow("192.0.2.9", 5555, LB_IP, 80, "TCP")).verdict == "drop"


def order(plan):
    return [(op.action, op.map) for op in plan.ops if op.map in (SERVICES, SRC_RANGES)]


def test_ranges_are_written_before_the_frontend_and_removed_after_it():
    backends = (Backend("10.244.0.11", 8080),)
    create = compute_plan(program((lb_frontend(), backends)), empty_snapshot())
    assert order(create) == [(UPSERT, SRC_RANGES), (UPSERT, SRC_RANGES), (UPSERT, SERVICES)]
    snap = apply_to(empty_snapshot(), create)

    # Deleting it: the (TCP) frontend drains without its ranges flag, the records go after it.
    delete = compute_plan(program(), snap)
    assert order(delete) == [(UPSERT, SERVICES), (DELETE, SRC_RANGES), (DELETE, SRC_RANGES)]
    assert delete.ops[0].new.flags & (SVC_F_SRC_RANGES | SVC_F_DRAINING) == SVC_F_DRAINING

    # Dropping the ranges: the flag is cleared first, the records go after it.
    cleared = compute_plan(program((lb_frontend(()), backends)), snap)
    assert order(cleared) == [(UPSERT, SERVICES), (DELETE, SRC_RANGES), (DELETE, SRC_RANGES)]
    assert not cleared.ops[0].new.flags & SVC_F_SRC_RANGES

    # Adding ranges to an unrestricted frontend: records first, then the flag.
    open_snap = apply_to(empty_snapshot(), compute_plan(program((lb_frontend(()), backends)),
                                                        empty_snapshot()))
    restrict = compute_plan(program((lb_frontend(), backends)), open_snap)
    assert order(restrict) == [(UPSERT, SRC_RANGES), (UPSERT, SRC_RANGES), (UPSERT, SERVICES)]

    # Changing one range: the new one is added before the old one goes; the frontend is untouched.
    changed = compute_plan(program((lb_frontend(("10.0.0.0/8", "172.16.0.0/12")), backends)), snap)
    assert [(op.action, op.key.cidr) for op in changed.ops] == [
        (UPSERT, "172.16.0.0/12"), (DELETE, "192.168.0.0/16")]


def test_every_write_keeps_a_restricted_frontend_restricted_to_its_ranges():
    """After each single write, a flagged frontend's records are a superset of either the old or
    the new ranges: no moment refuses a client both states allow."""
    backends = (Backend("10.244.0.11", 8080),)
    states = [program((lb_frontend(r), backends)) for r in
              (("10.0.0.0/8",), ("10.0.0.0/8", "192.168.0.0/16"), ("172.16.0.0/12",), ())]
    snap = empty_snapshot()
    for desired in states + [program()] + states[::-1]:
        before = snap
        plan = compute_plan(desired, snap)
        for op in plan.ops:
            snap = apply_to(snap, type(plan)((op,)))
            for key, svc in snap[SERVICES].items():
                if svc.flags & SVC_F_SRC_RANGES:
                    have = {k.cidr for k in snap[SRC_RANGES] if k.svc_id == svc.svc_id}
                    old = {k.cidr for k in before[SRC_RANGES] if k.svc_id == svc.svc_id}
                    new = set((next(iter(desired.frontends)).source_ranges
                               if desired.frontends else ()))
                    assert have >= old or have >= new, op
        assert not compute_plan(desired, snap)


def test_range_capacity_is_checked():
    from ebpflb.plan import PlanError

    with pytest.raises(PlanError, match="lb4_src_ranges would need 2 entries"):
        compute_plan(program((lb_frontend(), ())), empty_snapshot(), {SRC_RANGES: 1})


def test_ids_of_leftover_ranges_are_not_reused():
    leftover = empty_snapshot()
    leftover[SRC_RANGES][SrcRangeKey(1, "10.0.0.0/8")] = 1
    plan = compute_plan(program((lb_frontend(("172.16.0.0/12",)), ())), leftover)
    after = apply_to(leftover, plan)
    (svc,) = after[SERVICES].values()
    assert svc.svc_id != 1 and after[SRC_RANGES] == {SrcRangeKey(svc.svc_id, "172.16.0.0/12"): 1}


# --- views ------------------------------------------------------------------------------------

def test_explain_and_service_list_show_the_ranges():
    snap = apply_to(empty_snapshot(), compute_plan(
        program((lb_frontend(local=True), (Backend("10.244.0.11", 8080),))), empty_snapshot()))
    inside = explain(snap, Flow("10.1.2.3", 5555, LB_IP, 80, "TCP"))
    outside = explain(snap, Flow("172.16.0.1", 5555, LB_IP, 80, "TCP"))
    assert inside.verdict == "dnat" and outside.verdict == "drop"
    assert "loadBalancerSourceRanges" in outside.reason
    (view,) = service_views(snap)
    assert view.source_ranges == ("10.0.0.0/8", "192.168.0.0/16") and view.external_local
    table = render_table([view])
    assert "only from 10.0.0.0/8, 192.168.0.0/16" in table and "externalTrafficPolicy Local" in table


# --- ipMode Proxy (issue 17) -----------------------------------------------------------------

def test_ip_mode_proxy_addresses_are_left_to_the_load_balancer():
    """kube-proxy leaves a load balancer address whose ingress entry says ipMode: Proxy to the
    load balancer (its traffic comes through it); ipMode VIP (or none) is programmed."""
    text = manifest().replace(f"ingress: [{{ip: {LB_IP}}}]",
                              f"ingress: [{{ip: {LB_IP}, ipMode: VIP}}, "
                              "{ip: 192.0.2.60, ipMode: Proxy}]") + SLICE
    desired = state(text)
    lbs = [fe.vip for fe in desired.frontends if fe.kind == "LoadBalancer"]
    assert lbs == [LB_IP]
    assert [s.reason for s in desired.skipped] == [
        "load balancer IP 192.0.2.60 has ipMode Proxy: its traffic comes through the load "
        "balancer, which is left to handle it, as kube-proxy does"]


@pytest.mark.parametrize("entry,message", [
    ("{ip: 192.0.2.60, ipMode: Tunnel}",
     'status.loadBalancer.ingress[0].ipMode: "Tunnel" is not one of VIP, Proxy'),
    ("{hostname: lb.example.com, ipMode: Proxy}",
     "status.loadBalancer.ingress[0].ipMode: set without an ip"),
])
def test_bad_ip_mode_is_refused_naming_the_field(entry, message):
    text = manifest().replace(f"ingress: [{{ip: {LB_IP}}}]", f"ingress: [{entry}]")
    with pytest.raises(ManifestErrors) as exc:
        parse_documents(text, "x.yaml")
    assert message in str(exc.value)



# --- drop or reject with no backend here (issue 17) ------------------------------------------

@pytest.mark.parametrize("etp,endpoints,dropped", [
    ("Local", "- {addresses: [10.244.1.11], nodeName: node-1, conditions: {ready: true}}", True),
    ("Local", "", False),   # none anywhere: rejected, a closed port
    ("Cluster", "", False),
])
def test_no_backend_here_drops_only_when_the_service_has_some_elsewhere(etp, endpoints, dropped):
    """kube-proxy's rule: a Local policy with endpoints on other nodes only drops new flows from
    outside; a Service with no usable endpoint anywhere rejects them."""
    slice_text = SLICE.split("endpoints:")[0] + "endpoints:" + (
        "\n" + endpoints + "\n" if endpoints else " []\n")
    desired = state(manifest(f"  externalTrafficPolicy: {etp}") + slice_text)
    snap = apply_to(empty_snapshot(), compute_plan(desired, empty_snapshot()))
    scope = 1 if etp == "Local" else 0
    svc = snap[SERVICES][SvcKey(LB_IP, 80, 6, scope)]
    assert svc.count == 0
    assert bool(svc.flags & SVC_F_DROP_EMPTY) == dropped
    verdict = explain(snap, Flow("192.0.2.9", 5555, LB_IP, 80, "TCP"), device=Device(NODE)).verdict
    assert verdict == ("drop" if dropped else "reject")
