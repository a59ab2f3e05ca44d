"""desired_state(): Services + EndpointSlices -> frontends and backends, with kube-proxy's rules."""
import dataclasses
import random
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from ebpflb.manifests import parse_documents
from ebpflb.model import (
    Backend, DesiredState, Endpoint, EndpointPort, EndpointSlice, Frontend, Service, ServicePort,
    SkippedService, desired_state,
)

pytestmark = pytest.mark.unit


def svc(name: str = "web", ips: Sequence[str] = ("10.96.0.10",), ports: Sequence[ServicePort] = (),
        type: str = "ClusterIP", namespace: str = "demo") -> Service:
    ports = tuple(ports) or (ServicePort("http", "TCP", 80, "http"),)
    return Service(namespace, name, type, tuple(ips), ports)


def ep(*addresses: str, ready: bool = True, target: Optional[str] = None) -> Endpoint:
    return Endpoint(addresses, ready=ready, serving=ready, terminating=False, node_name="node-0",
                    target=target)


def slc(name: str, endpoints: Sequence[Endpoint], ports: Sequence[EndpointPort] = (),
        service: str = "web", namespace: str = "demo", address_type: str = "IPv4") -> EndpointSlice:
    ports = tuple(ports) or (EndpointPort("http", 8080, "TCP"),)
    return EndpointSlice(namespace, name, service, address_type, ports, tuple(endpoints))


def flat(state: DesiredState) -> Dict[str, List[str]]:
    """Frontends as "vip:port/proto" -> ["ip:port", ...] in the order desired_state produced."""
    return {str(fe): [str(b) for b in backends] for fe, backends in state.frontends.items()}


def reasons(state: DesiredState) -> List[Tuple[str, str]]:
    return [(s.ref, s.reason) for s in state.skipped]


