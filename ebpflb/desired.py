"""The desired state, kept per Service and updated one Service at a time (pure core).

sources -> store -> **model** -> plan -> apply. `ClusterModel.update()` recomputes the model of the
Services a batch touched (ebpflb.model.service_model) and settles what one Service cannot settle
alone: a frontend or a healthCheckNodePort asked for by two Services goes to the first by
(namespace, name), as a sorted full computation would give it, and the others are skipped naming
it. Claims are indexed per frontend and per port, so when a holder lets go, only the Services
that asked for the same thing are looked at again: the cost of a change is that of the Services
it touches, whatever the size of the cluster.

Gateways (ebpflb.gateway) are recomputed together, and only when something they read changed:
a Gateway API object, a Service a route names (or its EndpointSlices), or a Service frontend on
an address and port a listener asks for. Services hold their frontends first; a listener asking
for one of them is refused (PortUnavailable). Each Gateway owns its listeners' frontends, under
a `GatewayOwner`, beside the Services. A Gateway's addresses must be inside the agent's
--external-ip-allow, as externalIPs must (whoever may create one names them).
"""
from __future__ import annotations

import bisect
import ipaddress
import logging
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterable, List, Set, Tuple, Union

from .changes import Change
from .convert import ObjectKey
from .gateway import (GATEWAY_DISPLAY, GatewayModel, condition, gateway_model, is_ours,
                      referenced_services)
from .model import (SCOPE_ALL, SCOPE_EXTERNAL, Backend, DesiredState, EndpointSlice, Frontend,
                    HealthCheck, ModelContext, Service, ServiceModel, SkippedService,
                    service_model)
from .store import ObjectStore

log = logging.getLogger(__name__)

FrontendKey = Tuple[str, int, str, int]
ServiceFrontends = Tuple[Tuple[Frontend, Tuple[Backend, ...]], ...]


