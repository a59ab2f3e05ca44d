"""Which endpoint addresses must never become backends (pure core, between sources and model).

sources -> **model** -> plan -> apply. An EndpointSlice is written by whoever may write slices,
not only by the EndpointSlice controller: CVE-2021-25740 showed that a slice (or Endpoints
object) pointing at loopback, at the node's link-local addresses (169.254.169.254 is the cloud
metadata service) or at another Service's ClusterIP lets its author reach what they could not
reach directly, through the load balancer. The Kubernetes API server refuses some of these for
Endpoints; nothing refuses them for a manifest on disk, so ebpflb refuses them itself:

    0.0.0.0/8         unspecified ("this network"): never a destination
    127.0.0.0/8       loopback: the node itself
    169.254.0.0/16    link-local, including the cloud metadata address 169.254.169.254
    224.0.0.0/4       multicast
    255.255.255.255   limited broadcast
    the Service CIDR(s)  a ClusterIP as a backend would loop through the load balancer

The manifest parser calls `forbidden_backend` for every address of an IPv4 slice (so the error
carries its file and line); `check_backends` applies the same rule to Manifests built any other
way. The 240.0.0.0/4 block is not refused: some clusters (GKE) use it for pods.
"""
from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

from .errors import ManifestError, ManifestErrors

if TYPE_CHECKING:  # only for type hints
    from .manifests import Manifests

# Kubernetes' default --service-cluster-ip-range. A cluster with another range must say so
# (agent flag), or its own ClusterIPs will not be refused as backends.
DEFAULT_SERVICE_CIDRS: Tuple[str, ...] = ("10.96.0.0/12",)
METADATA_ADDRESS = ipaddress.IPv4Address("169.254.169.254")
# The IPv6 address of the cloud metadata service (AWS IMDS): a ULA, so no rule below catches it.
METADATA_ADDRESS6 = ipaddress.IPv6Address("fd00:ec2::254")
# NAT64 (RFC 6052): an address in the well-known prefix reaches the IPv4 address it embeds, which
# the IPv4 rules judge. The local-use translation prefix (RFC 8215) holds ebpflb's own IPv6
# hairpin source (64:ff9b:1::a9fe:2a01), never a backend.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOCAL_TRANSLATION = ipaddress.IPv6Network("64:ff9b:1::/48")

_Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


