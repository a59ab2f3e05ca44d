"""The lab's Ingress controller, its pure part (ebpflb/lab/ingress.py): Ingress objects and their
Services -> host rules with resolved backends, refused input named by object and field, and the
nginx configuration made from them. The lab test (tests/lab/test_ingress.py) runs it for real."""
from pathlib import Path
from typing import Any, Dict, List

import pytest

from ebpflb.documents import load_documents
from ebpflb.lab import ingress
from ebpflb.lab.ingress import Backend, IngressError, PathRule

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ingress.yaml"


def service(name: str, ip: str, ns: str = "shop") -> Dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def an_ingress(rules: List[dict], tls: List[str] = (), **spec: Any) -> Dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "ing", "namespace": "shop"},
            "spec": {"rules": rules, "tls": [{"hosts": list(tls)}] if tls else [], **spec}}


def path(p: str, svc: str, path_type: str = "Prefix", port: Any = None) -> dict:
    return {"path": p, "pathType": path_type,
            "backend": {"service": {"name": svc, "port": port or {"number": 80}}}}


def test_the_examples_ingress_resolves_to_clusterips():
    hosts = ingress.read_ingresses(load_documents(EXAMPLE.read_text()))
    by_host = {h.host: h for h in hosts}
    assert set(by_host) == {"shop.example.test", "api.example.test"}
    assert all(h.tls for h in hosts)
    assert by_host["shop.example.test"].paths == [
        PathRule("/cart", "Prefix", Backend("shop/cart", "10.96.19.1", 80)),
        PathRule("/", "Prefix", Backend("shop/storefront", "10.96.19.2", 80))]
    # A port by name resolves too.
    assert by_host["api.example.test"].paths == [PathRule("/", "Prefix",
                                                          Backend("shop/api", "10.96.19.3", 80))]


def test_rules_of_one_host_in_two_ingresses_merge():
    a = an_ingress([{"host": "a.test", "http": {"paths": [path("/x", "s")]}}])
    b = an_ingress([{"host": "a.test", "http": {"paths": [path("/y/", "s")]}}], tls=["a.test"])
    (host,) = ingress.read_ingresses([service("s", "10.96.1.1"), a, b])
    assert host.tls and [(r.path, r.path_type) for r in host.paths] == [("/x", "Prefix"),
                                                                      ("/y", "Prefix")]


@pytest.mark.parametrize("doc,where", [
    (an_ingress([{"http": {"paths": [path("/", "s")]}}]), "spec.rules[0].host"),
    (an_ingress([], defaultBackend={"service": {"name": "s"}}), "spec.defaultBackend"),
    (an_ingress([{"host": "a.test",
                  "http": {"paths": [path("/", "s", "ImplementationSpecific")]}}]),
     "spec.rules[0].http.paths[0].pathType"),
    (an_ingress([{"host": "a.test", "http": {"paths": [path("/a;b", "s")]}}]),
     "spec.rules[0].http.paths[0].path"),
    (an_ingress([{"host": "a.test", "http": {"paths": [path("/", "nope")]}}]),
     "spec.rules[0].http.paths[0].backend.service.name"),
    (an_ingress([{"host": "a.test", "http": {"paths": [path("/", "s", port={"number": 81})]}}]),
     "spec.rules[0].http.paths[0].backend.service.port"),
    (an_ingress([{"host": "a.test", "http": {"paths": [path("/a", "s"), path("/a/", "s")]}}]),
     "spec.rules[0].http.paths[1]"),
    (an_ingress([{"host": "a.test;", "http": {"paths": [path("/", "s")]}}]), "spec.rules[0].host"),
], ids=["no host", "defaultBackend", "pathType", "path", "service", "port", "twice", "host"])
def test_what_the_lab_controller_cannot_serve_is_refused_by_field(doc, where):
    with pytest.raises(IngressError, match=r"Ingress shop/ing: " + where.replace("[", r"\[")
                       .replace("]", r"\]")):
        ingress.read_ingresses([service("s", "10.96.1.1"), doc])


def test_the_nginx_config_keeps_to_its_prefix_and_follows_the_rules():
    hosts = ingress.read_ingresses([
        service("s", "10.96.1.1"), service("t", "10.96.1.2"),
        an_ingress([{"host": "a.test", "http": {"paths": [path("/p", "s"), path("/p", "t", "Exact"),
                                                          path("/", "t")]}},
                    {"host": "b.test", "http": {"paths": [path("/only", "s")]}}], tls=["a.test"])])
    conf = ingress.render_nginx_conf(hosts, "ing-0", "/tmp/x/ing-0",
                                     {"a.test": ("/tmp/x/a.pem", "/tmp/x/a.key")})
    lines = [line.strip() for line in conf.splitlines()]
    # Exact /p wins over Prefix /p, which still takes /p/...; the match is cut off.
    assert "location = /p { proxy_pass http://10.96.1.2:80/; }  # shop/t" in lines
    assert "location /p/ { proxy_pass http://10.96.1.1:80/; }  # shop/s" in lines
    assert sum(line.startswith("location = /p ") for line in lines) == 1
    # The TLS host is served on HTTPS and redirected there; the other host is plain HTTP, with
    # 404 beyond its one path; unknown names get 404 or no handshake.
    assert f"listen {ingress.HTTPS_PORT} ssl;" in lines and "server_name a.test;" in lines
    assert "ssl_certificate /tmp/x/a.pem;" in lines
    assert "return 308 https://$host$request_uri;" in lines
    assert "server_name b.test;" in lines and "location / { return 404; }" in lines
    assert "ssl_reject_handshake on;" in lines
    assert f"add_header {ingress.POD_HEADER} ing-0 always;" in lines
    # Every path nginx writes is under the prefix; nothing of the machine's nginx is used.
    assert "/etc/nginx" not in conf and "/var/lib/nginx" not in conf and "/var/log" not in conf
    assert "pid /tmp/x/ing-0/nginx.pid;" in lines and "worker_processes 1;" in lines