@dataclass(frozen=True, order=True)
class GatewayOwner:
    """The owner of one Gateway's frontends in the model and the planner (not a tuple, so it
    never equals a Service's (namespace, name))."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{GATEWAY_DISPLAY} {self.namespace}/{self.name}"


Owner = Union[ObjectKey, GatewayOwner]


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
        # Gateways: the last model, what it read, and the frontends each Gateway owns.
        self.gateways: GatewayModel = GatewayModel((), (), (), ())
        self._gateway_seen = -1  # the store's gateway_version the model was computed at
        self._gateway_services: FrozenSet[ObjectKey] = frozenset()
        self._gateway_wanted: Set[Tuple[str, int, str]] = set()  # (address, port, protocol)
        self._gateway_frontends: Dict[GatewayOwner, ServiceFrontends] = {}
        self._gateway_skipped: Tuple[SkippedService, ...] = ()

    # --- updates -------------------------------------------------------------------------
    def update(self, store: ObjectStore, keys: Iterable[ObjectKey]) -> Set[Owner]:
        """Recomputes the Services `keys` names (gone ones included) against the store, and the
        Gateways when something they read changed. Returns every owner whose outcome may have
        changed: those Services, those a clash moved, and the Gateways whose frontends
        changed."""
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
        if (store.gateway_version != self._gateway_seen
                or not self._gateway_services.isdisjoint(changed)
                or any(fk[:3] in self._gateway_wanted for fk in touched_frontends)):
            return changed | self._update_gateways(store)  # type: ignore[operator]
        return changed  # type: ignore[return-value]

    def _update_gateways(self, store: ObjectStore) -> Set[GatewayOwner]:
        """Recomputes every Gateway (they are few, and judged together: the oldest holds an
        address and port); returns the Gateways whose frontends changed."""
        objects = store.gateway_objects
        ours = {name for name, c in objects.classes.items() if is_ours(c)}
        wanted = {(a.value, li.port, li.protocol)
                  for gw in objects.gateways.values() if gw.gateway_class_name in ours
                  for a in gw.addresses if a.value for li in gw.listeners}
        taken: Dict[Tuple[str, int, str], str] = {}
        for ip, port, proto in wanted:
            for scope in (SCOPE_ALL, SCOPE_EXTERNAL):
                holders = self._frontend_claims.get((ip, port, proto, scope))
                if holders:
                    taken[ip, port, proto] = f"Service {holders[0][0]}/{holders[0][1]}"
                    break
        allowed = [ipaddress.ip_network(c) for c in self.ctx.external_ip_allow]
        self.gateways = gateway_model(objects, store, taken, lambda ip: any(
            ipaddress.ip_address(ip) in net for net in allowed
            if net.version == ipaddress.ip_address(ip).version))
        self._gateway_seen = store.gateway_version
        self._gateway_services = referenced_services(objects)
        self._gateway_wanted = wanted
        new: Dict[GatewayOwner, ServiceFrontends] = {}
        for gf in self.gateways.frontends:
            namespace, _, name = gf.gateway.partition("/")
            owner = GatewayOwner(namespace, name)
            new[owner] = new.get(owner, ()) + (gf.to_frontend(),)
        changed = {owner for owner in set(new) | set(self._gateway_frontends)
                   if _signature(new.get(owner, ())) != _signature(
                       self._gateway_frontends.get(owner, ()))}
        self._gateway_frontends = new
        skipped = self._unprogrammed(self.gateways)
        if changed or skipped != self._gateway_skipped:
            self._gateway_skipped = skipped
            self.version += 1
        return changed

    def set_context(self, ctx: ModelContext) -> Set[ObjectKey]:
        """New node facts; returns the Services to recompute (with `update`)."""
        old, self.ctx = self.ctx, ctx
        if old.external_ip_allow != ctx.external_ip_allow:
            self._gateway_seen = -1  # Gateway addresses are judged by it too
        if (old.node_name, old.proxy_name, old.external_ip_allow, old.node_zone) != (
                ctx.node_name, ctx.proxy_name, ctx.external_ip_allow, ctx.node_zone):
            return set(self._models)
        if old.node_addresses != ctx.node_addresses:
            return set(self._node_port_services)
        return set()

    @property
    def gateways_stale(self) -> bool:
        """The Gateways must be recomputed (by the next update) whatever it touches."""
        return self._gateway_seen < 0

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
    def frontends_of(self, key: Owner) -> ServiceFrontends:
        """The frontends a Service (or a Gateway) holds, with their backends, in frontend
        order."""
        if isinstance(key, GatewayOwner):
            return self._gateway_frontends.get(key, ())
        return self._frontends.get(key, ())

    def skipped(self) -> Tuple[SkippedService, ...]:
        """Why Services (in part) and Gateways (named "Gateway namespace/name") are not
        programmed."""
        services = tuple(SkippedService(f"{k[0]}/{k[1]}", reason)
                         for k in sorted(self._skipped) for reason in self._skipped[k])
        return services + self._gateway_skipped

    @staticmethod
    def _unprogrammed(model: GatewayModel) -> Tuple[SkippedService, ...]:
        out = []
        for g in model.gateways:
            programmed = condition(g.conditions, "Programmed")
            if programmed is not None and programmed.status != "True":
                out.append(SkippedService(f"{GATEWAY_DISPLAY} {g.ref}",
                                          f"{programmed.reason}: {programmed.message}"))
            for li in g.listeners:
                accepted = condition(li.conditions, "Accepted")
                if accepted is not None and accepted.status != "True":
                    out.append(SkippedService(f"{GATEWAY_DISPLAY} {g.ref}",
                                              f"listener {li.name}: {accepted.reason}: "
                                              f"{accepted.message}"))
        return tuple(out)

    def health_checks(self) -> Tuple[HealthCheck, ...]:
        """Every health check this node answers, in (namespace, name) order of their Services."""
        return tuple(self._health[k] for k in sorted(self._health))

    def keys(self) -> List[ObjectKey]:
        """Every Service with a model, sorted."""
        return sorted(self._models)

    def holders(self) -> List[Owner]:
        """Every Service that holds at least one frontend, sorted, then every Gateway that
        does."""
        return sorted(self._frontends) + sorted(self._gateway_frontends)  # type: ignore[operator]

    def desired_state(self) -> DesiredState:
        frontends: Dict[Frontend, Tuple[Backend, ...]] = {}
        for key in self._frontends:
            frontends.update(self._frontends[key])
        for owned in self._gateway_frontends.values():
            frontends.update(owned)
        ordered = {fe: frontends[fe] for fe in sorted(frontends)}
        return DesiredState(ordered, self.skipped(), self.health_checks())


def cluster_model(services: Iterable[Service], slices: Iterable[EndpointSlice],
                  ctx: ModelContext = ModelContext(),
                  gateway: Iterable[Tuple[str, ObjectKey, Any]] = ()) -> ClusterModel:
    """The model of a whole set of objects at once (the one-shot commands, `gateway list`):
    `gateway` holds the Gateway API objects (and Namespaces) as (kind, key, object)."""
    store = ObjectStore.of(services, slices)
    store.apply([Change(kind, key, obj) for kind, key, obj in gateway])
    model = ClusterModel(ctx)
    model.update(store, list(store.services))
    return model


def _signature(frontends: ServiceFrontends) -> Tuple:
    """What programming a frontend depends on: Frontend compares by key only, so its policy
    (the Gateway's weights) and names are compared here."""
    return tuple((fe, fe.policy, fe.service, fe.port_name, backends) for fe, backends in frontends)
