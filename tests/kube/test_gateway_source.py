"""The Kubernetes API source and the Gateway API, against a FAKE API server
(tests/kube/fake_apiserver.py: real HTTP on loopback, the Gateway API custom resources served
only when "their CRD is installed"), driven by the unmodified `kubernetes` client: GatewayClass,
Gateway, TCPRoute, UDPRoute, ReferenceGrant and Namespace changes as Service changes are;
clusters without the CRDs (Services still sync), CRDs installed late, older versions only
(v1alpha2 routes), CRDs removed, no right to read them, refused objects."""
import logging
import time

import pytest

from ebpflb.gateway import Gateway, GatewayClass, Namespace, ReferenceGrant, Route

from .fake_apiserver import (endpointslice, gateway, gateway_class, namespace, reference_grant,
                             service, tcproute)

GATEWAY_KINDS = ["Gateway", "GatewayClass", "ReferenceGrant", "TCPRoute", "UDPRoute"]


class Changes:
    """What the agent would be handed: every change take() gives, the latest per object."""

    def __init__(self, src):
        self.src = src
        self.objects = {}  # (kind, key) -> the model object (None: deleted)
        self.batches = []

    def step(self):
        batch = self.src.take()
        for c in batch.changes:
            self.objects[c.kind, c.key] = c.obj
        if batch:
            self.batches.append(batch)
        return batch

    def wait(self, until, timeout=10.0, what="the change"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.step()
            if self.src.synced and until(self):
                return self
            self.src.wait_changed(0.1)
        raise AssertionError(f"no {what} within {timeout}s; have {sorted(self.objects)}, "
                             f"absent {self.src.absent()}")

    def get(self, kind, namespace, name):
        return self.objects.get((kind, (namespace, name)))

    def quiet(self, seconds=0.5):
        out = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.step():
                out.append(self.batches[-1])
            time.sleep(0.05)
        return out


def seed_gateway_api(fake):
    fake.put("namespaces", namespace("default", team="a"))
    fake.put("gatewayclasses", gateway_class())
    fake.put("gateways", gateway())
    fake.put("tcproutes", tcproute())
    fake.put("udproutes", tcproute("u", kind="UDPRoute"))
    fake.put("referencegrants", reference_grant())


def test_without_gateway_api_crds_services_sync_and_the_kinds_are_absent(fake, make_source,
                                                                         caplog):
    fake.put("services", service("web", "10.96.0.10"))
    fake.put("endpointslices", endpointslice("web", ["10.244.0.11"]))
    with caplog.at_level(logging.INFO, logger="ebpflb.sources.kubernetes"):
        src = make_source()
        f = Changes(src).wait(lambda f: f.get("Service", "default", "web") is not None)
        time.sleep(0.3)  # a few absent_retry periods would pass here if the retry were eager
    assert src.synced and sorted(src.absent()) == GATEWAY_KINDS
    assert "Namespace" not in src.absent()  # the fake serves Namespaces, as every server does
    said = [r.getMessage() for r in caplog.records if "are not read" in r.getMessage()]
    assert len(said) == 5, said  # once per kind
    assert any("TCPRoutes are not read (none of gateway.networking.k8s.io/v1, "
               "gateway.networking.k8s.io/v1alpha2 is served: 404, its CRD is not installed)"
               in m for m in said), said
    assert any("GatewayClasses are not read" in m for m in said), said
    assert all("Services are served without them" in m for m in said)
    # Each version was asked for once; nothing was asked again before absent_retry.
    assert fake.counts["GET tcproutes v1"] == fake.counts["GET tcproutes v1alpha2"] == 1
    assert not any(kind in GATEWAY_KINDS for kind, _ in f.objects)


def test_gateway_api_objects_become_changes_as_services_do(fake, make_source):
    fake.install_crds()
    seed_gateway_api(fake)
    src = make_source()
    f = Changes(src).wait(lambda f: len(f.objects) == 6)
    assert src.absent() == [] and src.synced
    assert isinstance(f.get("GatewayClass", "", "ebpflb"), GatewayClass)
    assert isinstance(f.get("Namespace", "", "default"), Namespace)
    assert f.get("Namespace", "", "default").labels == (
        ("kubernetes.io/metadata.name", "default"), ("team", "a"))
    gw = f.get("Gateway", "default", "gw")
    assert isinstance(gw, Gateway) and gw.generation == 1
    assert [a.value for a in gw.addresses] == ["192.0.2.10"]
    assert isinstance(f.get("TCPRoute", "default", "r"), Route)
    assert f.get("UDPRoute", "default", "u").kind == "UDPRoute"
    assert isinstance(f.get("ReferenceGrant", "backend", "allow"), ReferenceGrant)
    assert src.api_versions()["TCPRoute"] == "gateway.networking.k8s.io/v1"
    # An update: a new generation, a new object.
    rv = fake.put("gateways", gateway(addresses=("192.0.2.20",)))
    f.wait(lambda f: f.get("Gateway", "default", "gw").generation == 2)
    assert [a.value for a in f.get("Gateway", "default", "gw").addresses] == ["192.0.2.20"]
    assert src.revision()["Gateway"] >= rv
    # Status written (by us or anyone): no change at all.
    fake.put_status("gateways", "default", "gw", {"conditions": []})
    assert f.quiet() == []
    # A delete: None.
    fake.delete("tcproutes", "default", "r")
    f.wait(lambda f: ("TCPRoute", ("default", "r")) in f.objects
           and f.get("TCPRoute", "default", "r") is None)


def test_crds_installed_later_are_picked_up(fake, make_source):
    fake.put("services", service("web", "10.96.0.10"))
    src = make_source(absent_retry=0.2)
    f = Changes(src).wait(lambda f: f.get("Service", "default", "web") is not None)
    assert "Gateway" in src.absent()
    fake.install_crds()
    seed_gateway_api(fake)
    f.wait(lambda f: isinstance(f.get("Gateway", "default", "gw"), Gateway), 5,
           "Gateway after the CRDs were installed")
    deadline = time.monotonic() + 5
    while src.absent() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert src.absent() == []
    # ...and watched from then on.
    fake.put("gateways", gateway(addresses=("192.0.2.30",)))
    f.wait(lambda f: [a.value for a in f.get("Gateway", "default", "gw").addresses] ==
           ["192.0.2.30"])


def test_older_crds_are_read_in_the_first_version_they_serve(fake, make_source, caplog):
    """gateway-api before v1.5 served TCPRoute and UDPRoute as v1alpha2 only (where a route may
    have up to 16 rules), and before v1.0 Gateways as v1beta1."""
    fake.install_crds({"gatewayclasses": ("v1beta1",), "gateways": ("v1beta1",),
                       "tcproutes": ("v1alpha2",), "udproutes": ("v1alpha2",),
                       "referencegrants": ("v1beta1",)})
    fake.put("gatewayclasses", gateway_class())
    fake.put("gateways", gateway())
    two_rules = [{"backendRefs": [{"name": "web", "port": 80}]},
                 {"backendRefs": [{"name": "api", "port": 80}]}]
    fake.put("tcproutes", tcproute(rules=two_rules))  # v1 would refuse it: one rule at most
    with caplog.at_level(logging.INFO, logger="ebpflb.sources.kubernetes"):
        src = make_source()
        f = Changes(src).wait(lambda f: f.get("TCPRoute", "default", "r") is not None)
    assert len(f.get("TCPRoute", "default", "r").rules) == 2
    assert isinstance(f.get("Gateway", "default", "gw"), Gateway)
    assert src.api_versions()["TCPRoute"] == "gateway.networking.k8s.io/v1alpha2"
    assert src.api_versions()["Gateway"] == "gateway.networking.k8s.io/v1beta1"
    assert fake.counts["GET tcproutes v1"] == 1  # asked once, 404, then v1alpha2 from then on
    fake.open_watches_wait("tcproutes", 1)
    assert fake.counts["GET tcproutes v1alpha2"] >= 2  # the list and the watch
    assert src.problems() == []
    assert "TCPRoutes read as gateway.networking.k8s.io/v1alpha2" in caplog.text


def test_a_crd_removed_deletes_its_objects_and_services_go_on(fake, make_source):
    fake.install_crds()
    seed_gateway_api(fake)
    fake.put("services", service("web", "10.96.0.10"))
    src = make_source(absent_retry=0.2)
    f = Changes(src).wait(lambda f: isinstance(f.get("Gateway", "default", "gw"), Gateway))
    fake.uninstall_crds("gateways")
    f.wait(lambda f: f.get("Gateway", "default", "gw") is None, 5, "the Gateway's deletion")
    deadline = time.monotonic() + 5
    while "Gateway" not in src.absent() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert src.absent() == ["Gateway"] and src.synced
    fake.put("services", service("api", "10.96.0.20"))
    f.wait(lambda f: f.get("Service", "default", "api") is not None)
    assert isinstance(f.get("TCPRoute", "default", "r"), Route)  # the other kinds stay


def test_no_right_to_read_them_holds_nothing_back(fake, make_source, caplog):
    """A ClusterRole from before the Gateway API (no namespaces, no gateways): 403, said once
    as a warning; Services are served."""
    fake.install_crds()
    seed_gateway_api(fake)
    fake.forbidden = {"namespaces", "gateways"}
    fake.put("services", service("web", "10.96.0.10"))
    with caplog.at_level(logging.INFO, logger="ebpflb.sources.kubernetes"):
        src = make_source()
        f = Changes(src).wait(lambda f: f.get("Service", "default", "web") is not None
                              and f.get("TCPRoute", "default", "r") is not None)
    assert sorted(src.absent()) == ["Gateway", "Namespace"]
    assert f.get("Gateway", "default", "gw") is None
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "are not read" in
              r.getMessage()]
    assert sorted(r.getMessage().split(": ")[1].split(" ")[0] for r in warned) == [
        "Gateways", "Namespaces"]
    assert "(403 Forbidden: the ClusterRole does not let ebpflb list them)" in \
        warned[0].getMessage()


