"""Frontends and backends -> the map records that program them (pure core).

sources -> store -> model -> **records** -> plan -> apply. `build_records` turns the frontends one
Service holds (or all of them, for a full sync) into records, taking ids from an `IdSource`: a
frontend keeps the service id its key already has, a backend the id it already has under its
frontend, so an unchanged frontend or backend produces equal records and no write.

A frontend's slots are its backends (hash-mod, "random"; a backend of weight w fills w slots) or
its Maglev table (a prime number of slots, so a backend change moves few of them and only the
slots that differ are written). The data path is the same for both: slot = flow hash % count. A
Gateway frontend may also have a reject share: slots holding SLOT_REJECT, where new flows are
refused as if there were no backend.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from ipaddress import ip_network
from typing import Iterable, List, Protocol, Tuple

from .fields import canonical_cidr
from .maglev import DEFAULT_M, maglev_table, validate_m
from .maps import (BE_F_NO_NEW, FRONTEND_KINDS, PROTO_NUMBERS, SVC_F_DROP_EMPTY, SVC_F_ETP_LOCAL,
                   SLOT_REJECT, SVC_F_MAGLEV, SVC_F_TOPO_NODE, SVC_F_TOPO_ZONE,
                   SVC_F_SRC_RANGES, SVC_KIND_SHIFT, SVC_NAME_LEN, BackendValue, Records,
                   SrcRangeKey, SvcKey, SvcValue)
from .model import TOPOLOGY_NODE, TOPOLOGY_NONE, TOPOLOGY_ZONE, Backend, Frontend
from .policy import ALGORITHMS

_KIND_FLAGS = {kind: i << SVC_KIND_SHIFT for i, kind in enumerate(FRONTEND_KINDS)}


@dataclass(frozen=True)
class PlanDefaults:
    """What a Service without lb.ebpflb.io annotations gets (agent flags)."""
    algorithm: str = "random"
    table_size: int = DEFAULT_M

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm {self.algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        validate_m(self.table_size)


class IdSource(Protocol):
    """Where records get their ids: existing ones kept, new ones never in use anywhere."""

    def service_id(self, key: SvcKey) -> int: ...
    def backend_id(self, svc_id: int, addr: str, port: int, proto: int) -> int: ...


_TOPOLOGY_FLAGS = {TOPOLOGY_NODE: SVC_F_TOPO_NODE, TOPOLOGY_ZONE: SVC_F_TOPO_ZONE}


def frontend_key(frontend: Frontend) -> SvcKey:
    return SvcKey(frontend.vip, frontend.port, PROTO_NUMBERS[frontend.protocol], frontend.scope)


def frontend_name(frontend: Frontend) -> str:
    name = f"{frontend.service}:{frontend.port_name}" if frontend.port_name else frontend.service
    # The kernel record holds SVC_NAME_LEN - 1 bytes; cut on a character boundary.
    if len(name) < SVC_NAME_LEN // 4:
        return name  # cannot exceed the limit even in 4-byte characters
    return name.encode()[: SVC_NAME_LEN - 1].decode(errors="ignore")


@lru_cache(maxsize=4096)
def _maglev_cached(names: Tuple[bytes, ...], m: int, weights: Tuple[int, ...]) -> Tuple[int, ...]:
    # Services usually share nothing, but a resync recomputes every table: cache the unchanged.
    return tuple(maglev_table(list(names), m, list(weights)))


# The reject share's name in a Maglev table: not an "ip:port", so never a backend's.
_REJECT_NAME = b"reject"


def frontend_slots(frontend: Frontend, backends: Tuple[Backend, ...],
                   defaults: PlanDefaults) -> Tuple[Tuple[int, ...], int]:
    """Indices into `backends` for each slot of the frontend, and the service flags. The index
    len(backends) is the reject share (policy.reject_weight): its slots hold SLOT_REJECT."""
    policy = frontend.policy
    algorithm = policy.algorithm or defaults.algorithm
    if not policy.weighted and algorithm != "maglev":
        return tuple(range(len(backends))), 0  # the common case, on every plan of every frontend
    weights = policy.weights_of([b.key for b in backends])
    names = tuple(f"{b.ip}:{b.port}".encode() for b in backends)
    if policy.reject_weight:
        # A pseudo-backend of its own: in a Maglev table, moving weight to or from it moves
        # only the flows the change implies, as for any backend.
        weights += (policy.reject_weight,)
        names += (_REJECT_NAME,)
    if algorithm == "maglev":
        if not any(weights):
            return (), SVC_F_MAGLEV
        return _maglev_cached(names, policy.table_size or defaults.table_size, weights), SVC_F_MAGLEV
    return tuple(i for i, w in enumerate(weights) for _ in range(w)), 0


def family_ranges(ranges: Tuple[str, ...], version: int) -> List[str]:
    """The CIDRs of one IP family among a frontend's source ranges, normalized: an IPv4
    frontend's map holds its IPv4 ranges, an IPv6 one's its IPv6 ranges."""
    out = []
    for cidr in ranges:
        net = ip_network(cidr, strict=False)
        text = canonical_cidr(str(net))
        if net.version == version and text not in out:
            out.append(text)
    return out


def build_records(frontends: Iterable[Tuple[Frontend, Tuple[Backend, ...]]], ids: IdSource,
                  defaults: PlanDefaults, out: Records) -> None:
    """Adds the records of `frontends` to `out` (VIP counts included), ids from `ids`. The hot
    loop of a full sync (every frontend of the cluster): the common case (no weights, hash-mod)
    takes the short path."""
    services, slots, backends_out = out.services, out.slots, out.backends
    meta, vips, src_ranges = out.meta, out.vips, out.src_ranges
    backend_id, service_id = ids.backend_id, ids.service_id
    plain_default = defaults.algorithm != "maglev"
    for frontend, backends in frontends:
        proto = PROTO_NUMBERS[frontend.protocol]
        key = SvcKey(frontend.vip, frontend.port, proto, frontend.scope)
        svc_id = service_id(key)
        policy = frontend.policy
        if not policy.weighted and not policy.algorithm and plain_default:
            # Hash-mod without weights: one slot per backend, in backend order.
            backend_ids = []
            for backend in backends:
                ip, port = backend.ip, backend.port
                bid = backend_id(svc_id, ip, port, proto)
                backends_out[bid] = BackendValue(ip, port, proto, svc_id, 0)
                backend_ids.append(bid)
            count = len(backend_ids)
            if count:
                slots[svc_id] = tuple(backend_ids)
            flags = 0
        else:
            # Every backend is programmed, even one of weight 0: it has no slot, but the CLI
            # shows it and its counters go on while its established flows drain.
            weights = policy.weights_of([b.key for b in backends]) if policy.weighted else ()
            backend_ids = []
            for i, backend in enumerate(backends):
                drain = BE_F_NO_NEW if weights and weights[i] == 0 else 0
                bid = backend_id(svc_id, backend.ip, backend.port, proto)
                backends_out[bid] = BackendValue(backend.ip, backend.port, proto, svc_id, drain)
                backend_ids.append(bid)
            slot_indices, flags = frontend_slots(frontend, backends, defaults)
            count = len(slot_indices)
            if count:
                if policy.reject_weight:
                    backend_ids.append(SLOT_REJECT)
                slots[svc_id] = tuple(map(backend_ids.__getitem__, slot_indices))
        flags |= _KIND_FLAGS[frontend.kind]
        if frontend.external_local:
            flags |= SVC_F_ETP_LOCAL
        if not count and frontend.endpoints_elsewhere:
            flags |= SVC_F_DROP_EMPTY
        flags |= _TOPOLOGY_FLAGS.get(frontend.topology, 0)
        ranges = family_ranges(frontend.source_ranges, 6 if ":" in frontend.vip else 4) \
            if frontend.source_ranges else []
        if ranges:
            # Each family is judged by its own ranges, as kube-proxy's per-family proxiers do: a
            # list of IPv6 ranges only restricts IPv6 clients and leaves an IPv4 frontend open.
            flags |= SVC_F_SRC_RANGES
            for cidr in ranges:
                src_ranges[SrcRangeKey(svc_id, cidr)] = 1
        services[key] = SvcValue(svc_id, count, flags, frontend.affinity_timeout)
        meta[svc_id] = frontend_name(frontend)
        vip = frontend.vip
        vips[vip] = vips.get(vip, 0) + 1


def topology_of(flags: int) -> str:
    """The endpoint hints a frontend's record says chose its backends ("" for none): the
    reverse of what frontend_records writes."""
    if flags & SVC_F_TOPO_NODE:
        return TOPOLOGY_NODE
    if flags & SVC_F_TOPO_ZONE:
        return TOPOLOGY_ZONE
    return TOPOLOGY_NONE