CASES = [
    pytest.param(
        [svc(ports=[ServicePort("http", "TCP", 80, "http")])],
        [slc("web-a", [ep("10.244.0.11")],
             ports=[EndpointPort("metrics", 9090, "TCP"), EndpointPort("http", 8080, "TCP")])],
        {"10.96.0.10:80/TCP": ["10.244.0.11:8080"]}, [],
        id="named-targetport-resolved-through-slice-port-name",
    ),
    pytest.param(
        [svc(ports=[ServicePort("", "TCP", 80, 8080)])],
        [slc("web-a", [ep("10.244.0.11")], ports=[EndpointPort("", 8080, "TCP")])],
        {"10.96.0.10:80/TCP": ["10.244.0.11:8080"]}, [],
        id="numeric-targetport-unnamed-port",
    ),
    pytest.param(
        [svc(ports=[ServicePort("http", "TCP", 80, "http")])],
        [slc("web-a", [ep("10.244.0.11")], ports=[EndpointPort("grpc", 8080, "TCP")])],
        {"10.96.0.10:80/TCP": []}, [],
        id="slice-without-matching-port-name-contributes-nothing",
    ),
    pytest.param(
        [svc(name="dns", ports=[ServicePort("dns", "UDP", 53, 53), ServicePort("dns-tcp", "TCP", 53, 53)])],
        [slc("dns-a", [ep("10.244.0.5")], service="dns", ports=[EndpointPort("dns", 53, "UDP")])],
        {"10.96.0.10:53/TCP": [], "10.96.0.10:53/UDP": ["10.244.0.5:53"]}, [],
        id="same-port-number-tcp-and-udp-matched-by-name-and-protocol",
    ),
    pytest.param(
        [svc(ports=[ServicePort("http", "TCP", 80, "http")])],
        [slc("web-a", [ep("10.244.0.11")], ports=[EndpointPort("http", 8080, "UDP")])],
        {"10.96.0.10:80/TCP": []}, [],
        id="slice-port-with-other-protocol-not-used",
    ),
    pytest.param(
        [svc()],
        [slc("web-a", [ep("10.244.0.11"), ep("10.244.0.12", ready=False),
                       Endpoint(("10.244.0.13",), ready=False, serving=True, terminating=True)])],
        {"10.96.0.10:80/TCP": ["10.244.0.11:8080"]}, [],
        id="not-ready-and-terminating-endpoints-excluded",
    ),
    pytest.param(
        [svc()],
        [slc("web-b", [ep("10.244.0.9"), ep("10.244.0.100"), ep("10.244.0.2")]),
         slc("web-a", [ep("10.244.0.10"), ep("10.244.0.9")])],
        {"10.96.0.10:80/TCP": ["10.244.0.2:8080", "10.244.0.9:8080", "10.244.0.10:8080",
                               "10.244.0.100:8080"]}, [],
        id="dedupe-across-slices-and-numeric-sort",
    ),
    pytest.param(
        [svc()],
        [slc("web-a", [ep("10.244.0.12", "10.244.0.11")])],
        {"10.96.0.10:80/TCP": ["10.244.0.11:8080", "10.244.0.12:8080"]}, [],
        id="every-address-of-an-endpoint-is-a-backend",
    ),
    pytest.param(
        [svc(ips=("10.96.0.10", "10.96.0.11"))],
        [slc("web-a", [ep("10.244.0.11")])],
        {"10.96.0.10:80/TCP": ["10.244.0.11:8080"], "10.96.0.11:80/TCP": ["10.244.0.11:8080"]}, [],
        id="one-frontend-per-cluster-ip",
    ),
    pytest.param(
        [svc(ips=("10.96.0.10", "fd00::10"))],
        [slc("web-a", [ep("10.244.0.11")]), slc("web-v6", [ep("fd00:244::11")], address_type="IPv6")],
        {"10.96.0.10:80/TCP": ["10.244.0.11:8080"], "[fd00::10]:80/TCP": ["[fd00:244::11]:8080"]},
        [],
        id="dual-stack-each-family-its-own-backends",
    ),
    pytest.param(
        [svc(ips=("fd00::1",))],
        [slc("web-a", [ep("10.244.0.11")]), slc("web-v6", [ep("fd00:244::11")], address_type="IPv6")],
        {"[fd00::1]:80/TCP": ["[fd00:244::11]:8080"]}, [],
        id="ipv6-only-ignores-ipv4-slices",
    ),
    pytest.param(
        [svc(ips=("10.96.0.10",))],
        [slc("web-v6", [ep("fd00:244::11")], address_type="IPv6"),
         slc("web-bad", [ep("10.244.0.12")], address_type="IPv6")],
        {"10.96.0.10:80/TCP": []}, [],
        id="ipv4-only-takes-no-ipv6-or-mistyped-backends",
    ),
    pytest.param(
        [dataclasses.replace(svc(ips=("10.96.0.10",), type="LoadBalancer"),
                             lb_ingress_ips=("203.0.113.9", "2001:db8::9"))],
        [slc("web-a", [ep("10.244.0.11")])],
        {"10.96.0.10:80/TCP": ["10.244.0.11:8080"], "203.0.113.9:80/TCP": ["10.244.0.11:8080"]},
        [("demo/web", "load balancer IP 2001:db8::9 not programmed: the Service has no IPv6 "
                      "cluster IP")],
        id="load-balancer-ip-of-a-family-the-service-lacks",
    ),
    pytest.param(
        [svc(ips=("None",))], [slc("web-a", [ep("10.244.0.11")])], {},
        [("demo/web", "headless (clusterIP: None)")],
        id="headless-skipped",
    ),
    pytest.param(
        [svc(ips=(), type="ExternalName")], [], {}, [("demo/web", "type ExternalName")],
        id="externalname-skipped",
    ),
    pytest.param(
        [svc(ips=(), type="ClusterIP")], [], {}, [("demo/web", "no cluster IP allocated")],
        id="no-cluster-ip-yet-skipped",
    ),
    pytest.param(
        [svc(ports=[ServicePort("x", "SCTP", 9000, 9000), ServicePort("http", "TCP", 80, "http")])],
        [slc("web-a", [ep("10.244.0.11")])],
        {"10.96.0.10:80/TCP": ["10.244.0.11:8080"]},
        [("demo/web", "protocol SCTP on port 'x' not supported")],
        id="sctp-port-skipped-rest-programmed",
    ),
    pytest.param(
        [svc(type="NodePort"), svc(name="lb", ips=("10.96.0.30",), type="LoadBalancer")], [],
        {"10.96.0.10:80/TCP": [], "10.96.0.30:80/TCP": []}, [],
        id="nodeport-and-loadbalancer-get-their-cluster-ip",
    ),
    pytest.param(
        [svc()], [], {"10.96.0.10:80/TCP": []}, [],
        id="frontend-without-endpoints-has-empty-backends",
    ),
    pytest.param(
        [svc()],
        [slc("web-a", [ep("10.244.0.11")], namespace="other"),
         slc("api-a", [ep("10.244.0.12")], service="api"),
         slc("web-c", [ep("10.244.0.13")])],
        {"10.96.0.10:80/TCP": ["10.244.0.13:8080"]}, [],
        id="slices-of-other-namespace-or-service-ignored",
    ),
    pytest.param(
        [svc(name="a"), svc(name="b")], [], {"10.96.0.10:80/TCP": []},
        [("demo/b", "frontend 10.96.0.10:80/TCP already used by demo/a")],
        id="frontend-clash-first-service-by-name-wins",
    ),
]


