"""healthCheckNodePort servers: what a cloud load balancer probes to learn which nodes can serve an
externalTrafficPolicy Local Service (kube-proxy's service health server).

A side branch of sources -> model -> plan -> apply: the model's DesiredState.health_checks say
which ports to answer and with how many local endpoints; the agent hands them to
`HealthCheckServers.sync()` after each sync. A probe gets 200 while the Service has a ready
endpoint on this node and 503 otherwise, so the load balancer stops sending traffic that this
node would have to drop (Local policy never hops to another node). Stdlib only, no kernel.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .model import HealthCheck

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0  # seconds a probe connection may stay idle; probes are one short request
POLL_INTERVAL = 0.5  # how often a server's loop checks for shutdown


class _Handler(BaseHTTPRequestHandler):
    """Answers every GET (and HEAD) path alike, as kube-proxy does."""

    server: "_Server"
    timeout = REQUEST_TIMEOUT
    server_version = "ebpflb-healthcheck"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        check = self.server.owner.check(self.server.server_address[1])
        healthy = self.server.owner.proxy_healthy()
        namespace, _, name = (check.service if check else "/").partition("/")
        count = check.local_endpoints if check else 0
        payload = json.dumps({"service": {"namespace": namespace, "name": name},
                              "localEndpoints": count, "serviceProxyHealthy": healthy},
                             indent=2).encode()
        self.send_response(200 if count > 0 and healthy else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Content-Type-Options", "nosniff")
        # kube-proxy's hint for load balancers that weigh nodes by their endpoints
        self.send_header("X-Load-Balancing-Endpoint-Weight", str(count))
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        # Load balancers probe every few seconds: keep that out of stderr.
        log.debug("health check %s: %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck probe never holds up the agent's exit
    allow_reuse_address = True  # rebind at once after a close (TIME_WAIT), never over a listener

    def __init__(self, address: Tuple[str, int], owner: "HealthCheckServers") -> None:
        self.address_family = (socket.AF_INET6 if ipaddress.ip_address(address[0]).version == 6
                               else socket.AF_INET)
        self.owner = owner
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self.server_address[0] == ALL_ADDRESSES:
            # Every address of both families, as kube-proxy's ":port" listener: one socket.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        # A probe that hangs up early is not worth a traceback on stderr.
        log.debug("health check %s: request failed", client_address, exc_info=True)


ALL_ADDRESSES = "::"  # with IPV6_V6ONLY off: every IPv4 and IPv6 address of the node


class HealthCheckServers:
    """One HTTP listener per health check port and bind address, kept in step with the desired
    health checks by `sync()`. Counts change in place (no listener is reopened for that)."""

    def __init__(self, bind_addresses: Sequence[str] = (ALL_ADDRESSES,),
                 proxy_healthy: Optional[Callable[[], bool]] = None) -> None:
        self.bind_addresses = tuple(bind_addresses)
        for address in self.bind_addresses:
            ipaddress.ip_address(address)  # a bad address fails here, not at the first sync
        # kube-proxy answers 503 for every Service while the proxy itself is unhealthy.
        self.proxy_healthy: Callable[[], bool] = proxy_healthy or (lambda: True)
        self._lock = threading.Lock()
        self._checks: Dict[int, HealthCheck] = {}  # replaced whole: readers need no lock
        self._servers: Dict[Tuple[str, int], Tuple[_Server, threading.Thread]] = {}
        self._failed: Dict[Tuple[str, int], str] = {}  # wanted but not listening: the error

    def check(self, port: int) -> Optional[HealthCheck]:
        return self._checks.get(port)

    def sync(self, checks: Sequence[HealthCheck]) -> None:
        """Serve exactly these checks: new ports are opened, dropped ones closed, counts updated.
        A port that cannot be opened is logged and tried again on the next sync."""
        wanted: Dict[int, HealthCheck] = {}
        for check in checks:
            if check.port in wanted:
                log.warning("health check port %d: wanted by %s and %s; answering for %s",
                            check.port, wanted[check.port].service, check.service,
                            wanted[check.port].service)
                continue
            wanted[check.port] = check
        with self._lock:
            self._checks = wanted  # one assignment: a probe sees the old or the new counts
            gone = [key for key in self._servers if key[1] not in wanted]
            self._stop([self._servers.pop(key) for key in gone])
            for key in gone:
                log.info("health check port %d on %s closed", key[1], key[0])
            for key in [key for key in self._failed if key[1] not in wanted]:
                del self._failed[key]
            for port, check in wanted.items():
                for address in self.bind_addresses:
                    if (address, port) not in self._servers:
                        self._open(address, port, check)

    def _open(self, address: str, port: int, check: HealthCheck) -> None:
        try:
            try:
                server = _Server((address, port), self)
            except OSError as exc:
                if address != ALL_ADDRESSES or exc.errno != errno.EAFNOSUPPORT:
                    raise
                server = _Server(("0.0.0.0", port), self)  # a kernel without IPv6
        except OSError as exc:
            # Another process may hold the port (a leftover kube-proxy): keep the rest serving.
            first = (address, port) not in self._failed
            self._failed[(address, port)] = str(exc)
            (log.warning if first else log.debug)(
                "service %s: health check port %d on %s: cannot listen: %s; retrying on the "
                "next sync", check.service, port, address, exc)
            return
        thread = threading.Thread(target=server.serve_forever, args=(POLL_INTERVAL,),
                                  name=f"healthcheck-{port}", daemon=True)
        thread.start()
        self._servers[(address, port)] = (server, thread)
        self._failed.pop((address, port), None)
        log.info("service %s: health check port %d listening on %s", check.service, port, address)

    @staticmethod
    def _stop(servers: List[Tuple[_Server, threading.Thread]]) -> None:
        # shutdown() waits up to a poll interval per server: run them side by side.
        stoppers = [threading.Thread(target=server.shutdown, daemon=True) for server, _ in servers]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        for server, thread in servers:
            server.server_close()
            thread.join(timeout=REQUEST_TIMEOUT)

    def ports(self) -> Tuple[int, ...]:
        """The health check ports listening on at least one bind address, sorted."""
        with self._lock:
            return tuple(sorted({port for _, port in self._servers}))

    def failures(self) -> Dict[Tuple[str, int], str]:
        """(address, port) wanted but not listening, with the error of the last attempt."""
        with self._lock:
            return dict(self._failed)

    def close(self) -> None:
        """Closes every listener; a later sync opens them again."""
        with self._lock:
            self._stop(list(self._servers.values()))
            self._servers.clear()
            self._failed.clear()
            self._checks = {}


__all__ = ["HealthCheckServers"]
