"""The manifest parser: kubectl output and hand-written YAML in, validated model objects or
field-precise errors out (all of them, never a partial result)."""
import json
from pathlib import Path
from string import Template
from typing import Optional

import pytest

from ebpflb.manifests import ManifestError, ManifestErrors, Manifests, load_manifests, parse_documents
from ebpflb.model import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "manifests"

# Line numbers in the error table below refer to these templates.
SERVICE = Template("""\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  type: $type
  clusterIP: $ip
  ports:
  - name: http
    port: $port
    protocol: $proto
    targetPort: $target
""")
SERVICE_DEFAULTS = dict(type="ClusterIP", ip="10.96.0.10", port="80", proto="TCP", target="http")

SLICE = Template("""\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: demo
  labels:
    kubernetes.io/service-name: web
addressType: $atype
ports:
- name: http
  port: $port
  protocol: $proto
endpoints:
- addresses:
  - $addr
  conditions:
    ready: $ready
""")
SLICE_DEFAULTS = dict(atype="IPv4", port="8080", proto="TCP", addr="10.244.0.11", ready="true")


def service(**kw: str) -> str:
    return SERVICE.substitute({**SERVICE_DEFAULTS, **kw})


def endpointslice(**kw: str) -> str:
    return SLICE.substitute({**SLICE_DEFAULTS, **kw})


def errors_of(text: str) -> list:
    with pytest.raises(ManifestErrors) as exc:
        parse_documents(text, "bad.yaml")
    return exc.value.errors


def test_templates_are_valid() -> None:
    # The error table only means something if the unmodified templates parse.
    m = parse_documents(service() + "---\n" + endpointslice(), "ok.yaml")
    assert [s.ref for s in m.services] == ["demo/web"]
    assert [s.name for s in m.slices] == ["web-abc"]


# --- valid input -------------------------------------------------------------------------------

def test_demo_manifests() -> None:
    m = load_manifests(REPO / "examples" / "demo.yaml")
    assert m.ignored == ()
    assert m.services == (
        Service("demo", "web", "ClusterIP", ("10.96.0.10",), (ServicePort("http", "TCP", 80, "http"),),
                labels=(("app", "web"),)),
        Service("demo", "echo", "ClusterIP", ("10.96.0.20",), (ServicePort("udp-echo", "UDP", 53, 9053),),
                labels=(("app", "echo"),)),
    )

    def endpoints() -> tuple:
        ready = tuple(Endpoint((f"10.244.0.1{i}",), True, True, False, "node-0", f"Pod/web-{i}")
                      for i in (1, 2, 3))
        return ready + (Endpoint(("10.244.0.14",), False, False, False, "node-0", "Pod/web-4"),)

    assert m.slices == (
        EndpointSlice("demo", "web-1a2b3", "web", "IPv4", (EndpointPort("http", 8080, "TCP"),), endpoints()),
        EndpointSlice("demo", "echo-x7k2p", "echo", "IPv4", (EndpointPort("udp-echo", 9053, "UDP"),),
                      endpoints()),
    )


def test_kubectl_list_output_with_status_and_managed_fields() -> None:
    m = load_manifests(FIXTURES / "kubectl-list.yaml")
    assert [s.ref for s in m.services] == ["default/kubernetes", "kube-system/kube-dns", "shop/api"]
    dns = m.services[1]
    assert dns.ports == (ServicePort("dns", "UDP", 53, 53), ServicePort("dns-tcp", "TCP", 53, 53),
                         ServicePort("metrics", "TCP", 9153, 9153))
    assert dict(dns.annotations) == {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}
    api = m.services[2]
    assert (api.type, api.cluster_ips) == ("NodePort", ("10.96.112.7", "fd00:10:96::5a1"))
    assert api.ports == (ServicePort("", "TCP", 8080, "api"),)

    kube_dns = m.slices[1]
    assert (kube_dns.namespace, kube_dns.name, kube_dns.service_name) == ("kube-system", "kube-dns-7kcqz", "kube-dns")
    assert kube_dns.endpoints[1] == Endpoint(("10.244.0.4",), ready=False, serving=True, terminating=True,
                                             node_name="kind-control-plane", target="Pod/coredns-5d78c9869d-q7m4t")
    # `endpoints: null` and `ports: null` are what kubectl prints for a service with no pods yet
    assert (m.slices[2].ports, m.slices[2].endpoints) == ((), ())
    assert m.ignored == ("ConfigMap kube-system/coredns (kind not used by ebpflb)",)


def test_multi_document_with_empty_documents_and_defaults() -> None:
    text = """\
# hand-written
---
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: 10.96.0.10
  ports:
  - port: 80
---
# only a comment
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: demo
...
"""
    m = parse_documents(text, "multi.yaml")
    # namespace defaults to "default", protocol to TCP, targetPort to port, name to ""
    assert m.services == (Service("default", "web", "ClusterIP", ("10.96.0.10",),
                                  (ServicePort("", "TCP", 80, 80),)),)
    assert m.ignored == ("ConfigMap default/demo (kind not used by ebpflb)",)


