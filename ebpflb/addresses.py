"""The listen addresses of the agent's HTTP endpoints (an edge beside the pipeline): their defaults
and the parsing of HOST:PORT, one place for the flags, the servers and their errors."""
import ipaddress
from typing import Tuple

DEFAULT_METRICS_ADDRESS = "127.0.0.1:9402"  # Prometheus, loopback by default
DEFAULT_HEALTH_ADDRESS = "127.0.0.1:9403"  # the agent's /healthz and /readyz, for the kubelet
DEFAULT_HEALTHZ_ADDRESS = "0.0.0.0:10256"  # kube-proxy's health server, as kube-proxy binds it

ADDRESS_FORM = ("HOST:PORT (HOST an IP address or a name, an IPv6 address in brackets as in "
                "[::1]:9402; PORT 0-65535)")


def parse_address(value: str) -> Tuple[str, int]:
    """"HOST:PORT" -> (host, port); ValueError naming the value and the form it must have. An
    IPv6 host goes in brackets, as Go's net.SplitHostPort (kube-proxy's flags) wants it."""
    host, sep, port = value.rpartition(":")
    number = int(port) if sep and host and port.isdigit() else -1
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    why = ""
    if sep and not host:
        why = "HOST is missing (0.0.0.0 for every address)"
    elif not 0 <= number <= 65535:
        why = (f"port {port!r} is not 0-65535" if port else "PORT is missing") if sep else ""
    elif ":" in host and not bracketed:
        why = f"an IPv6 address goes in brackets: [{host}]:{port}"
    elif bracketed and not _is_ipv6(host):
        why = f"{host!r} in brackets is not an IPv6 address"
    elif host.replace(".", "").isdigit() and not _is_ip(host):
        why = f"{host!r} is not an IPv4 address"
    else:
        return host, number
    raise ValueError(f"{value!r} is not {ADDRESS_FORM}" + (f": {why}" if why else ""))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_ipv6(host: str) -> bool:
    return _is_ip(host) and ":" in host


def format_address(host: str, port: int) -> str:
    """HOST:PORT as the flags take it back: an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
