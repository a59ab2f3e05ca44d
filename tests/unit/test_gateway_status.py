"""Gateway API status bodies (ebpflb.gateway_status, pure): what ebpflb writes to the status of
its GatewayClasses, Gateways and routes, with the spec's rules for writing it (gateway-api
apis/v1, "Notes for implementors"): reasons as the spec spells them, observedGeneration, a
lastTransitionTime that moves only with the status, conditions of other types and route parent
entries of other controllers kept where they are."""
import copy
from typing import Any, Dict, Tuple

import pytest

from ebpflb.gateway import CONTROLLER_NAME, convert_gateway_api_object, gateway_model
from ebpflb.gateway_status import (MAX_MESSAGE, DesiredStatus,
                                   desired_statuses, merge_conditions, merge_patch, merge_status,
                                   rfc3339, stale)
from ebpflb.store import ObjectStore

from .test_gateway import NS, gateway, gclass, grant, listener, read_docs, route, service

pytestmark = pytest.mark.unit

GROUP = "gateway.networking.k8s.io"
T0, T1 = "2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z"
OTHER = "example.net/gateway-controller"


def judge(*docs: Any, unprogrammed=None):
    """(desired statuses, model, objects) of the documents; GatewayClass "ebpflb" added unless
    one is given, every document must be valid."""
    read = read_docs(*docs)
    model = gateway_model(read.gateway, ObjectStore.of(read.services, read.slices))
    return desired_statuses(model, read.gateway, unprogrammed or {}), model, read.gateway


def gen(doc: dict, generation: int) -> dict:
    doc = copy.deepcopy(doc)
    doc["metadata"]["generation"] = generation
    return doc


def conds(conditions) -> Dict[str, Tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in conditions}


def body(statuses, kind: str, name: str, ns: str = NS) -> Dict[str, Any]:
    return statuses[(kind, "" if kind == "GatewayClass" else ns, name)].body


def gw_listener(statuses, lname: str = "tcp", gw: str = "gw") -> Dict[str, Any]:
    return next(li for li in body(statuses, "Gateway", gw)["listeners"] if li["name"] == lname)


def parent_conds(statuses, name: str = "r", kind: str = "TCPRoute", i: int = 0):
    return conds(body(statuses, kind, name)["parents"][i]["conditions"])


# --- the bodies: reasons as the spec spells them ----------------------------------------------
BASE = [gateway(), route(), service()]


