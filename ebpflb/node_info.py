"""Facts about this node from its Node object, as the API source hands it over (pure core, beside
the model's context): its zone for endpoint zone hints, and its primary address for
`--nodeport-addresses primary`. The rules are kube-proxy's."""
import ipaddress
from typing import Any, Dict, Optional, Tuple

from .fields import canonical_ip

ZONE_LABEL = "topology.kubernetes.io/zone"


def zone(node: Optional[Dict[str, Any]]) -> Optional[str]:
    labels = ((node or {}).get("metadata") or {}).get("labels") or {}
    value = labels.get(ZONE_LABEL)
    return value if isinstance(value, str) and value else None


def primary_addresses(node: Optional[Dict[str, Any]]) -> Tuple[str, ...]:
    """The node's primary address of each IP family, IPv4 first, as kube-proxy's per-family
    proxiers pick theirs (GetNodeHostIPs): the first of the family among its InternalIP
    addresses, then its ExternalIP ones; () when it has none."""
    addresses = ((node or {}).get("status") or {}).get("addresses") or []
    found: Dict[int, str] = {}
    for kind in ("InternalIP", "ExternalIP"):
        for a in addresses:
            if not isinstance(a, dict) or a.get("type") != kind:
                continue
            try:
                ip = ipaddress.ip_address(str(a.get("address", "")).strip())
                text = canonical_ip(str(ip))  # ValueError for a zoned address too
            except ValueError:
                continue
            found.setdefault(ip.version, text)
    return tuple(found[v] for v in (4, 6) if v in found)


def primary_ipv4(node: Optional[Dict[str, Any]]) -> Optional[str]:
    """The node's primary IPv4 address (primary_addresses), or None."""
    return next((a for a in primary_addresses(node) if ":" not in a), None)