@pytest.mark.parametrize("services, slices, frontends, skipped", CASES)
def test_desired_state(services: List[Service], slices: List[EndpointSlice],
                       frontends: Dict[str, List[str]], skipped: List[Tuple[str, str]]) -> None:
    state = desired_state(services, slices)
    assert flat(state) == frontends
    assert reasons(state) == skipped


def test_frontend_carries_service_and_port_name_and_backend_its_target() -> None:
    state = desired_state([svc()], [slc("web-a", [ep("10.244.0.11", target="Pod/web-1")])])
    [(fe, backends)] = state.frontends.items()
    assert (fe.service, fe.port_name, fe.namespace) == ("demo/web", "http", "demo")
    assert backends == (Backend("10.244.0.11", 8080, "Pod/web-1"),)
    assert backends[0].target == "Pod/web-1"


def test_frontend_identity_is_vip_port_protocol_only() -> None:
    a = Frontend("10.96.0.10", 80, "TCP", "demo/web", "http")
    b = Frontend("10.96.0.10", 80, "TCP", "other/x", "")
    assert a == b and hash(a) == hash(b)
    assert a != Frontend("10.96.0.10", 80, "UDP", "demo/web", "http")
    assert a.key == ("10.96.0.10", 80, "TCP", 0)
    assert str(a) == "10.96.0.10:80/TCP"
    # The record for traffic from outside (externalTrafficPolicy Local) is a frontend of its own.
    outside = Frontend("10.96.0.10", 80, "TCP", scope=1)
    assert outside != a and str(outside) == "10.96.0.10:80/TCP@external"
    assert sorted([Frontend("10.96.0.10", 443, "TCP"), a]) == [a, Frontend("10.96.0.10", 443, "TCP")]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.port = 81  # type: ignore[misc]


def test_backend_identity_ignores_target() -> None:
    assert Backend("10.244.0.11", 8080, "Pod/web-1") == Backend("10.244.0.11", 8080, None)
    assert Backend("10.244.0.11", 8080) != Backend("10.244.0.11", 8081)


def test_service_ref() -> None:
    assert svc().ref == "demo/web"


def test_result_does_not_depend_on_input_order() -> None:
    services = [svc(), svc(name="api", ips=("10.96.0.40",)), svc(name="a"), svc(ips=("None",), name="h")]
    slices = [slc(f"web-{i}", [ep(f"10.244.{i}.{j}") for j in (1, 20, 3)]) for i in range(4)]
    expected = desired_state(services, slices)
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(services)
        rng.shuffle(slices)
        again = desired_state(services, slices)
        assert list(again.frontends.items()) == list(expected.frontends.items())
        assert again.skipped == expected.skipped
    assert SkippedService("demo/web", "frontend 10.96.0.10:80/TCP already used by demo/a") in expected.skipped


def test_nil_ready_condition_from_manifest_counts_as_ready() -> None:
    # conditions omitted entirely, as some hand-written or third-party slices do
    manifests = parse_documents(
        """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.244.0.11]
- addresses: [10.244.0.12]
  conditions: {}
- addresses: [10.244.0.13]
  conditions: {ready: false}
""",
        "inline.yaml",
    )
    state = desired_state(manifests.services, manifests.slices)
    assert flat(state) == {"10.96.0.10:80/TCP": ["10.244.0.11:8080", "10.244.0.12:8080"]}


def test_ipv6_addresses_are_programmed_in_the_form_the_kernel_reads_back():
    """A hand-written manifest may spell an IPv6 address in capitals or uncompressed. The maps
    give addresses back as inet_ntop writes them, so anything else would never match on a
    read-back: a full sync would delete the frontend it had just written under the other
    spelling (the kernel key is the same). The converter canonicalizes every address."""
    text = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  type: LoadBalancer
  clusterIP: "FD00:0096:0:0::000A"
  clusterIPs: ["FD00:0096:0:0::000A"]
  ipFamilies: [IPv6]
  externalIPs: ["2001:DB8::0:7"]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
status: {loadBalancer: {ingress: [{ip: "2001:DB8:0::9"}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-6, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["FD00:10:244:0:0:0:0:B"], conditions: {ready: true}}
"""
    m = parse_documents(text, "six.yaml")
    state = desired_state(m.services, m.slices, external_ip_allow=("2001:db8::/32",))
    assert sorted(str(fe) for fe in state.frontends) == [
        "[2001:db8::7]:80/TCP", "[2001:db8::9]:80/TCP", "[fd00:96::a]:80/TCP"]
    assert {str(b) for bs in state.frontends.values() for b in bs} == {"[fd00:10:244::b]:8080"}
