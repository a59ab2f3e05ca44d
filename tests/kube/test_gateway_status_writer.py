"""The Gateway API status writer against a FAKE API server (tests/kube/fake_apiserver.py: real
HTTP on loopback, the status subresource with resourceVersion preconditions, 409 Conflict and
the CRDs' rules for conditions), through the unmodified `kubernetes` client: it writes the
status ebpflb.gateway_status gives, only what changed, keeps what other controllers wrote,
reads again on a conflict, waits for the model when the object is newer, and never raises."""
import logging

import pytest

from ebpflb.convert import convert_api_object
from ebpflb.gateway import (CONTROLLER_NAME, GatewayObjects, convert_gateway_api_object,
                            gateway_model)
from ebpflb.store import ObjectStore

from .fake_apiserver import CUSTOM, endpointslice, gateway, gateway_class, service, tcproute

GROUP = "gateway.networking.k8s.io"
OTHER = "example.net/gateway-controller"
T0 = 1796121600.0  # 2026-12-01T10:40:00Z


class Clock:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t


def model_of(fake):
    """The model of what the fake holds (as the agent's store would have it), and its objects."""
    objs = []
    for plural, (kind, _, versions) in CUSTOM.items():
        api = f"{GROUP}/{fake.crds[plural][0]}" if plural in fake.crds else None
        for obj in fake.store[plural].values():
            verdict = convert_gateway_api_object(kind, obj, api)
            assert not verdict.refused, verdict.problems
            objs.append(verdict.obj)
    services = [convert_api_object("Service", o).obj for o in fake.store["services"].values()]
    slices = [convert_api_object("EndpointSlice", o).obj
              for o in fake.store["endpointslices"].values()]
    objects = GatewayObjects.of(objs)
    return gateway_model(objects, ObjectStore.of(services, slices)), objects


@pytest.fixture
def make_writer(fake, tmp_path):
    from ebpflb.sources.gateway_status_writer import GatewayStatusWriter
    from ebpflb.sources.kubernetes import api_client_from

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(fake.kubeconfig())

    def _make(**kwargs):
        kwargs.setdefault("clock", Clock())
        return GatewayStatusWriter(api_client_from(str(kubeconfig)), **kwargs)

    return _make


@pytest.fixture
def cluster(fake):
    fake.install_crds()
    fake.put("gatewayclasses", gateway_class())
    fake.put("gatewayclasses", gateway_class("other", OTHER))
    fake.put("gateways", gateway())
    fake.put("gateways", gateway("theirs", gateway_class_name="other"))
    fake.put("tcproutes", tcproute())
    fake.put("services", service("web", "10.96.0.10"))
    fake.put("endpointslices", endpointslice("web", ["10.244.0.11"]))
    return fake


def status_of(fake, plural, name, namespace="default"):
    return fake.get(plural, namespace if plural != "gatewayclasses" else "", name).get("status")


def conds(conditions):
    return {c["type"]: (c["status"], c["reason"]) for c in conditions}


def requests(fake):
    return {k: v for k, v in fake.counts.items()
            if k.split(" ")[0] in ("GET", "PATCH", "PUT") and k.split(" ")[1] in CUSTOM}


def test_writes_class_gateway_and_route_status_once(cluster, make_writer):
    writer = make_writer()
    assert writer.write(*model_of(cluster)) == 3
    assert not writer.pending
    gc = status_of(cluster, "gatewayclasses", "ebpflb")
    assert conds(gc["conditions"]) == {"Accepted": ("True", "Accepted")}
    assert gc["conditions"][0]["observedGeneration"] == 1
    assert gc["conditions"][0]["lastTransitionTime"] == "2026-12-01T10:40:00Z"
    gw = status_of(cluster, "gateways", "gw")
    assert gw["addresses"] == [{"type": "IPAddress", "value": "192.0.2.10"}]
    assert conds(gw["conditions"]) == {"Accepted": ("True", "Accepted"),
                                       "Programmed": ("True", "Programmed")}
    (li,) = gw["listeners"]
    assert (li["name"], li["attachedRoutes"], li["supportedKinds"]) == (
        "tcp", 1, [{"group": GROUP, "kind": "TCPRoute"}])
    (parent,) = status_of(cluster, "tcproutes", "r")["parents"]
    assert parent["parentRef"] == {"group": GROUP, "kind": "Gateway", "name": "gw"}
    assert parent["controllerName"] == CONTROLLER_NAME
    assert conds(parent["conditions"]) == {"Accepted": ("True", "Accepted"),
                                           "ResolvedRefs": ("True", "ResolvedRefs")}
    # Not ours: no status.
    assert status_of(cluster, "gateways", "theirs") is None
    assert status_of(cluster, "gatewayclasses", "other") is None
    # Merge patches of the status subresource, with the resourceVersion read as precondition.
    methods = {(m, plural) for m, plural, _, body in cluster.status_writes}
    assert methods == {("PATCH", "gatewayclasses"), ("PATCH", "gateways"), ("PATCH", "tcproutes")}
    assert all(body["metadata"]["resourceVersion"] for *_, body in cluster.status_writes)
    # The same model again: no request at all.
    before = requests(cluster)
    assert writer.write(*model_of(cluster)) == 0
    assert requests(cluster) == before


