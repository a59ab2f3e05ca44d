"""Every Service and EndpointSlice the agent knows, indexed by the Service they belong to (pure
core).

sources -> changes -> **store** -> model -> plan -> apply. Applying a batch of changes says which
Services must be looked at again: a Service that changed, and the Service of every EndpointSlice
that changed (both its old and its new Service, should its label have moved).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Set, Union

from .changes import Change
from .convert import SERVICE, ObjectKey
from .model import EndpointSlice, Service


class ObjectStore:
    def __init__(self) -> None:
        self.services: Dict[ObjectKey, Service] = {}
        self.slices: Dict[ObjectKey, EndpointSlice] = {}
        # (namespace, service name) -> its one slice, or {slice name: slice} when it has several
        # (most Services have one: a dict each would cost a quarter of a KiB apiece)
        self._by_service: Dict[ObjectKey, Union[EndpointSlice, Dict[str, EndpointSlice]]] = {}

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
                self._unindex(owner, name)
                touched.add(owner)
            new = change.obj
            if new is not None:
                self.slices[change.key] = new  # type: ignore[assignment]
                owner = (namespace, new.service_name)  # type: ignore[union-attr]
                self._index(owner, new)  # type: ignore[arg-type]
                touched.add(owner)
        return touched

    def _index(self, owner: ObjectKey, slice_: EndpointSlice) -> None:
        group = self._by_service.get(owner)
        if group is None or (isinstance(group, EndpointSlice) and group.name == slice_.name):
            self._by_service[owner] = slice_
        elif isinstance(group, EndpointSlice):
            self._by_service[owner] = {group.name: group, slice_.name: slice_}
        else:
            group[slice_.name] = slice_

    def _unindex(self, owner: ObjectKey, name: str) -> None:
        group = self._by_service.get(owner)
        if isinstance(group, EndpointSlice):
            if group.name == name:
                del self._by_service[owner]
        elif group is not None:
            group.pop(name, None)
            if len(group) == 1:
                self._by_service[owner] = next(iter(group.values()))

    def slices_of(self, service: ObjectKey) -> List[EndpointSlice]:
        """The EndpointSlices labelled with a Service, in name order."""
        group = self._by_service.get(service)
        if group is None:
            return []
        if isinstance(group, EndpointSlice):
            return [group]
        return [group[name] for name in sorted(group)]
