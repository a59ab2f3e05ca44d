"""Gateway API status as the API stores it (pure core): the `status` bodies ebpflb writes back
for the objects of its GatewayClasses.

sources -> changes -> store -> **gateway model -> status bodies** -> the status writer
(ebpflb.sources.gateway_status_writer, the edge that talks to the API server). Two steps, so
that the writer can tell "changed" with one comparison and still follow the spec's rules for
writing status:

1. `desired_statuses(model, objects)`: per object, what ebpflb has to say about it, without
   times (a `DesiredStatus`): the same model gives equal values, so "nothing changed since the
   last write" is one `==`.
   - GatewayClass (ebpflb's): `conditions` (Accepted).
   - Gateway (of ebpflb's classes): `addresses` [{type: IPAddress, value}], `conditions`
     (Accepted, Programmed), `listeners` [{name, supportedKinds, attachedRoutes, conditions
     (Accepted, ResolvedRefs, Programmed)}].
   - TCPRoute / UDPRoute (every one, so that entries of ebpflb's that are no longer needed are
     removed): `parents`, ebpflb's entries only [{parentRef as written, controllerName,
     conditions (Accepted, ResolvedRefs, and PartiallyInvalid when rules are dropped)}].
   Every condition carries observedGeneration, the object's metadata.generation (when known).
2. `merge_status(kind, desired, live, now)`: that merged into the status the object has now,
   by the spec's rules (gateway-api apis/v1, "Notes for implementors"): conditions are a map
   by type, so only the types ebpflb sets are replaced (others, e.g. `special.io/SomeField`,
   keep their place and value); a condition whose status did not change keeps its
   lastTransitionTime (metav1.Condition: "the last time the condition transitioned from one
   status to another"), so rewriting the same status changes nothing; route parent entries are
   namespaced by (parentRef, controllerName): entries of other controllers are kept as they
   are, in their place. `merge_status(...) == live` means there is nothing to write.

Not written: GatewayClass `SupportedVersion` (experimental channel; it describes the
`gateway.networking.k8s.io/bundle-version` annotation of the installed CRDs, which ebpflb does
not read: it asks the API for the versions it knows, kind by kind, and falls back), and
`supportedFeatures`; listener `Conflicted` (the spec: "if this condition is not set, it is
assumed that there are no conflicts"; two listeners on one port and protocol are refused when
read, and TCP and UDP on one port do not conflict).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .gateway import (ACCEPTED, CONTROLLER_NAME, GATEWAY, GATEWAY_CLASS, PARTIALLY_INVALID,
                      PROGRAMMED, REASON_PENDING, RESOLVED_REFS, ROUTE_KINDS, Condition,
                      GatewayModel, GatewayObjects, ParentRef)

StatusKey = Tuple[str, str, str]  # (kind, namespace, name); namespace "" for a GatewayClass
CONFLICTED = "Conflicted"
# metav1.Condition.message: at most 32768 characters (the API refuses longer ones).
MAX_MESSAGE = 32768
# The condition types ebpflb is responsible for, per place: one of these that ebpflb no longer
# sets is removed; any other type is someone else's and stays as it is.
OWNED_TYPES: Mapping[str, frozenset] = {
    GATEWAY_CLASS: frozenset({ACCEPTED}),
    GATEWAY: frozenset({ACCEPTED, PROGRAMMED}),
    "listener": frozenset({ACCEPTED, RESOLVED_REFS, PROGRAMMED, CONFLICTED}),
    "parent": frozenset({ACCEPTED, RESOLVED_REFS, PARTIALLY_INVALID}),
}


@dataclass(frozen=True)
class DesiredStatus:
    """What ebpflb has to say about one object: `body` is the status without times (the JSON
    shape, ebpflb's parts only); `generation` the metadata.generation it was judged at."""

    generation: Optional[int]
    body: Mapping[str, Any]


def rfc3339(seconds: float) -> str:
    """A metav1.Time as the API writes it: UTC, whole seconds."""
    return datetime.datetime.fromtimestamp(int(seconds), datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


# --- step 1: what ebpflb has to say --------------------------------------------------------
def desired_statuses(model: GatewayModel, objects: GatewayObjects,
                     unprogrammed: Mapping[str, str] = MappingProxyType({}),
                     controller: str = CONTROLLER_NAME) -> Dict[StatusKey, DesiredStatus]:
    """Every object ebpflb writes status for, with that status (see the module docstring).
    `objects` are the ones `model` was made of (their generations are read there).
    `unprogrammed`: Gateways ("namespace/name") whose frontends are not in the maps, with why
    (ebpflb.syncer.Syncer.unprogrammed_gateways): what the model calls Programmed is written
    Programmed False, Pending, with that message, for the Gateway and its listeners."""
    out: Dict[StatusKey, DesiredStatus] = {}
    for cs in model.classes:
        gc = objects.classes.get(cs.name)
        gen = gc.generation if gc is not None else None
        out[(GATEWAY_CLASS, "", cs.name)] = DesiredStatus(
            gen, {"conditions": _conditions(cs.conditions, gen)})
    for gs in model.gateways:
        gw = objects.gateways.get((gs.namespace, gs.name))
        gen = gw.generation if gw is not None else None
        out[(GATEWAY, gs.namespace, gs.name)] = DesiredStatus(gen, {
            "addresses": [{"type": "IPAddress", "value": ip} for ip in gs.addresses],
            "conditions": _conditions(gs.conditions, gen, unprogrammed.get(gs.ref)),
            "listeners": [{"name": li.name,
                           "supportedKinds": [{"group": k.group, "kind": k.kind}
                                              for k in li.supported_kinds],
                           "attachedRoutes": li.attached_routes,
                           "conditions": _conditions(li.conditions, gen,
                                                     unprogrammed.get(gs.ref))}
                          for li in gs.listeners]})
    statuses = {(r.kind, r.namespace, r.name): r for r in model.routes}
    for (kind, namespace, name), route in objects.routes.items():
        rs = statuses.get((kind, namespace, name))
        gen = route.generation
        parents = [{"parentRef": parent_ref_body(p.parent_ref), "controllerName": controller,
                    "conditions": _conditions(p.conditions, gen)}
                   for p in (rs.parents if rs is not None else ())]
        out[(kind, namespace, name)] = DesiredStatus(gen, {"parents": parents})
    return out


def parent_ref_body(ref: ParentRef) -> Dict[str, Any]:
    """A parentRef as the route wrote it (group and kind as the CRD defaults them; namespace,
    sectionName and port only when given)."""
    body: Dict[str, Any] = {"group": ref.group, "kind": ref.kind, "name": ref.name}
    if ref.namespace is not None:
        body["namespace"] = ref.namespace
    if ref.section_name is not None:
        body["sectionName"] = ref.section_name
    if ref.port is not None:
        body["port"] = ref.port
    return body


def _conditions(conditions: Iterable[Condition], generation: Optional[int],
                unprogrammed: Optional[str] = None) -> List[Dict[str, Any]]:
    out = []
    for c in conditions:
        status, reason, message = c.status, c.reason, c.message
        if unprogrammed is not None and c.type == PROGRAMMED and status == "True":
            status, reason, message = "False", REASON_PENDING, unprogrammed
        body: Dict[str, Any] = {"type": c.type, "status": status, "reason": reason,
                                "message": message[:MAX_MESSAGE]}
        if generation is not None:
            body["observedGeneration"] = generation
        out.append(body)
    return out


# --- step 2: merged into what the object has -----------------------------------------------
def stale(desired: DesiredStatus, live_object: Mapping[str, Any]) -> bool:
    """The object has a newer generation than the one ebpflb judged: the spec says not to
    write then ("the implementation's copy of the object is stale"); the newer version is on
    its way through the watch, and the status follows it."""
    gen = (live_object.get("metadata") or {}).get("generation")
    return (desired.generation is not None and isinstance(gen, int)
            and gen > desired.generation)


def merge_status(kind: str, desired: Mapping[str, Any], live: Optional[Mapping[str, Any]],
                 now: str, controller: str = CONTROLLER_NAME) -> Dict[str, Any]:
    """The whole status to write: `desired` (a DesiredStatus body) merged into the object's
    status `live` (None or {} when it has none). Fields ebpflb does not set are kept."""
    live = dict(live or {})
    out = dict(live)
    if kind == GATEWAY_CLASS:
        out["conditions"] = merge_conditions(desired["conditions"], live.get("conditions"),
                                             OWNED_TYPES[GATEWAY_CLASS], now)
    elif kind == GATEWAY:
        if desired["addresses"]:
            out["addresses"] = list(desired["addresses"])
        else:
            out.pop("addresses", None)
        out["conditions"] = merge_conditions(desired["conditions"], live.get("conditions"),
                                             OWNED_TYPES[GATEWAY], now)
        # Listener status is the Gateway's controller's: a listener gone from the spec goes.
        before = {li.get("name"): li for li in _dicts(live.get("listeners"))}
        out["listeners"] = [_merge_entry(li, before.get(li["name"]), "listener", now)
                            for li in desired["listeners"]]
    elif kind in ROUTE_KINDS:
        parents = merge_parents(desired["parents"], live.get("parents"), controller, now)
        if parents or "parents" in live:  # a route no controller wrote for stays without
            out["parents"] = parents
    else:
        raise ValueError(f"no status of kind {kind!r}")
    return out


def merge_parents(desired: Sequence[Mapping[str, Any]], live: Any, controller: str,
                  now: str) -> List[Dict[str, Any]]:
    """Route parents by the spec's rules: entries of another controllerName are kept as they
    are, where they are; ebpflb's are matched by parentRef and updated in place, its entries
    for parentRefs it no longer has a status for are removed, new ones go at the end."""
    out: List[Dict[str, Any]] = []
    used = set()
    for entry in _dicts(live):
        if entry.get("controllerName") != controller:
            out.append(entry)
            continue
        i = next((i for i, d in enumerate(desired)
                  if i not in used and d["parentRef"] == entry.get("parentRef")), None)
        if i is not None:
            used.add(i)
            out.append(_merge_entry(desired[i], entry, "parent", now))
    out.extend(_merge_entry(d, None, "parent", now) for i, d in enumerate(desired) if i not in used)
    return out


def merge_conditions(desired: Sequence[Mapping[str, Any]], live: Any, owned: frozenset,
                     now: str) -> List[Dict[str, Any]]:
    """Conditions as a map by type: ebpflb's types replaced in place (their lastTransitionTime
    kept while their status stays), its types it no longer sets removed, other types kept;
    new ones appended. One condition per type, as the API requires."""
    want = {c["type"]: c for c in desired}
    out: List[Dict[str, Any]] = []
    done = set()
    for c in _dicts(live):
        t = c.get("type")
        if t in want:
            if t not in done:
                out.append(_stamp(want[t], c, now))
                done.add(t)
        elif t not in owned:
            out.append(c)
    out.extend(_stamp(c, None, now) for c in desired if c["type"] not in done)
    return out


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> Dict[str, Any]:
    """The JSON merge patch (RFC 7386) taking `old` to `new`: changed keys, null for removed
    ones; nested mappings as patches of their own, lists whole."""
    patch: Dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if key in old and before == value:
            continue
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            patch[key] = merge_patch(before, value)
        else:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def _merge_entry(desired: Mapping[str, Any], live: Optional[Mapping[str, Any]], place: str,
                 now: str) -> Dict[str, Any]:
    entry = dict(live or {})
    entry.update((k, v) for k, v in desired.items() if k != "conditions")
    entry["conditions"] = merge_conditions(desired["conditions"], (live or {}).get("conditions"),
                                           OWNED_TYPES[place], now)
    return entry


def _stamp(desired: Mapping[str, Any], live: Optional[Mapping[str, Any]],
           now: str) -> Dict[str, Any]:
    since = live.get("lastTransitionTime") if live is not None else None
    if live is None or live.get("status") != desired["status"] or not since:
        since = now
    return {**desired, "lastTransitionTime": since}


def _dicts(value: Any) -> List[Dict[str, Any]]:
    """A list field of a status as read from the API, its entries that are objects (a status
    someone else wrote may hold anything)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


__all__ = ["DesiredStatus", "StatusKey", "desired_statuses", "merge_status", "merge_parents",
           "merge_conditions", "merge_patch", "stale", "parent_ref_body", "rfc3339"]
