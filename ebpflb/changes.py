"""What sources hand the agent: changes to single objects, never whole snapshots (pure core).

sources -> **changes** -> store -> model -> plan -> apply. A change names one Service,
EndpointSlice or Gateway API object (GatewayClass, Gateway, TCPRoute, UDPRoute, ReferenceGrant,
and Namespace for its labels) and carries its new model object, or None when it is gone
(deleted, or no longer usable: an EndpointSlice that lost its Service label). Refused objects
produce no change: their last good version stays.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from .convert import ENDPOINT_SLICE, SERVICE, ModelObject, ObjectKey
from .errors import ManifestError
from .gateway import API_VERSIONS

KINDS = (SERVICE, ENDPOINT_SLICE) + tuple(API_VERSIONS)


@dataclass(frozen=True, slots=True)
class Change:
    kind: str  # one of KINDS
    key: ObjectKey  # (namespace, name); namespace "" for cluster-scoped kinds
    obj: Optional[ModelObject]  # None: the object is gone


@dataclass
class ChangeBatch:
    """Everything a source had pending when the agent asked."""

    changes: List[Change] = field(default_factory=list)
    # Wall-clock time of the oldest event in the batch (where programming latency starts).
    since: Optional[float] = None
    # Problems found while producing this batch (refused objects, unreadable files), for logs.
    errors: Tuple[ManifestError, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.changes)
