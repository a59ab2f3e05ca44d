"""Every Service and EndpointSlice the agent knows, indexed by the Service they belong to, and
every Gateway API object (pure core).

sources -> changes -> **store** -> model -> plan -> apply. Applying a batch of changes says which
Services must be looked at again: a Service that changed, and the Service of every EndpointSlice
that changed (both its old and its new Service, should its label have moved). A change to a
Gateway API object (or a Namespace, whose labels allowedRoutes selects by) bumps
`gateway_version` instead: the model then recomputes the Gateways (ebpflb.desired).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Set, Union

from .changes import Change
from .convert import ENDPOINT_SLICE, SERVICE, ObjectKey
from .gateway import (GATEWAY, GATEWAY_CLASS, NAMESPACE, REFERENCE_GRANT, ROUTE_KINDS,
                      GatewayObjects)
from .model import EndpointSlice, Service


class ObjectStore:
    def __init__(self) -> None:
        self.services: Dict[ObjectKey, Service] = {}
        self.slices: Dict[ObjectKey, EndpointSlice] = {}
        # (namespace, service name) -> its one slice, or {slice name: slice} when it has several
        # (most Services have one: a dict each would cost a quarter of a KiB apiece)
        self._by_service: Dict[ObjectKey, Union[EndpointSlice, Dict[str, EndpointSlice]]] = {}
        # The Gateway API objects, in the dicts GatewayObjects reads (cluster-scoped kinds by name).
        self._classes: Dict = {}
        self._gateways: Dict = {}
        self._routes: Dict = {}
        self._grants: Dict = {}
        self._namespaces: Dict = {}
        self.gateway_objects = GatewayObjects(self._classes, self._gateways, self._routes,
                                              self._grants, self._namespaces)
        self.gateway_version = 0  # bumped by every change to one of them

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
            if change.kind not in (SERVICE, ENDPOINT_SLICE):
                self._apply_gateway(change)
                continue
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

    def _apply_gateway(self, change: Change) -> None:
        namespace, name = change.key
        if change.kind == GATEWAY_CLASS:
            table, key = self._classes, name
        elif change.kind == GATEWAY:
            table, key = self._gateways, change.key
        elif change.kind in ROUTE_KINDS:
            table, key = self._routes, (change.kind, namespace, name)
        elif change.kind == REFERENCE_GRANT:
            table, key = self._grants, change.key
        elif change.kind == NAMESPACE:
            table, key = self._namespaces, name
        else:
            raise ValueError(f"{change.kind} {namespace}/{name}: not a kind the store keeps")
        if change.obj is None:
            if table.pop(key, None) is None:
                return
        elif table.get(key) == change.obj:
            return
        else:
            table[key] = change.obj
        self.gateway_version += 1

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
