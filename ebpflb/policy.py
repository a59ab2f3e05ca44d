"""Per-Service load-balancing policy from annotations (pure core, between manifests and model).

    lb.ebpflb.io/algorithm: random | maglev        (default: the agent's --algorithm)
    lb.ebpflb.io/maglev-table-size: "16381"        (a prime; default: the agent's --maglev-table-size)
    lb.ebpflb.io/backend-weights: "10.244.0.11=0,10.244.0.12=3"   (unlisted backends weigh 1)

A weight of 0 takes a backend out of new-flow selection while its established flows go on
(conntrack keeps them): the way to drain a pod without removing it.
"""
import ipaddress
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple

from .fields import canonical_ip

ALGORITHM_ANNOTATION = "lb.ebpflb.io/algorithm"
TABLE_SIZE_ANNOTATION = "lb.ebpflb.io/maglev-table-size"
WEIGHTS_ANNOTATION = "lb.ebpflb.io/backend-weights"
ALGORITHMS = ("random", "maglev")
MAX_WEIGHT = 100  # hash-mod repeats a backend once per unit of weight; keep tables small


@dataclass(frozen=True, slots=True)
class LbPolicy:
    algorithm: Optional[str] = None
    table_size: Optional[int] = None
    weights: Tuple[Tuple[str, int], ...] = ()  # by backend IP (the annotation)
    # By backend (IP, port), before `weights`: a Gateway listener's backends, where one pod may be
    # an endpoint of two backendRefs on two ports with two shares.
    endpoint_weights: Tuple[Tuple[str, int, int], ...] = ()  # (ip, port, weight)
    # Slots that refuse new flows, on the scale of the weights: a Gateway route's backendRefs
    # that do not resolve keep their share, and the spec wants that traffic rejected.
    reject_weight: int = 0

    @property
    def weighted(self) -> bool:
        """Not every backend weighs 1: some may weigh 0 (draining), and slots follow weights."""
        return bool(self.weights or self.endpoint_weights or self.reject_weight)

    def weight(self, ip: str) -> int:
        return dict(self.weights).get(ip, 1)

    def weights_of(self, backends: Sequence[Tuple[str, int]]) -> Tuple[int, ...]:
        """The weight of each (ip, port), in order: by endpoint, else by IP, else 1."""
        by_ip = dict(self.weights)
        by_endpoint = {(ip, port): w for ip, port, w in self.endpoint_weights}
        return tuple(by_endpoint.get((ip, port), by_ip.get(ip, 1)) for ip, port in backends)


DEFAULT_POLICY = LbPolicy()


def parse_policy(annotations: Mapping[str, str]) -> Tuple[LbPolicy, List[Tuple[str, str]]]:
    """The policy, and the problems found as (annotation, message); a bad value is left at its
    default so callers can still report every problem at once."""
    from .maglev import validate_m  # the table-size rule belongs to the Maglev module

    errors: List[Tuple[str, str]] = []
    algorithm = annotations.get(ALGORITHM_ANNOTATION)
    if algorithm is not None and algorithm not in ALGORITHMS:
        errors.append((ALGORITHM_ANNOTATION, f"{algorithm!r} is not one of {', '.join(ALGORITHMS)}"))
        algorithm = None
    table_size: Optional[int] = None
    raw = annotations.get(TABLE_SIZE_ANNOTATION)
    if raw is not None:
        try:
            table_size = int(raw)
            validate_m(table_size)
        except ValueError as exc:
            errors.append((TABLE_SIZE_ANNOTATION, f"{raw!r}: {exc}" if table_size is not None
                           else f"{raw!r} is not an integer"))
            table_size = None
    weights = []
    raw = annotations.get(WEIGHTS_ANNOTATION)
    for item in (raw or "").split(","):
        if not item.strip():
            continue
        ip, sep, value = item.strip().partition("=")
        try:
            # An IPv6 address as the backend's record spells it (compressed, lower case).
            ipaddress.ip_address(ip)
            ip = canonical_ip(ip)
            weight = int(value) if sep else -1
        except ValueError:
            weight = -1
        if not 0 <= weight <= MAX_WEIGHT:
            errors.append((WEIGHTS_ANNOTATION,
                           f"{item.strip()!r} is not IP=WEIGHT (an IPv4 or IPv6 address) with "
                           f"WEIGHT in 0-{MAX_WEIGHT}"))
            continue
        weights.append((ip, weight))
    if algorithm is None and table_size is None and not weights:
        return DEFAULT_POLICY, errors  # one object for every Service without annotations
    return LbPolicy(algorithm, table_size, tuple(sorted(weights))), errors