@pytest.mark.parametrize("case,docs,where,expected", [
    ("class accepted", BASE, ("GatewayClass", "ebpflb"), {"Accepted": ("True", "Accepted")}),
    ("class with parameters", [gclass(parametersRef={"group": "example.net", "kind": "Config",
                                                     "name": "c"}), gateway()],
     ("GatewayClass", "ebpflb"), {"Accepted": ("False", "InvalidParameters")}),
    ("gateway programmed", BASE, ("Gateway", "gw"),
     {"Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}),
    ("gateway without an address", [gateway(addresses=()), route(), service()], ("Gateway", "gw"),
     {"Accepted": ("True", "Accepted"), "Programmed": ("False", "AddressNotAssigned")}),
    ("gateway with a hostname address", [gateway(addresses=({"type": "Hostname",
                                                             "value": "lb.example.net"},))],
     ("Gateway", "gw"), {"Accepted": ("False", "UnsupportedAddress"),
                         "Programmed": ("False", "Invalid")}),
    ("listener programmed", BASE, ("listener", "tcp"),
     {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs"),
      "Programmed": ("True", "Programmed")}),
    ("listener of an unsupported protocol", [gateway(listeners=[listener(), listener(
        "web", 80, "HTTP")])], ("listener", "web"),
     {"Accepted": ("False", "UnsupportedProtocol"), "ResolvedRefs": ("True", "ResolvedRefs"),
      "Programmed": ("False", "Invalid")}),
    ("listener naming a kind it cannot take", [gateway(listeners=[listener(allowedRoutes={
        "kinds": [{"kind": "UDPRoute"}]})])], ("listener", "tcp"),
     {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "InvalidRouteKinds"),
      "Programmed": ("True", "Programmed")}),
    ("route accepted", BASE, ("TCPRoute", "r"),
     {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}),
    ("route to a missing Service", [gateway(), route()], ("TCPRoute", "r"),
     {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")}),
    ("route across namespaces without a grant",
     [gateway(), route(backends=[{"name": "web", "namespace": "backend", "port": 80}]),
      service(ns="backend")], ("TCPRoute", "r"),
     {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "RefNotPermitted")}),
    ("route across namespaces with a grant",
     [gateway(), route(backends=[{"name": "web", "namespace": "backend", "port": 80}]),
      service(ns="backend"), grant()], ("TCPRoute", "r"),
     {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}),
    ("route of the wrong kind for the listener", [gateway(), route(kind="UDPRoute")],
     ("UDPRoute", "r"), {"Accepted": ("False", "NotAllowedByListeners"),
                         "ResolvedRefs": ("False", "BackendNotFound")}),
    ("route naming a listener that is not there", [gateway(), service(), route(parents=[
        {"name": "gw", "sectionName": "nope"}])], ("TCPRoute", "r"),
     {"Accepted": ("False", "NoMatchingParent"), "ResolvedRefs": ("True", "ResolvedRefs")}),
    ("v1alpha2 route with two rules", [gateway(), service(), route(api=f"{GROUP}/v1alpha2", rules=[
        {"backendRefs": [{"name": "web", "port": 80}]},
        {"backendRefs": [{"name": "web", "port": 80}]}])], ("TCPRoute", "r"),
     {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs"),
      "PartiallyInvalid": ("True", "UnsupportedValue")}),
])
def test_conditions_and_reasons(case, docs, where, expected):
    statuses, _, _ = judge(*docs)
    kind, name = where
    if kind == "listener":
        got = gw_listener(statuses, name)["conditions"]
    elif kind in ("TCPRoute", "UDPRoute"):
        got = body(statuses, kind, name)["parents"][0]["conditions"]
    else:
        got = body(statuses, kind, name)["conditions"]
    assert conds(got) == expected, case
    assert all(set(c) == {"type", "status", "reason", "message"} for c in got)  # no generation


def test_gateway_body_has_addresses_listeners_supported_kinds_and_attached_routes():
    statuses, _, _ = judge(gateway(listeners=[listener(), listener("dns", 53, "UDP"),
                                              listener("web", 80, "HTTP")]),
                           route(), route("r2"), route("u", kind="UDPRoute"), service(),
                           service("dns", port=53, protocol="UDP"))
    gw = body(statuses, "Gateway", "gw")
    assert gw["addresses"] == [{"type": "IPAddress", "value": "192.0.2.10"}]
    assert [(li["name"], li["supportedKinds"], li["attachedRoutes"]) for li in gw["listeners"]] == [
        ("tcp", [{"group": GROUP, "kind": "TCPRoute"}], 2),
        ("dns", [{"group": GROUP, "kind": "UDPRoute"}], 1),
        ("web", [], 0)]


def test_a_gateway_not_programmed_has_no_address():
    statuses, _, _ = judge(gateway(addresses=()))
    assert body(statuses, "Gateway", "gw")["addresses"] == []


def test_observed_generation_is_the_objects_generation():
    statuses, _, objects = judge(gen(gclass(), 2), gen(gateway(), 7), gen(route(), 3), service())
    assert objects.gateways[NS, "gw"].generation == 7
    assert statuses[("Gateway", NS, "gw")].generation == 7
    for c in body(statuses, "GatewayClass", "ebpflb")["conditions"]:
        assert c["observedGeneration"] == 2
    gw = body(statuses, "Gateway", "gw")
    for c in gw["conditions"] + gw["listeners"][0]["conditions"]:
        assert c["observedGeneration"] == 7  # a listener's are the Gateway's generation
    for c in body(statuses, "TCPRoute", "r")["parents"][0]["conditions"]:
        assert c["observedGeneration"] == 3


@pytest.mark.parametrize("value,error", [
    ("3", '"3" is not a generation (an integer, 0 or more)'),
    (-1, "-1 is not a generation (an integer, 0 or more)"),
    (True, "true is not a generation (an integer, 0 or more)"),
])
def test_a_bad_generation_is_refused(value, error):
    verdict = convert_gateway_api_object("Gateway", gen(gateway(), 1) | {
        "metadata": {"name": "gw", "namespace": NS, "generation": value}})
    assert verdict.refused
    assert [(".".join(map(str, p)), m) for p, m in verdict.problems] == [
        ("metadata.generation", error)]


def test_generation_is_read_for_every_kind_with_status():
    for kind, doc in (("GatewayClass", gclass()), ("Gateway", gateway()), ("TCPRoute", route()),
                      ("UDPRoute", route(kind="UDPRoute"))):
        assert convert_gateway_api_object(kind, gen(doc, 5)).obj.generation == 5
        assert convert_gateway_api_object(kind, doc).obj.generation is None


def test_only_ebpflbs_classes_and_their_gateways_but_every_route():
    statuses, _, _ = judge(gclass(), gclass("other", OTHER), gateway(),
                           gateway("theirs", cls="other"), route(), route("r2", parents=[
                               {"name": "theirs"}]), service())
    assert sorted(statuses) == [("Gateway", NS, "gw"), ("GatewayClass", "", "ebpflb"),
                                ("TCPRoute", NS, "r"), ("TCPRoute", NS, "r2")]
    # A route of someone else's Gateway gets no entry of ours: and any we had is removed.
    assert body(statuses, "TCPRoute", "r2") == {"parents": []}


def test_parent_ref_is_written_as_the_route_gives_it():
    statuses, _, _ = judge(
        gateway(listeners=[listener(), listener("tcp2", 9001)]), service(),
        route(parents=[{"name": "gw", "sectionName": "tcp"},
                       {"name": "gw", "namespace": NS, "sectionName": "tcp2", "port": 9001}]))
    parents = body(statuses, "TCPRoute", "r")["parents"]
    assert [p["parentRef"] for p in parents] == [
        {"group": GROUP, "kind": "Gateway", "name": "gw", "sectionName": "tcp"},
        {"group": GROUP, "kind": "Gateway", "name": "gw", "namespace": NS,
         "sectionName": "tcp2", "port": 9001}]
    assert {p["controllerName"] for p in parents} == {CONTROLLER_NAME}


def test_a_gateway_not_in_the_maps_is_programmed_false_pending():
    why = "not in the maps yet: a sync is due"
    statuses, _, _ = judge(*BASE, gateway("gw2", addresses=("192.0.2.11",)),
                           unprogrammed={f"{NS}/gw": why})
    gw = body(statuses, "Gateway", "gw")
    assert conds(gw["conditions"])["Programmed"] == ("False", "Pending")
    assert conds(gw["listeners"][0]["conditions"])["Programmed"] == ("False", "Pending")
    assert next(c for c in gw["conditions"] if c["type"] == "Programmed")["message"] == why
    assert conds(body(statuses, "Gateway", "gw2")["conditions"])["Programmed"] == (
        "True", "Programmed")  # only the Gateways named
    # What is not programmed for another reason says that reason.
    statuses, _, _ = judge(gateway(addresses=()), unprogrammed={f"{NS}/gw": why})
    assert conds(body(statuses, "Gateway", "gw")["conditions"])["Programmed"] == (
        "False", "AddressNotAssigned")


def test_the_same_model_gives_equal_statuses():
    assert judge(*BASE)[0] == judge(*BASE)[0]
    assert judge(*BASE)[0] != judge(gateway(addresses=()), route(), service())[0]


# --- merged into what the object has ----------------------------------------------------------
def desired(*docs: Any, kind: str = "Gateway", name: str = "gw") -> Dict[str, Any]:
    statuses, _, _ = judge(*docs)
    return body(statuses, kind, name)


def test_first_write_stamps_every_condition_now():
    merged = merge_status("Gateway", desired(*BASE), None, T0)
    stamps = [c["lastTransitionTime"] for c in merged["conditions"]] + [
        c["lastTransitionTime"] for li in merged["listeners"] for c in li["conditions"]]
    assert set(stamps) == {T0}


def test_a_rewrite_of_the_same_status_changes_nothing():
    for kind, name in (("Gateway", "gw"), ("GatewayClass", "ebpflb"), ("TCPRoute", "r")):
        want = desired(*BASE, kind=kind, name=name)
        first = merge_status(kind, want, {}, T0)
        assert merge_status(kind, want, first, T1) == first, kind  # nothing to write


@pytest.mark.parametrize("case,before,after,kept", [
    ("same status and reason", ("True", "Programmed"), ("True", "Programmed"), True),
    # metav1.Condition: "the last time the condition transitioned from one status to another";
    # a new reason under the same status is no transition (as meta.SetStatusCondition does).
    ("same status, new reason", ("False", "Invalid"), ("False", "AddressNotAssigned"), True),
    ("new status", ("False", "AddressNotAssigned"), ("True", "Programmed"), False),
    ("from Unknown (the CRD's default)", ("Unknown", "Pending"), ("True", "Programmed"), False),
])
def test_last_transition_time_moves_with_the_status_only(case, before, after, kept):
    live = [{"type": "Programmed", "status": before[0], "reason": before[1], "message": "",
             "lastTransitionTime": T0}]
    want = [{"type": "Programmed", "status": after[0], "reason": after[1], "message": "m"}]
    (got,) = merge_conditions(want, live, frozenset({"Programmed"}), T1)
    assert got == dict(want[0], lastTransitionTime=T0 if kept else T1), case


def test_conditions_of_other_types_are_kept_in_place_and_ours_no_longer_set_removed():
    live = [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
             "lastTransitionTime": T0},
            {"type": "special.io/SomeField", "status": "True", "reason": "Mine", "message": "x",
             "lastTransitionTime": T0},
            {"type": "PartiallyInvalid", "status": "True", "reason": "UnsupportedValue",
             "message": "", "lastTransitionTime": T0}]
    want = [{"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs", "message": ""},
            {"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""}]
    got = merge_conditions(want, live, frozenset({"Accepted", "ResolvedRefs", "PartiallyInvalid"}),
                           T1)
    assert [(c["type"], c["lastTransitionTime"]) for c in got] == [
        ("Accepted", T0), ("special.io/SomeField", T0), ("ResolvedRefs", T1)]
    assert got[1] == live[1]


def test_gateway_merge_keeps_other_fields_and_drops_listeners_gone_from_the_spec():
    want = desired(*BASE)
    live = merge_status("Gateway", want, None, T0)
    live["listeners"].append({"name": "old", "attachedRoutes": 0, "supportedKinds": [],
                              "conditions": []})
    live["attachedListenerSets"] = 2  # not ebpflb's
    merged = merge_status("Gateway", want, live, T1)
    assert [li["name"] for li in merged["listeners"]] == ["tcp"]
    assert merged["attachedListenerSets"] == 2
    # No longer programmed: its addresses go.
    gone = merge_status("Gateway", desired(gateway(addresses=()), route(), service()), merged, T1)
    assert "addresses" not in gone


def test_route_parents_of_other_controllers_are_kept_where_they_are():
    want = desired(gateway(listeners=[listener(), listener("tcp2", 9001)]), service(),
                   route(parents=[{"name": "gw", "sectionName": "tcp"},
                                  {"name": "gw", "sectionName": "tcp2"}]),
                   kind="TCPRoute", name="r")
    theirs = {"parentRef": {"group": GROUP, "kind": "Gateway", "name": "other-gw"},
              "controllerName": OTHER,
              "conditions": [{"type": "Accepted", "status": "False",
                              "reason": "NotAllowedByListeners", "message": "",
                              "lastTransitionTime": T0}]}
    ours_old = {"parentRef": {"group": GROUP, "kind": "Gateway", "name": "gw",
                              "sectionName": "tcp2"},
                "controllerName": CONTROLLER_NAME,
                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                "message": "", "lastTransitionTime": T0}]}
    ours_stale = {"parentRef": {"group": GROUP, "kind": "Gateway", "name": "removed"},
                  "controllerName": CONTROLLER_NAME, "conditions": ours_old["conditions"]}
    live = {"parents": [ours_old, theirs, ours_stale]}
    merged = merge_status("TCPRoute", want, live, T1)
    assert [(p["controllerName"], p["parentRef"]["name"], p["parentRef"].get("sectionName"))
            for p in merged["parents"]] == [
        (CONTROLLER_NAME, "gw", "tcp2"),  # updated in place
        (OTHER, "other-gw", None),  # untouched, where it was
        (CONTROLLER_NAME, "gw", "tcp")]  # new, at the end; the stale one of ours removed
    assert merged["parents"][1] == theirs
    accepted = next(c for c in merged["parents"][0]["conditions"] if c["type"] == "Accepted")
    assert accepted["lastTransitionTime"] == T0  # still True: the time stays
    assert merge_status("TCPRoute", want, merged, T1) == merged


def test_a_route_no_controller_wrote_for_needs_no_write():
    want = desired(gateway(), route("r2", parents=[{"name": "elsewhere"}]), kind="TCPRoute",
                   name="r2")
    assert want == {"parents": []}
    assert merge_status("TCPRoute", want, {}, T0) == {}
    # ...but when ours was there, it goes, and parents stays (an empty list: required).
    ours = {"parentRef": {"group": GROUP, "kind": "Gateway", "name": "elsewhere"},
            "controllerName": CONTROLLER_NAME, "conditions": []}
    assert merge_status("TCPRoute", want, {"parents": [ours]}, T0) == {"parents": []}


def test_a_long_message_is_cut_to_what_the_api_takes():
    many = [{"name": f"svc{i:04d}-{'x' * 40}", "port": 80} for i in range(16)]
    statuses, model, objects = judge(gateway(), route(backends=many))
    (c,) = [c for c in body(statuses, "TCPRoute", "r")["parents"][0]["conditions"]
            if c["type"] == "ResolvedRefs"]
    assert len(c["message"]) <= MAX_MESSAGE and c["reason"] == "BackendNotFound"


def test_stale_when_the_object_is_newer_than_the_model():
    want = DesiredStatus(3, {})
    assert stale(want, {"metadata": {"generation": 4}})
    assert not stale(want, {"metadata": {"generation": 3}})
    assert not stale(DesiredStatus(None, {}), {"metadata": {"generation": 4}})
    assert not stale(want, {"metadata": {}})


@pytest.mark.parametrize("old,new,patch", [
    ({"a": 1, "b": 2}, {"a": 1, "c": 3}, {"b": None, "c": 3}),
    ({"a": {"x": 1, "y": 2}}, {"a": {"x": 1}}, {"a": {"y": None}}),
    ({"l": [1, 2]}, {"l": [2]}, {"l": [2]}),
    ({"a": 1}, {"a": 1}, {}),
    ({}, {"parents": []}, {"parents": []}),
])
def test_merge_patch(old, new, patch):
    assert merge_patch(old, new) == patch


def test_rfc3339():
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(1796121600.7) == "2026-12-01T10:40:00Z"
