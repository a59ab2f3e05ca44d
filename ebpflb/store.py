"""Every Service and EndpointSlice the agent knows, indexed by the Service they belong to (pure
core).

sources -> changes -> **store** -> model -> plan -> apply. Applying a batch of changes says which
Services must be looked at again: a Service that changed, and the Service of every EndpointSlice
that changed (both its old and its new Service, should its label have moved).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Set

from .changes import Change
from .convert import SERVICE, ObjectKey
from .model import EndpointSlice, Service


class ObjectStore:
    def __init__(self) -> None:
        self.services: Dict[ObjectKey, Service] = {}
        self.slices: Dict[ObjectKey, EndpointSlice] = {}
        # (namespace, service name) -> {slice name: slice}
        self._by_service: Dict[ObjectKey, Dict[str, EndpointSlice]] = {}

    @classmethod
    def of(cls, services: Iterable[Service], slices: Iterable[EndpointSlice]) -> "ObjectStore":
        store = cls()
        store.apply([Change(SERVICE, (s.namespace, s.name), s) for s in services])
        store.apply([Change("EndpointSlice", (s.namespace, s.name), s) for s in slices])
        return store

    def apply(self, changes: Iterable[Change]) -> Set[ObjectKey]:
        """Takes the changes in; returns the keys of the Services they touch."""
        touched: Set[ObjectKey] = set()
        for change in changes:
            if change.kind == SERVICE:
                if change.obj is None:
                    self.services.pop(change.key, None)
                else:
                    self.services[change.key] = change.obj  # type: ignore[assignment]
                touched.add(change.key)
                continue
            namespace, name = change.key
            old = self.slices.pop(change.key, None)
            if old is not None:
                owner = (namespace, old.service_name)
                group = self._by_service.get(owner)
                if group is not None:
                    group.pop(name, None)
                    if not group:
                        del self._by_service[owner]
                touched.add(owner)
            new = change.obj
            if new is not None:
                self.slices[change.key] = new  # type: ignore[assignment]
                owner = (namespace, new.service_name)  # type: ignore[union-attr]
                self._by_service.setdefault(owner, {})[name] = new  # type: ignore[assignment]
                touched.add(owner)
        return touched

    def slices_of(self, service: ObjectKey) -> List[EndpointSlice]:
        """The EndpointSlices labelled with a Service, in name order."""
        group = self._by_service.get(service)
        if not group:
            return []
        return [group[name] for name in sorted(group)]
