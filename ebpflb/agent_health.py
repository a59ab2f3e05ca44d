"""Health endpoints of the agent (an edge beside the pipeline, read by the kubelet's probes):
`/healthz` answers 200 while the process runs; `/readyz` answers 200 once the initial sync is done
and the maps are programmed, 503 with the reason before that. Stdlib http.server in a thread, on
loopback by default (the DaemonSet runs with hostNetwork, and the kubelet probes the node's
loopback)."""
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional, Tuple

from .addresses import format_address, parse_address

log = logging.getLogger(__name__)


# () -> (ready, reason shown when not ready)
ReadyCheck = Callable[[], Tuple[bool, str]]


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, fmt: str, *args) -> None:  # probes every few seconds: not worth a line
        pass

    def _reply(self, code: int, text: str) -> None:
        body = (text + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._reply(200, "ok")
        elif path == "/readyz":
            try:
                ready, reason = self.server.ready()
            except Exception as exc:  # noqa: BLE001 - a probe must answer, never hang or crash
                ready, reason = False, f"readiness check failed: {exc}"
            self._reply(200 if ready else 503, "ready" if ready else f"not ready: {reason}")
        else:
            self._reply(404, "not found (try /healthz or /readyz)")

    do_HEAD = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    ready: ReadyCheck


class BackgroundServer:
    """An HTTP server of the agent on HOST:PORT, answering in a daemon thread. Subclasses name
    their handler, server class, flag (for errors) and paths (for the log); `attrs` are set on
    the server for the handler to read."""

    handler: type = BaseHTTPRequestHandler
    server_class: type = ThreadingHTTPServer
    option = ""
    paths = ""

    def __init__(self, address: str, **attrs) -> None:
        self.host, self.port = parse_address(address)
        self._attrs = attrs
        self._httpd: Optional[ThreadingHTTPServer] = None

    def start(self) -> "BackgroundServer":
        from .metrics import listen_error

        server_class = self.server_class
        if ":" in self.host:  # an IPv6 address: the stdlib servers bind IPv4 unless told
            server_class = type(server_class.__name__, (server_class,),
                                {"address_family": socket.AF_INET6})
        try:
            httpd = server_class((self.host, self.port), self.handler)
        except OSError as exc:
            raise listen_error(self.option, self.host, self.port, exc) from exc
        for name, value in self._attrs.items():
            setattr(httpd, name, value)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, name=self.option.strip("-"),
                         daemon=True).start()
        log.info("%s on http://%s", self.paths, format_address(self.host, self.port))
        return self

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


class HealthServer(BackgroundServer):
    handler = _Handler
    server_class = _Server
    option = "--health-address"
    paths = "/healthz and /readyz"

    def __init__(self, address: str, ready: ReadyCheck) -> None:
        super().__init__(address, ready=ready)