def test_a_refused_gateway_keeps_its_last_good_version_and_is_a_problem(fake, make_source):
    fake.install_crds()
    seed_gateway_api(fake)
    src = make_source()
    f = Changes(src).wait(lambda f: isinstance(f.get("Gateway", "default", "gw"), Gateway))
    bad = gateway()
    bad["spec"]["listeners"][0]["port"] = 70000  # the CRD would refuse it; we must survive it
    fake.put("gateways", bad)
    deadline = time.monotonic() + 5
    while not src.problems() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(p.obj, p.field) for p in src.problems()] == [
        ("Gateway default/gw", "spec.listeners[0].port")]
    assert f.quiet(0.3) == []
    assert f.get("Gateway", "default", "gw").listeners[0].port == 9000
    fake.put("gateways", gateway())
    deadline = time.monotonic() + 5
    while src.problems() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert src.problems() == []


def test_without_gateway_api_the_source_reads_services_only(fake, make_source):
    fake.install_crds()
    seed_gateway_api(fake)
    src = make_source(gateway_api=False)
    assert sorted(src.reflectors) == ["EndpointSlice", "Node", "Service"]
    Changes(src).wait(lambda f: True)
    assert not any(k.startswith(("GET gateways", "GET tcproutes")) for k in fake.counts)