def test_empty_text_is_an_empty_result() -> None:
    assert parse_documents("", "empty.yaml") == Manifests((), (), ())


def test_api_typed_list_items_without_kind() -> None:
    # What the API returns for GET /api/v1/services: items carry neither kind nor apiVersion.
    text = json.dumps({"apiVersion": "v1", "kind": "ServiceList", "metadata": {"resourceVersion": "9"},
                       "items": [{"metadata": {"name": "web", "namespace": "demo"},
                                  "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}}]})
    m = parse_documents(text, "list.json")
    assert [s.ref for s in m.services] == ["demo/web"]


def test_services_without_ports_allowed_when_headless_or_externalname() -> None:
    text = """\
apiVersion: v1
kind: Service
metadata: {name: db, namespace: demo}
spec: {clusterIP: None}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: demo}
spec: {type: ExternalName, externalName: example.com}
"""
    m = parse_documents(text, "ok.yaml")
    assert [(s.name, s.type, s.cluster_ips, s.ports) for s in m.services] == [
        ("db", "ClusterIP", ("None",), ()), ("ext", "ExternalName", (), ())]


def test_other_api_group_service_is_ignored() -> None:
    text = """\
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: hello, namespace: demo}
spec: {template: {spec: {containers: [{image: hello}]}}}
"""
    m = parse_documents(text, "knative.yaml")
    assert m.services == ()
    assert m.ignored == ("Service demo/hello (apiVersion serving.knative.dev/v1 not used by ebpflb)",)


@pytest.mark.parametrize("conditions, expected", [
    ("{}", (True, True, False)),
    ("{ready: true}", (True, True, False)),
    ("{ready: false}", (False, False, False)),
    ("{serving: false}", (True, False, False)),
    ("{ready: false, serving: true, terminating: true}", (False, True, True)),
    ("null", (True, True, False)),
])
def test_endpoint_condition_defaults(conditions: str, expected: tuple) -> None:
    text = endpointslice().replace("  conditions:\n    ready: true\n", f"  conditions: {conditions}\n")
    assert f"conditions: {conditions}" in text
    [e] = parse_documents(text, "c.yaml").slices[0].endpoints
    assert (e.ready, e.serving, e.terminating) == expected


def test_directory_sorted_non_recursive_yaml_yml_json_only(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text(service(ip="10.96.0.20").replace("name: web", "name: b"))
    (tmp_path / "a.yaml").write_text(service().replace("name: web", "name: a"))
    (tmp_path / "c.json").write_text(json.dumps({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "c", "namespace": "demo"},
        "spec": {"clusterIP": "10.96.0.30", "ports": [{"port": 80}]}}))
    # None of these may be read: each would be an error if it were.
    (tmp_path / "notes.txt").write_text("not: [yaml")
    (tmp_path / ".a.yaml.swp").write_text("not: [yaml")
    (tmp_path / ".hidden.yaml").write_text("not: [yaml")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.yaml").write_text("not: [yaml")
    m = load_manifests(tmp_path)
    assert [s.name for s in m.services] == ["a", "b", "c"]


def test_directory_errors_from_every_file_are_collected(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(service(port="70000"))
    (tmp_path / "b.yaml").write_text(endpointslice(addr="10.0.0.300"))
    (tmp_path / "c.yaml").write_text(service().replace("name: web", "name: fine").replace("10.96.0.10", "10.96.0.99"))
    with pytest.raises(ManifestErrors) as exc:
        load_manifests(tmp_path)
    assert [(Path(e.source).name, e.field, e.line) for e in exc.value.errors] == [
        ("a.yaml", "spec.ports[0].port", 11), ("b.yaml", "endpoints[0].addresses[0]", 15)]


def test_duplicate_across_files_names_the_first_location(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(service())
    (tmp_path / "b.yaml").write_text(service())
    with pytest.raises(ManifestErrors) as exc:
        load_manifests(tmp_path)
    [err] = exc.value.errors
    assert (Path(err.source).name, err.obj, err.line) == ("b.yaml", "Service demo/web", 1)
    assert err.message == f"duplicate object: already defined at {tmp_path / 'a.yaml'}:1"


NAMESPACE_DEMO = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: {team: %s}}\n"
GATEWAY_CLASS = ("apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\n"
                 "metadata: {name: ebpflb}\nspec: {controllerName: ebpflb.io/gateway-controller}\n")


def test_identical_cluster_scoped_objects_in_two_files_are_one(tmp_path: Path) -> None:
    """A Namespace or a GatewayClass is carried by many applications' manifests: the same object
    twice is one object; two different ones are still a duplicate, naming the first."""
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text(NAMESPACE_DEMO % "shop" + "---\n" + GATEWAY_CLASS)
    (tmp_path / "c.yaml").write_text(service())
    m = load_manifests(tmp_path)
    assert [s.name for s in m.services] == ["web"]
    assert sorted(kind for kind, _, _ in m.gateway) == ["GatewayClass", "Namespace"]
    (tmp_path / "b.yaml").write_text(NAMESPACE_DEMO % "other")
    with pytest.raises(ManifestErrors) as exc:
        load_manifests(tmp_path)
    [err] = exc.value.errors
    assert (Path(err.source).name, err.obj) == ("b.yaml", "Namespace demo")
    assert err.message == f"duplicate object: already defined at {tmp_path / 'a.yaml'}:1"


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.yaml", "no such file or directory"),
    (lambda p: p, "directory holds no *.yaml, *.yml or *.json file"),
])
def test_nothing_to_load_is_an_error(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(ManifestErrors) as exc:
        load_manifests(make(tmp_path))
    assert [e.message for e in exc.value.errors] == [message]


# --- errors ------------------------------------------------------------------------------------

TWO_PORTS = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80}
  - {name: $name, port: $port, protocol: $proto}
"""


def two_ports(name: str = "https", port: str = "443", proto: str = "TCP") -> str:
    return Template(TWO_PORTS).substitute(name=name, port=port, proto=proto)


def svc_spec(spec: str, name: str = "web", extra_meta: str = "") -> str:
    return f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo{extra_meta}}}\nspec: {spec}\n"


SVC = "Service demo/web"
SL = "EndpointSlice demo/web-abc"
BAD_IP = "is not a valid IP address"
BAD_PORT = "is not a valid port"
BAD_NAME = "is not a valid port name (IANA_SVC_NAME"
NOT_BACKEND = ": not allowed as a backend"

ERROR_CASES = [
    # (text, object, field path, message fragment, line)
    pytest.param(service(ip="10.96.0.300"), SVC, "spec.clusterIP", f'"10.96.0.300" {BAD_IP}', 8, id="ip-octet"),
    pytest.param(service(ip="10.96.0.010"), SVC, "spec.clusterIP", f'"10.96.0.010" {BAD_IP}', 8, id="ip-leading-zero"),
    pytest.param(service(ip="fd00::zz"), SVC, "spec.clusterIP", f'"fd00::zz" {BAD_IP}', 8, id="ipv6-bad"),
    pytest.param(svc_spec("{clusterIP: 10.96.0.10, clusterIPs: [10.96.0.11], ports: [{port: 80}]}"),
                 SVC, "spec.clusterIPs[0]", '"10.96.0.11" disagrees with spec.clusterIP "10.96.0.10"', 4,
                 id="clusterips-disagree"),
    pytest.param(svc_spec("{clusterIPs: [10.96.0.10, 10.96.0.11], ports: [{port: 80}]}"),
                 SVC, "spec.clusterIPs[1]", "same IP family", 4, id="clusterips-same-family"),
    pytest.param(svc_spec("{clusterIPs: [10.96.0.10, bogus], ports: [{port: 80}]}"),
                 SVC, "spec.clusterIPs[1]", f'"bogus" {BAD_IP}', 4, id="clusterips-bad-entry"),
    pytest.param(service(type="Foo"), SVC, "spec.type",
                 '"Foo" is not one of ClusterIP, NodePort, LoadBalancer, ExternalName', 7, id="type-unknown"),
    pytest.param(service(port="70000"), SVC, "spec.ports[0].port", "70000 is not a valid port (1-65535)", 11,
                 id="port-too-big"),
    pytest.param(service(port="0"), SVC, "spec.ports[0].port", "0 is not a valid port (1-65535)", 11, id="port-zero"),
    pytest.param(service(port="true"), SVC, "spec.ports[0].port",
                 f"true {BAD_PORT} (an integer 1-65535, not a boolean)", 11, id="port-bool"),
    pytest.param(service(port='"80"'), SVC, "spec.ports[0].port", f'"80" {BAD_PORT} (an integer 1-65535, not a string)',
                 11, id="port-string"),
    pytest.param(service(port="80.5"), SVC, "spec.ports[0].port", f"80.5 {BAD_PORT}", 11, id="port-float"),
    pytest.param(service(proto="tcp"), SVC, "spec.ports[0].protocol",
                 '"tcp" is not a valid protocol (TCP, UDP or SCTP)', 12, id="protocol-lowercase"),
    pytest.param(service(proto="ICMP"), SVC, "spec.ports[0].protocol", '"ICMP" is not a valid protocol', 12,
                 id="protocol-unknown"),
    pytest.param(service(target="Http"), SVC, "spec.ports[0].targetPort", f'"Http" {BAD_NAME}', 13,
                 id="targetport-uppercase"),
    pytest.param(service(target="http--alt"), SVC, "spec.ports[0].targetPort", f'"http--alt" {BAD_NAME}', 13,
                 id="targetport-double-dash"),
    pytest.param(service(target="-http"), SVC, "spec.ports[0].targetPort", f'"-http" {BAD_NAME}', 13,
                 id="targetport-leading-dash"),
    pytest.param(service(target="http-"), SVC, "spec.ports[0].targetPort", f'"http-" {BAD_NAME}', 13,
                 id="targetport-trailing-dash"),
    pytest.param(service(target='"8080"'), SVC, "spec.ports[0].targetPort", f'"8080" {BAD_NAME}', 13,
                 id="targetport-digits-string-has-no-letter"),
    pytest.param(service(target="abcdefghijklmnop"), SVC, "spec.ports[0].targetPort",
                 f'"abcdefghijklmnop" {BAD_NAME}', 13, id="targetport-16-chars"),
    pytest.param(service(target="65536"), SVC, "spec.ports[0].targetPort", "65536 is not a valid port (1-65535)", 13,
                 id="targetport-too-big"),
    pytest.param(service(target="false"), SVC, "spec.ports[0].targetPort", f"false {BAD_PORT}", 13,
                 id="targetport-bool"),
    pytest.param(svc_spec("{clusterIP: 10.96.0.10}"), SVC, "spec.ports", "missing or empty", 4, id="ports-missing"),
    pytest.param(svc_spec("{clusterIP: 10.96.0.10, ports: []}"), SVC, "spec.ports", "missing or empty", 4,
                 id="ports-empty"),
    pytest.param(svc_spec("{clusterIP: 10.96.0.10, ports: {port: 80}}"), SVC, "spec.ports",
                 "must be a list, not a mapping", 4, id="ports-not-a-list"),
    pytest.param(two_ports(name="http", port="81"), SVC, "spec.ports[1].name",
                 'duplicate port name "http" (also spec.ports[0])', 8, id="port-name-duplicate"),
    pytest.param(two_ports(name='""'), SVC, "spec.ports[1].name",
                 "required when a service has more than one port", 8, id="port-name-required"),
    pytest.param(two_ports(name="Bad_Name"), SVC, "spec.ports[1].name", '"Bad_Name" is not a valid port name', 8,
                 id="port-name-invalid"),
    pytest.param(two_ports(port="80"), SVC, "spec.ports[1]", "duplicate port 80/TCP (also spec.ports[0])", 8,
                 id="port-protocol-duplicate"),
    # a missing field is reported at the line of its nearest parent: here the object itself
    pytest.param("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\n", SVC, "spec",
                 "missing", 1, id="spec-missing"),
    pytest.param(svc_spec("[1, 2]"), SVC, "spec", "must be a mapping, not a list", 4, id="spec-not-mapping"),
    pytest.param("apiVersion: v1\nkind: Service\nmetadata: {namespace: demo}\nspec: {}\n", "Service (document 1)",
                 "metadata.name", "missing", 3, id="name-missing"),
    pytest.param("apiVersion: v1\nkind: Service\nspec: {}\n", "Service (document 1)", "metadata.name", "missing", 1,
                 id="metadata-missing"),
    pytest.param("apiVersion: v1\nmetadata: {name: web}\n", "document 1", "kind", "missing", 1, id="kind-missing"),
    pytest.param(svc_spec("{clusterIP: 10.96.0.10, ports: [{port: 80}]}", name="Web_1"), "Service demo/Web_1",
                 "metadata.name", '"Web_1" is not a valid service name', 3, id="name-invalid"),
    pytest.param(svc_spec("{clusterIP: 10.96.0.10, ports: [{port: 80}]}", name="1web"), "Service demo/1web",
                 "metadata.name", '"1web" is not a valid service name (DNS-1035 label)', 3,
                 id="service-name-starts-with-digit"),
    pytest.param(service().replace("namespace: demo", "namespace: Demo"), "Service Demo/web", "metadata.namespace",
                 '"Demo" is not a valid namespace', 5, id="namespace-invalid"),
    pytest.param(svc_spec("{clusterIP: 10.96.0.10, ports: [{port: 80}]}", extra_meta=", labels: {app: 1}"), SVC,
                 "metadata.labels.app", "1 must be a string, not an integer", 3, id="label-value-not-string"),
    pytest.param(service().replace("apiVersion: v1\n", ""), SVC, "apiVersion", "missing", 1,
                 id="apiversion-missing"),
    # EndpointSlice
    pytest.param(endpointslice().replace("service-name: web", "service-name: Web"), SL,
                 "metadata.labels[kubernetes.io/service-name]", '"Web" is not a valid service name', 7,
                 id="service-name-label-invalid"),
    pytest.param(endpointslice(atype="IPv5"), SL, "addressType", '"IPv5" is not one of IPv4, IPv6, FQDN', 8,
                 id="addresstype-unknown"),
    pytest.param(endpointslice().replace("addressType: IPv4\n", ""), SL, "addressType", "missing", 1,
                 id="addresstype-missing"),
    pytest.param(endpointslice(addr="10.0.0.256"), SL, "endpoints[0].addresses[0]",
                 '"10.0.0.256" is not a valid IPv4 address', 15, id="address-bad-ipv4"),
    pytest.param(endpointslice(addr="fd00::1"), SL, "endpoints[0].addresses[0]",
                 '"fd00::1" is not a valid IPv4 address', 15, id="address-ipv6-in-ipv4-slice"),
    pytest.param(endpointslice(atype="IPv6", addr="10.0.0.1"), SL, "endpoints[0].addresses[0]",
                 '"10.0.0.1" is not a valid IPv6 address', 15, id="address-ipv4-in-ipv6-slice"),
    pytest.param(endpointslice(atype="FQDN", addr="Not_A_Host"), SL, "endpoints[0].addresses[0]",
                 '"Not_A_Host" is not a valid FQDN', 15, id="address-bad-fqdn"),
    # addresses that must never be backends (CVE-2021-25740; see ebpflb.backend_rules)
    pytest.param(endpointslice(addr="127.0.0.1"), SL, "endpoints[0].addresses[0]",
                 f"127.0.0.1 is a loopback address{NOT_BACKEND}", 15, id="backend-loopback"),
    pytest.param(endpointslice(addr="127.8.9.10"), SL, "endpoints[0].addresses[0]",
                 f"127.8.9.10 is a loopback address{NOT_BACKEND}", 15, id="backend-loopback-not-127.0.0.1"),
    pytest.param(endpointslice(addr="169.254.169.254"), SL, "endpoints[0].addresses[0]",
                 f"169.254.169.254 is link-local (cloud metadata service){NOT_BACKEND}", 15,
                 id="backend-cloud-metadata"),
    pytest.param(endpointslice(addr="169.254.1.1"), SL, "endpoints[0].addresses[0]",
                 f"169.254.1.1 is link-local{NOT_BACKEND}", 15, id="backend-link-local"),
    pytest.param(endpointslice(addr="0.0.0.0"), SL, "endpoints[0].addresses[0]",
                 f"0.0.0.0 is the unspecified address{NOT_BACKEND}", 15, id="backend-unspecified"),
    pytest.param(endpointslice(addr="0.1.2.3"), SL, "endpoints[0].addresses[0]",
                 f"0.1.2.3 is in 0.0.0.0/8 (this network, never a destination){NOT_BACKEND}", 15,
                 id="backend-this-network"),
    pytest.param(endpointslice(addr="224.0.0.251"), SL, "endpoints[0].addresses[0]",
                 f"224.0.0.251 is a multicast address{NOT_BACKEND}", 15, id="backend-multicast"),
    pytest.param(endpointslice(addr="239.255.255.250"), SL, "endpoints[0].addresses[0]",
                 f"239.255.255.250 is a multicast address{NOT_BACKEND}", 15, id="backend-multicast-top"),
    pytest.param(endpointslice(addr="255.255.255.255"), SL, "endpoints[0].addresses[0]",
                 f"255.255.255.255 is the broadcast address{NOT_BACKEND}", 15, id="backend-broadcast"),
    pytest.param(endpointslice(addr="10.96.0.10"), SL, "endpoints[0].addresses[0]",
                 f"10.96.0.10 is inside the Service range 10.96.0.0/12{NOT_BACKEND}", 15,
                 id="backend-cluster-ip"),
    pytest.param(endpointslice(addr="10.111.255.255"), SL, "endpoints[0].addresses[0]",
                 f"10.111.255.255 is inside the Service range 10.96.0.0/12{NOT_BACKEND}", 15,
                 id="backend-service-range-top"),
    pytest.param(endpointslice(ready="false", addr="127.0.0.1"), SL, "endpoints[0].addresses[0]",
                 f"127.0.0.1 is a loopback address{NOT_BACKEND}", 15, id="backend-loopback-not-ready-too"),
    pytest.param(endpointslice().replace("- addresses:\n  - 10.244.0.11\n", "- addresses: []\n"), SL,
                 "endpoints[0].addresses", "missing or empty", 14, id="addresses-empty"),
    pytest.param(endpointslice().replace("- addresses:\n  - 10.244.0.11\n  conditions", "- conditions"), SL,
                 "endpoints[0].addresses", "missing or empty", 14, id="addresses-missing"),
    pytest.param(endpointslice(ready='"true"'), SL, "endpoints[0].conditions.ready", '"true" is not a boolean', 17,
                 id="ready-string"),
    pytest.param(endpointslice(ready="1"), SL, "endpoints[0].conditions.ready", "1 is not a boolean", 17,
                 id="ready-int"),
    pytest.param(endpointslice().replace("  port: 8080\n", ""), SL, "ports[0].port", "missing", 10,
                 id="slice-port-missing"),
    pytest.param(endpointslice(port="99999"), SL, "ports[0].port", "99999 is not a valid port (1-65535)", 11,
                 id="slice-port-too-big"),
    pytest.param(endpointslice(proto="HTTP"), SL, "ports[0].protocol", '"HTTP" is not a valid protocol', 12,
                 id="slice-protocol-unknown"),
    pytest.param(endpointslice().replace("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1"), SL, "apiVersion",
                 '"discovery.k8s.io/v1beta1" is not supported (use discovery.k8s.io/v1)', 1, id="slice-v1beta1"),
    # documents and cross-object checks
    pytest.param("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n   namespace: demo\n", None, None,
                 "invalid YAML: mapping values are not allowed", 5, id="yaml-bad-indent"),
    pytest.param("kind: Service\nmetadata:\n\tname: web\n", None, None, "invalid YAML: found character", 3,
                 id="yaml-tab"),
    # hostile YAML: each of these once escaped as a bare ValueError, KeyError, AttributeError or
    # RecursionError, hung (aliases) or crashed the process (nesting)
    pytest.param(service(port="2001-13-45"), None, None,
                 'invalid YAML: cannot read "2001-13-45" as timestamp: "month must be in 1..12"', 11,
                 id="yaml-impossible-date"),
    pytest.param(service(port="1" * 5000), None, None, "as int: \"Exceeds the limit (4300 digits)", 11,
                 id="yaml-5000-digit-int"),
    pytest.param(service(port="!!int abc"), None, None, 'invalid YAML: cannot read "abc" as int', 11,
                 id="yaml-tagged-int"),
    pytest.param(service(port="!!bool maybe"), None, None, 'invalid YAML: cannot read "maybe" as bool', 11,
                 id="yaml-tagged-bool"),
    pytest.param(service(port="!!timestamp soon"), None, None, 'invalid YAML: cannot read "soon" as timestamp', 11,
                 id="yaml-tagged-timestamp"),
    pytest.param(service(port="&p [*p]"), None, None, "invalid YAML: recursive alias", 11, id="yaml-recursive-alias"),
    pytest.param("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)), None, None,
        "invalid YAML: aliases expand 31 written nodes to 12345679021 (at most 100000)", 1, id="yaml-billion-laughs"),
    pytest.param(service(port="[" * 50000 + "]" * 50000), None, None,
                 "invalid YAML: nested deeper than 1000 levels", 11, id="yaml-nested-50000-deep"),
    pytest.param("- " * 30000 + "x\n", None, None, "invalid YAML: nested deeper than 1000 levels", 1,
                 id="yaml-compact-sequences-30000-deep"),
    pytest.param(service(port="[" * 990 + "80" + "]" * 990), SVC, "spec.ports[0].port",
                 "[[[[[[[[...]]]]]]]] is not a valid port (an integer 1-65535, not a list)", 11,
                 id="port-nested-990-deep"),
    # an explicit key (`? key`) may be longer than 1024 characters; str() of it would raise
    pytest.param(service().replace("  namespace: demo\n", "  namespace: demo\n  labels:\n    ? 0x%s\n    : 1\n"
                                   % ("f" * 5000)),
                 SVC, "metadata.labels[0x%s...]" % ("f" * 251), "1 must be a string, not an integer", 6,
                 id="label-key-5000-hex-digits"),  # line of labels: the key is spelled otherwise
    pytest.param(service(port="{2001-01-01: 80}"), SVC, "spec.ports[0].port",
                 '{"2001-01-01": 80} is not a valid port (an integer 1-65535, not a mapping)', 11,
                 id="port-mapping-with-date-key"),
    pytest.param(service(port="0x" + "f" * 5000), SVC, "spec.ports[0].port",
                 "0x" + "f" * 55 + "... is not a valid port (1-65535)", 11,
                 id="port-huge-hex-int"),
    pytest.param("- just\n- a list\n", "document 1", None, "not a mapping (a list)", 1, id="document-list"),
    pytest.param("---\n---\nhello\n", "document 2", None, "not a mapping (a string)", 3, id="document-scalar"),
    pytest.param("apiVersion: v1\nkind: List\nitems: {a: 1}\n", "List (document 1)", "items",
                 "must be a list, not a mapping", 3, id="list-items-not-a-list"),
    pytest.param("apiVersion: v1\nkind: List\nitems:\n- 42\n", "items[0] (document 1)", None,
                 "not a mapping (an integer)", 4, id="list-item-not-a-mapping"),
    pytest.param(service() + "---\n" + service(ip="10.96.0.11"), SVC, None,
                 "duplicate object: already defined at bad.yaml:1", 15, id="duplicate-service"),
    pytest.param(endpointslice() + "---\n" + endpointslice(), SL, None,
                 "duplicate object: already defined at bad.yaml:1", 19, id="duplicate-slice"),
]


@pytest.mark.parametrize("text, obj, field, fragment, line", ERROR_CASES)
def test_error_names_object_field_and_line(text: str, obj: Optional[str], field: Optional[str],
                                           fragment: str, line: int) -> None:
    errors = errors_of(text)
    assert len(errors) == 1, "\n".join(map(str, errors))
    [err] = errors
    assert (err.source, err.obj, err.field, err.line) == ("bad.yaml", obj, field, line)
    assert fragment in err.message
    assert str(err).startswith(f"bad.yaml:{line}: ")


def test_slice_without_service_label_is_ignored_not_refused() -> None:
    """Multi-cluster tools write EndpointSlices that belong to no Service here: not an error."""
    m = parse_documents(endpointslice().replace("  labels:\n    kubernetes.io/service-name: web\n", ""),
                        "mcs.yaml")
    assert m.slices == ()
    assert m.ignored == ("EndpointSlice demo/web-abc (no kubernetes.io/service-name label: "
                         "belongs to no Service)",)


def test_frontend_conflict_is_the_models_to_settle() -> None:
    """Two Services claiming one frontend both parse: the model gives it to the first by
    namespace/name and skips it for the other, naming the owner (ebpflb.model)."""
    from ebpflb.model import desired_state

    m = parse_documents(service() + "---\n" + service().replace("name: web", "name: web2"), "ok.yaml")
    assert [s.name for s in m.services] == ["web", "web2"]
    desired = desired_state(m.services, m.slices)
    assert [str(f) for f in desired.frontends] == ["10.96.0.10:80/TCP"]
    assert [(s.ref, s.reason) for s in desired.skipped] == [
        ("demo/web2", "frontend 10.96.0.10:80/TCP already used by demo/web")]


def test_frontend_conflict_needs_same_protocol() -> None:
    other = service().replace("name: web", "name: dns")
    m = parse_documents(service() + "---\n" + other.replace("protocol: TCP", "protocol: UDP"), "ok.yaml")
    assert [s.name for s in m.services] == ["web", "dns"]


def test_every_problem_is_collected_never_a_partial_result() -> None:
    good = service(ip="10.96.0.50").replace("name: web", "name: good")
    text = "\n---\n".join([service(port="70000", proto="tcp"), good, endpointslice(addr="nope")])
    errors = errors_of(text)
    assert [(e.obj, e.field) for e in errors] == [
        (SVC, "spec.ports[0].port"), (SVC, "spec.ports[0].protocol"), (SL, "endpoints[0].addresses[0]")]


def test_error_in_one_list_item_reports_item_line() -> None:
    text = "apiVersion: v1\nkind: List\nitems:\n" + "".join(
        "- " + doc.replace("\n", "\n  ").rstrip() + "\n" for doc in (service(ip="10.96.0.10"), service(ip="10.96.0.x")))
    errors = errors_of(text)
    assert [(e.obj, e.field, e.line) for e in errors] == [
        (SVC, None, 17), (SVC, "spec.clusterIP", 24)]
    assert errors[0].message == "duplicate object: already defined at bad.yaml:4"


def test_error_string_formats() -> None:
    err = ManifestError("examples/demo.yaml", "Service demo/web", "spec.ports[0].port",
                        "70000 is not a valid port (1-65535)", line=12)
    assert str(err) == ("examples/demo.yaml:12: Service demo/web: spec.ports[0].port: "
                        "70000 is not a valid port (1-65535)")
    assert str(ManifestError("x.yaml", None, None, "no such file or directory")) == "x.yaml: no such file or directory"
    both = ManifestErrors([err, ManifestError("x.yaml", None, None, "boom", line=3)])
    assert str(both).splitlines() == [str(err), "x.yaml:3: boom"]
    assert isinstance(both, ValueError) and isinstance(err, ValueError)


# --- endpoint addresses that must not be backends, with a cluster's own Service range ------------

@pytest.mark.parametrize("cidrs, addr, message", [
    (("172.20.0.0/16",), "172.20.3.4", "172.20.3.4 is inside the Service range 172.20.0.0/16"),
    (("10.43.0.0/16", "fd00:10:43::/112"), "10.43.0.1", "10.43.0.1 is inside the Service range 10.43.0.0/16"),
    (("10.96.0.0/12", "192.168.200.0/24"), "192.168.200.7", "192.168.200.7 is inside the Service range 192.168.200.0/24"),
])
def test_address_in_a_custom_service_cidr_is_refused(cidrs: tuple, addr: str, message: str) -> None:
    with pytest.raises(ManifestErrors) as exc:
        parse_documents(endpointslice(addr=addr), "bad.yaml", service_cidrs=cidrs)
    [err] = exc.value.errors
    assert (err.source, err.obj, err.field, err.line) == ("bad.yaml", SL, "endpoints[0].addresses[0]", 15)
    assert err.message == f"{message}: not allowed as a backend"


def test_custom_service_cidr_replaces_the_default(tmp_path: Path) -> None:
    # 10.96.0.10 is only a ClusterIP in a cluster whose Service range holds it.
    parse_documents(endpointslice(addr="10.96.0.10"), "ok.yaml", service_cidrs=("172.20.0.0/16",))
    (tmp_path / "s.yaml").write_text(endpointslice(addr="172.20.0.9"))
    assert load_manifests(tmp_path).slices[0].endpoints[0].addresses == ("172.20.0.9",)
    with pytest.raises(ManifestErrors) as exc:
        load_manifests(tmp_path, service_cidrs=("172.20.0.0/16",))
    assert [(Path(e.source).name, e.field, e.line) for e in exc.value.errors] == [
        ("s.yaml", "endpoints[0].addresses[0]", 15)]


def test_fixed_rules_hold_whatever_the_service_range() -> None:
    errors = []
    for addr in ("127.0.0.1", "169.254.169.254", "0.0.0.0", "224.0.0.1", "255.255.255.255"):
        with pytest.raises(ManifestErrors) as exc:
            parse_documents(endpointslice(addr=addr), "bad.yaml", service_cidrs=())
        errors += exc.value.errors
    assert len(errors) == 5 and all(e.message.endswith(": not allowed as a backend") for e in errors)


def test_every_refused_address_is_reported() -> None:
    text = endpointslice().replace("  - 10.244.0.11\n", "  - 10.244.0.11\n  - 127.0.0.1\n  - 10.96.0.1\n")
    errors = errors_of(text)
    assert [(e.field, e.line) for e in errors] == [
        ("endpoints[0].addresses[1]", 16), ("endpoints[0].addresses[2]", 17)]


def test_ipv6_slices_are_checked_as_ipv4_ones() -> None:
    # IPv6 slices are programmed: their addresses become backends, so the same rules hold (this
    # passed ::1 through while IPv6 was not programmed).
    with pytest.raises(ManifestErrors, match="::1 is a loopback address: not allowed as a backend"):
        parse_documents(endpointslice(atype="IPv6", addr='"::1"'), "bad.yaml")
    m = parse_documents(endpointslice(atype="IPv6", addr='"FD00::B"'), "ok.yaml")
    assert m.slices[0].endpoints[0].addresses == ("fd00::b",)  # as the maps give it back


@pytest.mark.parametrize("cidr", ["10.96.0.0/33", "10.96.0.1/12", "bogus", ""])
def test_bad_service_cidr_is_a_value_error_naming_it(cidr: str) -> None:
    with pytest.raises(ValueError, match=f"service CIDR {cidr!r} is not a valid network"):
        parse_documents(service(), "ok.yaml", service_cidrs=(cidr,))


@pytest.mark.parametrize("cluster_ip,cidrs,ok", [
    ("10.96.0.10", None, True),
    ("10.244.0.11", None, False),  # a pod's address: would hijack the pod's traffic
    ("192.168.1.1", ("192.168.0.0/16",), True),
    ("10.96.0.10", ("192.168.0.0/16",), False),
    ("10.100.0.1", ("10.96.0.0/16", "10.100.0.0/16"), True),
])
def test_cluster_ip_must_be_in_the_service_range(cluster_ip, cidrs, ok):
    text = (f"apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: demo}}\n"
            f"spec:\n  clusterIP: {cluster_ip}\n  ports: [{{port: 80}}]\n")
    kwargs = {"service_cidrs": cidrs} if cidrs else {}
    if ok:
        assert parse_documents(text, "x.yaml", **kwargs).services[0].cluster_ips == (cluster_ip,)
    else:
        with pytest.raises(ManifestErrors) as exc:
            parse_documents(text, "x.yaml", **kwargs)
        assert f"x.yaml:5: Service demo/web: spec.clusterIP: {cluster_ip} is outside the Service range" in str(exc.value)


def test_annotations_over_the_api_servers_limit_are_refused() -> None:
    """256 KiB of annotations in all (keys and values), as the API server allows; more is refused
    with the field named, and the rest of the text still reads."""
    def with_note(size: int, name: str) -> str:
        return service().replace("name: web", f"name: {name}").replace(
            "  namespace: demo\n", f"  namespace: demo\n  annotations:\n    note: {'x' * size}\n")

    limit = 256 * 1024 - len("note")
    m = parse_documents(with_note(limit, "web"), "ok.yaml")
    assert m.services[0].name == "web"
    errors = errors_of(with_note(limit + 1, "web") + "---\n" + service(ip="10.96.0.11").replace(
        "name: web", "name: other"))
    assert [(e.obj, e.field) for e in errors] == [(SVC, "metadata.annotations")]
    assert "262145 bytes in all: at most 262144 (256 KiB)" in errors[0].message


@pytest.mark.parametrize("field, value, fragment", [
    ("loadBalancerSourceRanges", ["a.1.1.1/8"], '"a.1.1.1/8" is not a valid CIDR'),
    ("loadBalancerSourceRanges", ["1.a.1.1/8"], '"1.a.1.1/8" is not a valid CIDR'),
])
def test_inputs_that_once_crashed_the_converter_are_refused_naming_the_field(field, value, fragment):
    from ebpflb.convert import convert_document

    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "d"},
           "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.1", "ports": [{"port": 80}],
                    field: value}}
    verdict = convert_document(doc, "x")
    assert verdict.refused and fragment in verdict.problems[0][1]
    assert verdict.problems[0][0] == ("spec", field, 0)


def test_a_lone_surrogate_in_an_annotation_does_not_crash_the_size_check():
    """JSON can spell a lone surrogate ("\\ud800"); the API server never sends one, but a file may."""
    m = parse_documents(json.dumps({"apiVersion": "v1", "kind": "Service",
                                    "metadata": {"name": "a", "namespace": "d",
                                                 "annotations": {"note": "\ud800"}},
                                    "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}}),
                        "s.json")
    assert m.services[0].name == "a"
