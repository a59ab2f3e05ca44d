"""The desired state, kept per Service and updated one Service at a time (pure core).

sources -> store -> **model** -> plan -> apply. `ClusterModel.update()` recomputes the model of the
Services a batch touched (ebpflb.model.service_model) and settles what one Service cannot settle
alone: a frontend or a healthCheckNodePort asked for by two Services goes to the first by
(namespace, name), as a sorted full computation would give it, and the others are skipped naming
it. Claims are indexed per frontend and per port, so when a holder lets go, only the Services
that asked for the same thing are looked at again: the cost of a change is that of the Services
it touches, whatever the size of the cluster.
"""
from __future__ import annotations

import bisect
import logging
from typing import Dict, Iterable, List, Set, Tuple

from .convert import ObjectKey
from .model import (Backend, DesiredState, Frontend, HealthCheck, ModelContext, ServiceModel,
                    SkippedService, service_model)
from .store import ObjectStore

log = logging.getLogger(__name__)

FrontendKey = Tuple[str, int, str, int]
ServiceFrontends = Tuple[Tuple[Frontend, Tuple[Backend, ...]], ...]


class ClusterModel:
    def __init__(self, ctx: ModelContext = ModelContext()) -> None:
        self.ctx = ctx
        self._models: Dict[ObjectKey, ServiceModel] = {}
        self._frontend_claims: Dict[FrontendKey, List[ObjectKey]] = {}  # sorted claimants
        self._port_claims: Dict[int, List[ObjectKey]] = {}
        self._node_port_services: Set[ObjectKey] = set()
        # The outcome per Service: its frontends (those it holds), why parts are skipped, and
        # its health check when it holds the port.
        self._frontends: Dict[ObjectKey, ServiceFrontends] = {}
        self._skipped: Dict[ObjectKey, Tuple[str, ...]] = {}
        self._health: Dict[ObjectKey, HealthCheck] = {}
        # Bumped whenever the skipped reasons or the health checks change, so a reader of those
        # lists (the agent's status) rebuilds them only then.
        self.version = 0

    # --- updates -------------------------------------------------------------------------
    def update(self, store: ObjectStore, keys: Iterable[ObjectKey]) -> Set[ObjectKey]:
        """Recomputes the Services `keys` names (gone ones included) against the store. Returns
        every Service whose outcome may have changed: those, and those a clash moved."""
        changed: Set[ObjectKey] = set()
        touched_frontends: Set[FrontendKey] = set()
        touched_ports: Set[int] = set()
        for key in keys:
            svc = store.services.get(key)
            new = service_model(svc, store.slices_of(key), self.ctx) if svc is not None else None
            old = self._models.pop(key, None)
            old_fes = {fe.key for fe, _ in old.frontends} if old is not None else set()
            new_fes = {fe.key for fe, _ in new.frontends} if new is not None else set()
            for fk in old_fes - new_fes:
                self._release(self._frontend_claims, fk, key)
                touched_frontends.add(fk)
            for fk in new_fes - old_fes:
                self._claim(self._frontend_claims, fk, key)
                touched_frontends.add(fk)
            old_port = old.health_check.port if old is not None and old.health_check else None
            new_port = new.health_check.port if new is not None and new.health_check else None
            if old_port != new_port:
                if old_port is not None:
                    self._release(self._port_claims, old_port, key)
                    touched_ports.add(old_port)
                if new_port is not None:
                    self._claim(self._port_claims, new_port, key)
                    touched_ports.add(new_port)
            if new is not None:
                self._models[key] = new
                if new.node_ports:
                    self._node_port_services.add(key)
                else:
                    self._node_port_services.discard(key)
            else:
                self._node_port_services.discard(key)
            changed.add(key)
        # Whoever else asked for a frontend or port that changed hands may win or lose it now.
        for fk in touched_frontends:
            changed.update(self._frontend_claims.get(fk, ()))
        for port in touched_ports:
            changed.update(self._port_claims.get(port, ()))
        for key in changed:
            self._settle(key)
        return changed

    def set_context(self, ctx: ModelContext) -> Set[ObjectKey]:
        """New node facts; returns the Services to recompute (with `update`)."""
        old, self.ctx = self.ctx, ctx
        if (old.node_name, old.proxy_name, old.external_ip_allow, old.node_zone) != (
                ctx.node_name, ctx.proxy_name, ctx.external_ip_allow, ctx.node_zone):
            return set(self._models)
        if old.node_addresses != ctx.node_addresses:
            return set(self._node_port_services)
        return set()

    @staticmethod
    def _claim(claims: Dict, what, key: ObjectKey) -> None:
        bisect.insort(claims.setdefault(what, []), key)

    @staticmethod
    def _release(claims: Dict, what, key: ObjectKey) -> None:
        holders = claims.get(what)
        if holders is None:
            return
        i = bisect.bisect_left(holders, key)
        if i < len(holders) and holders[i] == key:
            del holders[i]
        if not holders:
            del claims[what]

    def _settle(self, key: ObjectKey) -> None:
        before = (self._skipped.get(key), self._health.get(key))
        self._settle_outcome(key)
        after = (self._skipped.get(key), self._health.get(key))
        if after != before:
            self.version += 1
            if after[0] and after[0] != before[0]:
                # A Service with frontends is served but for what the reason names.
                how = "partly programmed" if self._frontends.get(key) else "not programmed"
                for reason in after[0]:
                    log.info("service %s/%s: %s: %s", key[0], key[1], how, reason)

    def _settle_outcome(self, key: ObjectKey) -> None:
        model = self._models.get(key)
        if model is None:
            self._frontends.pop(key, None)
            self._skipped.pop(key, None)
            self._health.pop(key, None)
            return
        kept = []
        skipped = list(model.skipped)
        for fe, backends in model.frontends:
            holder = self._frontend_claims[fe.key][0]
            if holder == key:
                kept.append((fe, backends))
            else:
                skipped.append(f"frontend {fe} already used by {holder[0]}/{holder[1]}")
        check = model.health_check
        if check is not None:
            holder = self._port_claims[check.port][0]
            if holder == key:
                self._health[key] = check
            else:
                self._health.pop(key, None)
                skipped.append(f"healthCheckNodePort {check.port} already used by "
                               f"{holder[0]}/{holder[1]}")
        else:
            self._health.pop(key, None)
        if kept:
            self._frontends[key] = tuple(kept)
        else:
            self._frontends.pop(key, None)
        if skipped:
            self._skipped[key] = tuple(dict.fromkeys(skipped))
        else:
            self._skipped.pop(key, None)

    # --- outcome -------------------------------------------------------------------------
    def frontends_of(self, key: ObjectKey) -> ServiceFrontends:
        """The frontends a Service holds, with their backends, in frontend order."""
        return self._frontends.get(key, ())

    def skipped(self) -> Tuple[SkippedService, ...]:
        return tuple(SkippedService(f"{k[0]}/{k[1]}", reason)
                     for k in sorted(self._skipped) for reason in self._skipped[k])

    def health_checks(self) -> Tuple[HealthCheck, ...]:
        """Every health check this node answers, in (namespace, name) order of their Services."""
        return tuple(self._health[k] for k in sorted(self._health))

    def keys(self) -> List[ObjectKey]:
        """Every Service with a model, sorted."""
        return sorted(self._models)

    def holders(self) -> List[ObjectKey]:
        """Every Service that holds at least one frontend, sorted."""
        return sorted(self._frontends)

    def desired_state(self) -> DesiredState:
        frontends: Dict[Frontend, Tuple[Backend, ...]] = {}
        for key in self._frontends:
            frontends.update(self._frontends[key])
        ordered = {fe: frontends[fe] for fe in sorted(frontends)}
        return DesiredState(ordered, self.skipped(), self.health_checks())

