"""Facts about this node from its Node object, as the API source hands it over (pure core, beside
the model's context): its zone for endpoint zone hints, and its primary address for
`--nodeport-addresses primary`. The rules are kube-proxy's."""
import ipaddress
from typing import Any, Dict, Optional

ZONE_LABEL = "topology.kubernetes.io/zone"


def zone(node: Optional[Dict[str, Any]]) -> Optional[str]:
    labels = ((node or {}).get("metadata") or {}).get("labels") or {}
    value = labels.get(ZONE_LABEL)
    return value if isinstance(value, str) and value else None


def primary_ipv4(node: Optional[Dict[str, Any]]) -> Optional[str]:
    """The node's primary IPv4 address as kube-proxy picks it (GetNodeHostIPs): the first IPv4
    among its InternalIP addresses, then its ExternalIP ones; None when it has none."""
    addresses = ((node or {}).get("status") or {}).get("addresses") or []
    for kind in ("InternalIP", "ExternalIP"):
        for a in addresses:
            if not isinstance(a, dict) or a.get("type") != kind:
                continue
            try:
                ip = ipaddress.ip_address(str(a.get("address", "")).strip())
            except ValueError:
                continue
            if ip.version == 4:
                return str(ip)
    return None