@lru_cache(maxsize=64)
def parse_service_cidrs(service_cidrs: Tuple[str, ...]) -> Tuple[_Network, ...]:
    """The Service ranges as networks; ValueError naming the bad entry (a configuration error,
    not a manifest one). Host bits set are refused, as kube-apiserver refuses them."""
    out: List[_Network] = []
    for cidr in service_cidrs:
        if not isinstance(cidr, str):
            raise ValueError(f"service CIDR {cidr!r} is not a string")
        try:
            out.append(ipaddress.ip_network(cidr.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(f"service CIDR {cidr!r} is not a valid network: {exc}") from None
    return tuple(out)


def forbidden_backend(ip: str, service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS) -> Optional[str]:
    """Why `ip` must not be a backend, or None when it may be. `ip` must be a valid address
    (ValueError otherwise); IPv6 gets the same rules (loopback, link-local, unspecified,
    multicast, Service range), an IPv4-mapped IPv6 address the IPv4 ones."""
    if ":" not in ip:
        return _forbidden_ipv4(ip, tuple(service_cidrs))
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        reason = forbidden_backend(str(addr.ipv4_mapped), service_cidrs)
        return f"{ip} is IPv4-mapped: {reason}" if reason else None
    if isinstance(addr, ipaddress.IPv6Address) and addr in _NAT64:
        embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        reason = _forbidden_ipv4(str(embedded), tuple(service_cidrs))
        return f"{ip} is NAT64 for {embedded}: {reason}" if reason else None
    if isinstance(addr, ipaddress.IPv6Address) and addr in _LOCAL_TRANSLATION:
        return f"{ip} is in {_LOCAL_TRANSLATION} (local-use translation, ebpflb's hairpin source)"
    if addr.is_unspecified:
        return f"{ip} is the unspecified address"
    if isinstance(addr, ipaddress.IPv4Address) and addr in _THIS_NETWORK:
        return f"{ip} is in {_THIS_NETWORK} (this network, never a destination)"
    if addr.is_loopback:
        return f"{ip} is a loopback address"
    if addr == METADATA_ADDRESS:
        return f"{ip} is link-local (cloud metadata service)"
    if addr == METADATA_ADDRESS6:
        return f"{ip} is the cloud metadata service"
    if addr.is_link_local:
        return f"{ip} is link-local"
    if addr.is_multicast:
        return f"{ip} is a multicast address"
    if addr == _BROADCAST:
        return f"{ip} is the broadcast address"
    for net in parse_service_cidrs(tuple(service_cidrs)):
        if addr.version == net.version and addr in net:
            return f"{ip} is inside the Service range {net}"
    return None


def _forbidden_ipv4(ip: str, service_cidrs: Tuple[str, ...]) -> Optional[str]:
    """forbidden_backend for an IPv4 address, on integers: every endpoint of every slice comes
    through here, and `ipaddress` objects cost microseconds each."""
    try:
        n = int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
    except (OSError, ValueError):
        raise ValueError(f"{ip!r} does not appear to be an IPv4 or IPv6 address") from None
    if n == 0:
        return f"{ip} is the unspecified address"
    if n >> 24 == 0:
        return f"{ip} is in {_THIS_NETWORK} (this network, never a destination)"
    if n >> 24 == 127:
        return f"{ip} is a loopback address"
    if n == _METADATA_INT:
        return f"{ip} is link-local (cloud metadata service)"
    if n >> 16 == 0xA9FE:
        return f"{ip} is link-local"
    if n >> 28 == 0xE:
        return f"{ip} is a multicast address"
    if n == 0xFFFFFFFF:
        return f"{ip} is the broadcast address"
    for net, low, high in _ipv4_ranges(service_cidrs):
        if low <= n <= high:
            return f"{ip} is inside the Service range {net}"
    return None


_METADATA_INT = int(METADATA_ADDRESS)


@lru_cache(maxsize=64)
def _ipv4_ranges(service_cidrs: Tuple[str, ...]) -> Tuple[Tuple[_Network, int, int], ...]:
    return tuple((net, int(net.network_address), int(net.broadcast_address))
                 for net in parse_service_cidrs(service_cidrs) if net.version == 4)


def check_backends(manifests: "Manifests", service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS,
                   source: str = "") -> None:
    """Refuses Manifests (from any source) holding an endpoint address (IPv4 or IPv6) that must
    not be a backend: ManifestErrors with one error per address, naming the slice and the field.
    Lines are unknown here; the manifest parser reports the same errors with lines."""
    parse_service_cidrs(tuple(service_cidrs))  # a bad range is a ValueError even with no slice
    errors = []
    for s in manifests.slices:
        if s.address_type not in ("IPv4", "IPv6"):
            continue  # FQDN slices are never programmed
        for i, ep in enumerate(s.endpoints):
            for k, ip in enumerate(ep.addresses):
                try:
                    reason = forbidden_backend(ip, service_cidrs)
                except ValueError:
                    reason = f"{ip!r} is not a valid IP address"
                if reason:
                    errors.append(ManifestError(source, f"EndpointSlice {s.namespace}/{s.name}",
                                                f"endpoints[{i}].addresses[{k}]",
                                                backend_message(reason)))
    if errors:
        raise ManifestErrors(errors)


def backend_message(reason: str) -> str:
    """The error message for a refused address (one wording for the parser and check_backends)."""
    return f"{reason}: not allowed as a backend"


def in_service_range(ip: str, service_cidrs: Sequence[str]) -> bool:
    """True when a cluster IP lies in one of the Service ranges of its IP family. An address
    family with no range configured is not judged (the default range is Kubernetes' IPv4 one: a
    dual-stack cluster names its IPv6 range with --service-cidr)."""
    addr = ipaddress.ip_address(ip)
    ranges = [n for n in parse_service_cidrs(tuple(service_cidrs)) if n.version == addr.version]
    return not ranges or any(addr in n for n in ranges)