def test_objects_never_seen_come_from_one_list_per_kind(cluster, make_writer):
    for i in range(5):
        cluster.put("tcproutes", tcproute(f"r{i}"))
    make_writer().write(*model_of(cluster))
    assert cluster.counts["GET tcproutes v1"] == 1  # one list, no GET per route
    assert cluster.counts["get tcproutes"] == 0
    assert cluster.counts["PATCH tcproutes/status"] == 6


def test_only_what_changed_is_written_and_unchanged_conditions_keep_their_time(cluster,
                                                                              make_writer):
    clock = Clock()
    writer = make_writer(clock=clock)
    writer.write(*model_of(cluster))
    cluster.status_writes.clear()
    clock.t += 3600
    cluster.put("gateways", gateway(addresses=()))  # no address: not programmed
    assert writer.write(*model_of(cluster)) == 1  # the Gateway only
    assert [(p, k) for _, p, k, _ in cluster.status_writes] == [("gateways", ("default", "gw"))]
    gw = status_of(cluster, "gateways", "gw")
    assert "addresses" not in gw
    times = {c["type"]: (c["status"], c["reason"], c["lastTransitionTime"], c["observedGeneration"])
             for c in gw["conditions"]}
    assert times == {"Accepted": ("True", "Accepted", "2026-12-01T10:40:00Z", 2),
                     "Programmed": ("False", "AddressNotAssigned", "2026-12-01T11:40:00Z", 2)}
    # What is sent is the difference only (JSON merge patch): addresses removed with null.
    (_, _, _, body), = cluster.status_writes
    assert body["status"]["addresses"] is None and set(body["status"]) == {
        "addresses", "conditions", "listeners"}