@pytest.mark.parametrize("plural", ["gateways", "tcproutes"])
def test_a_watch_ending_with_the_crd_relists(fake, make_source, plural):
    """The server ends watches when a CRD goes; the relist answers 404 and the kind's objects
    go; when the CRD comes back (with its objects), they come back too."""
    fake.install_crds()
    seed_gateway_api(fake)
    src = make_source(absent_retry=0.2)
    kind = {"gateways": "Gateway", "tcproutes": "TCPRoute"}[plural]
    name = {"gateways": "gw", "tcproutes": "r"}[plural]
    f = Changes(src).wait(lambda f: f.get(kind, "default", name) is not None)
    fake.uninstall_crds(plural)
    f.wait(lambda f: f.get(kind, "default", name) is None)
    fake.install_crds({plural: ("v1",)})
    fake.put(plural, gateway() if plural == "gateways" else tcproute())
    f.wait(lambda f: f.get(kind, "default", name) is not None, 5, f"the {kind} back")


def test_every_kind_the_source_hands_over_is_a_change_kind():
    from ebpflb.changes import KINDS
    from ebpflb.sources.kubernetes import GATEWAY_RESOURCES, RESOURCES

    handed_over = {r.kind for r in RESOURCES + GATEWAY_RESOURCES} - {"Node"}  # Nodes: own_node()
    assert handed_over <= set(KINDS)
