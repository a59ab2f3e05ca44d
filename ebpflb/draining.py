"""Draining frontends: a TCP frontend that goes away (its Service deleted, its port changed)
keeps a record in the maps while flows it translated are still open (pure core).

sources -> store -> model -> records -> **planner** -> apply. kube-proxy leaves established TCP
connections to a removed Service port alone (their conntrack entries keep the DNAT until they
close); so do we. The planner turns the removal of a TCP frontend into its draining record: the
same key and service id, no slots (no new flow is served: the programs treat it as no
frontend), the LB4_SVC_F_DRAINING flag, and its name. Its backends, slots and source ranges go at
once. The programs find an open flow's conntrack entry through the record and go on translating
it. The agent's conntrack GC reports which service ids still have flows, and the planner drops the
records of those that have none (`Planner.release_drained`). UDP frontends are not drained:
their flows are purged with them, as kube-proxy clears UDP conntrack entries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet, Mapping

from .maps import (PROTO_NUMBERS, SVC_F_DRAINING, SVC_F_ETP_LOCAL, SVC_F_SRC_RANGES, Records,
                   SvcKey, SvcValue)


@dataclass(frozen=True, order=True)
class Draining:
    """The planner's owner of a draining record (a Service owns the live ones)."""
    key: SvcKey

    def __str__(self) -> str:
        return f"draining frontend {self.key}"


def drains(key: SvcKey) -> bool:
    """Whether a frontend that goes away keeps a record for its open flows."""
    return key.proto == PROTO_NUMBERS["TCP"]


def is_draining(value: SvcValue) -> bool:
    return bool(value.flags & SVC_F_DRAINING)


def drained_records(key: SvcKey, value: SvcValue, name: str) -> Records:
    """The records a frontend keeps while it drains. The VIP still counts: its address stays a
    frontend address (a packet from it is not a pod's) while flows to it are open."""
    # Without the Local policy flag, the programs on node devices reach flows from outside
    # through this record too; those flows hold the id of the node-local (@external) record,
    # which drains beside it, and the two go together (`still_open`).
    flags = (value.flags & ~(SVC_F_SRC_RANGES | SVC_F_ETP_LOCAL)) | SVC_F_DRAINING
    return Records(services={key: SvcValue(value.svc_id, 0, flags, 0)},
                   meta={value.svc_id: name} if name else {}, vips={key.vip: 1})


def still_open(key: SvcKey, svc_id: int, draining: Mapping[SvcKey, int],
               live_svc_ids: AbstractSet[int]) -> bool:
    """Whether a draining frontend must stay: conntrack holds flows of it, or of the other scope
    of the same key while that one drains too (flows from outside to an externalTrafficPolicy
    Local frontend hold the @external record's id, but the programs find them through the
    record for every client: the pair goes together)."""
    if svc_id in live_svc_ids:
        return True
    sibling = draining.get(key._replace(scope=1 - key.scope))
    return sibling is not None and sibling in live_svc_ids


def without_draining(records: Records) -> Records:
    """The records with the draining frontends taken out (their VIP counts too): what the live
    Services program."""
    out = records.copy()
    for key, value in records.services.items():
        if not is_draining(value):
            continue
        del out.services[key]
        out.meta.pop(value.svc_id, None)
        n = out.vips.get(key.vip, 0) - 1
        if n > 0:
            out.vips[key.vip] = n
        else:
            out.vips.pop(key.vip, None)
    return out