def test_what_other_controllers_wrote_is_kept(cluster, make_writer):
    theirs = {"parentRef": {"group": GROUP, "kind": "Gateway", "name": "elsewhere"},
              "controllerName": OTHER,
              "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                              "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    cluster.put_status("tcproutes", "default", "r", {"parents": [theirs]})
    special = {"type": "special.io/SomeField", "status": "True", "reason": "Mine", "message": "",
               "lastTransitionTime": "2026-01-01T00:00:00Z"}
    cluster.put_status("gateways", "default", "gw", {"conditions": [special]})
    make_writer().write(*model_of(cluster))
    parents = status_of(cluster, "tcproutes", "r")["parents"]
    assert [p["controllerName"] for p in parents] == [OTHER, CONTROLLER_NAME]
    assert parents[0] == theirs
    gw = status_of(cluster, "gateways", "gw")
    assert [c["type"] for c in gw["conditions"]] == ["special.io/SomeField", "Accepted",
                                                     "Programmed"]
    assert gw["conditions"][0] == special


def test_a_conflict_reads_again_and_keeps_what_the_other_writer_wrote(cluster, make_writer):
    writer = make_writer()
    writer.write(*model_of(cluster))
    theirs = {"parentRef": {"group": GROUP, "kind": "Gateway", "name": "elsewhere"},
              "controllerName": OTHER,
              "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                              "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    raced = []

    def race(plural, key):  # another controller writes between our read and our write
        if plural == "tcproutes" and not raced:
            raced.append(key)
            current = cluster.get("tcproutes", *key)["status"]
            cluster.put_status("tcproutes", *key, {"parents": current["parents"] + [theirs]})

    cluster.on_status_write = race
    cluster.put("tcproutes", tcproute(parents=("gw", "nope")))  # a second parentRef
    assert writer.write(*model_of(cluster)) == 1
    assert cluster.counts["conflict tcproutes/status"] == 1
    parents = status_of(cluster, "tcproutes", "r")["parents"]
    assert [(p["controllerName"], p["parentRef"]["name"]) for p in parents] == [
        (CONTROLLER_NAME, "gw"), (OTHER, "elsewhere")]  # "nope" is no Gateway: no entry
    assert writer.conflicts == 1 and not writer.pending


def test_an_object_newer_than_the_model_waits_for_the_model(cluster, make_writer):
    writer = make_writer()
    old_model = model_of(cluster)
    cluster.put("gateways", gateway(addresses=("192.0.2.20",)))  # generation 2, not in the model
    assert writer.write(*old_model) == 2  # the class and the route; not the Gateway
    assert status_of(cluster, "gateways", "gw") is None
    assert writer.pending
    assert writer.write(*model_of(cluster)) == 1
    gw = status_of(cluster, "gateways", "gw")
    assert gw["addresses"] == [{"type": "IPAddress", "value": "192.0.2.20"}]
    assert {c["observedGeneration"] for c in gw["conditions"]} == {2}
    assert not writer.pending


def test_a_route_that_leaves_our_gateway_loses_our_entry_only(cluster, make_writer):
    writer = make_writer()
    writer.write(*model_of(cluster))
    cluster.put("tcproutes", tcproute(parents=("theirs",)))
    assert writer.write(*model_of(cluster)) == 2  # the route, and the listener's count
    assert status_of(cluster, "tcproutes", "r") == {"parents": []}
    assert status_of(cluster, "gateways", "gw")["listeners"][0]["attachedRoutes"] == 0
    assert status_of(cluster, "gateways", "theirs") is None


def test_another_agent_finds_the_status_written_and_writes_nothing(cluster, make_writer):
    """Every node's agent may run a writer: they agree, and only the first one writes."""
    make_writer().write(*model_of(cluster))
    writes = len(cluster.status_writes)
    second = make_writer(clock=Clock(T0 + 600))
    assert second.write(*model_of(cluster)) == 0
    assert len(cluster.status_writes) == writes and not second.pending


def test_routes_are_written_in_the_version_the_crd_serves(fake, make_writer):
    fake.install_crds({"gatewayclasses": ("v1beta1",), "gateways": ("v1beta1",),
                       "tcproutes": ("v1alpha2",)})
    fake.put("gatewayclasses", gateway_class())
    fake.put("gateways", gateway())
    fake.put("tcproutes", tcproute())
    assert make_writer().write(*model_of(fake)) == 3
    assert fake.counts["PATCH tcproutes v1alpha2"] == 1
    assert fake.counts["PATCH gateways v1beta1"] == 1
    assert fake.counts["GET tcproutes v1"] == 1  # 404: then v1alpha2
    assert status_of(fake, "tcproutes", "r")["parents"][0]["controllerName"] == CONTROLLER_NAME


def test_a_gateway_not_in_the_maps_is_programmed_false_pending(cluster, make_writer):
    writer = make_writer()
    writer.write(*model_of(cluster), {"default/gw": "not in the maps yet: a sync is due"})
    gw = status_of(cluster, "gateways", "gw")
    assert conds(gw["conditions"])["Programmed"] == ("False", "Pending")
    assert writer.write(*model_of(cluster)) == 1  # in the maps now: Programmed True
    assert conds(status_of(cluster, "gateways", "gw")["conditions"])["Programmed"] == (
        "True", "Programmed")


def test_an_unreachable_server_is_logged_not_raised_and_retried(cluster, make_writer, caplog):
    writer = make_writer(retry_after=0.0, request_timeout=(1.0, 2.0))
    cluster.go_away()
    with caplog.at_level(logging.WARNING, logger="ebpflb.sources.gateway_status_writer"):
        assert writer.write(*model_of(cluster)) == 0
    assert writer.pending
    assert "did not answer" in caplog.text
    cluster.come_back()
    assert writer.write(*model_of(cluster)) == 3 and not writer.pending


def test_a_refused_write_is_logged_with_the_object_and_retried(cluster, make_writer, caplog):
    writer = make_writer(forbidden_retry=0.0)
    model, objects = model_of(cluster)
    cluster.forbidden = {"gateways"}
    with caplog.at_level(logging.WARNING, logger="ebpflb.sources.gateway_status_writer"):
        assert writer.write(model, objects) == 2
    assert "Gateway API status of Gateways: ApiException: (403)" in caplog.text
    assert writer.pending
    cluster.forbidden = set()
    assert writer.write(model, objects) == 1 and not writer.pending
    # Known objects are read one by one: a failure names the object.
    cluster.put("gateways", gateway(addresses=("192.0.2.20",)))
    cluster.forbidden = {"gateways"}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ebpflb.sources.gateway_status_writer"):
        assert writer.write(*model_of(cluster)) == 0
    assert "refused writing gateways/status (403" in caplog.text
    assert writer.pending
    cluster.forbidden = set()
    assert writer.write(*model_of(cluster)) == 1 and not writer.pending


def test_a_kind_whose_status_writes_are_refused_is_said_once_and_paused(cluster, make_writer,
                                                                        caplog):
    """A ClusterRole that may read Gateways but not write their status: one warning, then no
    request for that kind until the pause is over (not one warning per object every 10 s)."""
    writer = make_writer()
    model, objects = model_of(cluster)
    assert writer.write(model, objects) == 3
    cluster.put("gateways", gateway(addresses=("192.0.2.20",)))
    cluster.forbidden = {"gateways"}
    with caplog.at_level(logging.WARNING, logger="ebpflb.sources.gateway_status_writer"):
        assert writer.write(*model_of(cluster)) == 0
        requests = sum(cluster.counts.values())
        assert writer.write(*model_of(cluster)) == 0
    assert caplog.text.count("refused writing gateways/status") == 1
    assert sum(cluster.counts.values()) == requests  # paused: nothing asked
    assert writer.pending


def test_without_the_crds_nothing_is_written_and_nothing_raised(fake, make_writer):
    fake.put("services", service("web", "10.96.0.10"))
    fake.install_crds()
    fake.put("gatewayclasses", gateway_class())
    fake.put("gateways", gateway())
    model, objects = model_of(fake)
    fake.uninstall_crds()
    writer = make_writer()
    assert writer.write(model, objects) == 0


def test_forget_looks_at_everything_again_and_repairs(cluster, make_writer):
    writer = make_writer()
    writer.write(*model_of(cluster))
    cluster.put_status("gateways", "default", "gw", None)  # someone wiped it
    assert writer.write(*model_of(cluster)) == 0  # the writer does not know...
    writer.forget()
    assert writer.write(*model_of(cluster)) == 1  # ...until it looks again
    assert conds(status_of(cluster, "gateways", "gw")["conditions"])["Accepted"] == (
        "True", "Accepted")


def test_the_fake_takes_a_put_of_the_status_with_its_precondition(cluster, tmp_path):
    """The fake's PUT on /status (what a client replacing the status sends): the stored
    resourceVersion is required, another one is a 409, the spec is not touched."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from ebpflb.sources.kubernetes import api_client_from

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(cluster.kubeconfig())
    api = client.CustomObjectsApi(api_client_from(str(kubeconfig)))
    obj = api.get_namespaced_custom_object_status(GROUP, "v1", "default", "gateways", "gw")
    assert obj["kind"] == "Gateway" and obj["apiVersion"] == f"{GROUP}/v1"
    stale_copy = dict(obj, metadata=dict(obj["metadata"]))
    obj["status"] = {"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                     "message": "", "lastTransitionTime": "2026-12-01T10:40:00Z"}]}
    obj["spec"] = {"gatewayClassName": "changed"}
    api.replace_namespaced_custom_object_status(GROUP, "v1", "default", "gateways", "gw", obj)
    stored = cluster.get("gateways", "default", "gw")
    assert stored["status"] == obj["status"] and stored["spec"]["gatewayClassName"] == "ebpflb"
    stale_copy["status"] = {}
    with pytest.raises(ApiException) as err:
        api.replace_namespaced_custom_object_status(GROUP, "v1", "default", "gateways", "gw",
                                                    stale_copy)
    assert err.value.status == 409
    bad = dict(stored, status={"conditions": [{"type": "Accepted", "status": "Yes"}]})
    with pytest.raises(ApiException) as err:
        api.replace_namespaced_custom_object_status(GROUP, "v1", "default", "gateways", "gw", bad)
    assert err.value.status == 422
