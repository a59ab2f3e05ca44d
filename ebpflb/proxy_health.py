"""kube-proxy's health server, for what already probes kube-proxy (an edge beside the pipeline):
cloud load balancers check `:10256/healthz` on every node to decide where to send traffic, and
node problem detectors check `/livez`. Same address, paths, rules and JSON body as kube-proxy's
(pkg/proxy/healthcheck/proxy_health.go):

- healthy unless a change from the source has waited longer than the health timeout to reach the
  maps (kube-proxy: twice its sync period, 60 s by default);
- `/healthz` also answers 503 while this node is not eligible: its Node is being deleted
  (deletionTimestamp) or tainted ToBeDeletedByClusterAutoscaler, so load balancers drain it first;
- `/livez` ignores the node.

The rules are pure functions of the agent's state (tested alone); the server is stdlib
http.server in a thread, on all addresses by default, as kube-proxy's."""
import datetime
import json
import logging
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Optional

from .agent_health import BackgroundServer

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 60.0  # kube-proxy's: 2 x its 30 s sync period
TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"


@dataclass(frozen=True)
class ProxyHealth:
    healthy: bool  # no change waited longer than the timeout
    last_updated: float  # wall clock of the last applied sync (or the start)
    node_eligible: bool


def node_eligible(node: Optional[Dict[str, Any]]) -> bool:
    """kube-proxy's SyncNode: a Node being deleted or tainted for deletion by the cluster
    autoscaler is not eligible; no Node known (yet) is."""
    if not node:
        return True
    if (node.get("metadata") or {}).get("deletionTimestamp"):
        return False
    taints = (node.get("spec") or {}).get("taints") or []
    return not any(isinstance(t, dict) and t.get("key") == TO_BE_DELETED_TAINT for t in taints)


def proxy_health(now: float, unsynced_since: Optional[float], last_updated: float,
                 node: Optional[Dict[str, Any]], timeout: float = HEALTH_TIMEOUT) -> ProxyHealth:
    healthy = unsynced_since is None or now - unsynced_since < timeout
    return ProxyHealth(healthy, last_updated, node_eligible(node))


def go_time(t: float) -> str:
    """A time as kube-proxy prints one (Go's time.Time.String(), in UTC)."""
    dt = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return dt.strftime("%Y-%m-%d %H:%M:%S.") + f"{dt.microsecond * 1000:09d} +0000 UTC"


def body(path: str, state: ProxyHealth, now: float) -> "tuple[int, str]":
    """(status, JSON body) of /healthz or /livez. Healthy answers report lastUpdated as now, as
    kube-proxy does for compatibility with older releases."""
    ok = state.healthy and (state.node_eligible or path == "/livez")
    last = now if ok else state.last_updated
    doc: Dict[str, Any] = {"lastUpdated": go_time(last), "currentTime": go_time(now)}
    if path == "/healthz":
        doc["nodeEligible"] = state.node_eligible
    return (200 if ok else 503), json.dumps(doc)


StateFn = Callable[[], ProxyHealth]


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, fmt: str, *args) -> None:  # probed every few seconds
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        import time

        path = self.path.split("?", 1)[0]
        if path not in ("/healthz", "/livez"):
            code, text, kind = 404, "404 page not found\n", "text/plain; charset=utf-8"
        else:
            try:
                state = self.server.state()
            except Exception as exc:  # noqa: BLE001 - a probe must answer, never hang
                log.warning("health state unreadable: %s", exc)
                state = ProxyHealth(False, 0.0, True)
            code, text = body(path, state, time.time())
            kind = "application/json"
            if self.server.count is not None:
                self.server.count(path, code)
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_HEAD = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    state: StateFn
    count: Optional[Callable[[str, int], None]]


class ProxyHealthServer(BackgroundServer):
    """`count(path, code)`, when given, is called for every answer (kube-proxy's
    proxy_healthz_total and proxy_livez_total)."""

    handler = _Handler
    server_class = _Server
    option = "--healthz-bind-address"
    paths = "kube-proxy health: /healthz and /livez"

    def __init__(self, address: str, state: StateFn,
                 count: Optional[Callable[[str, int], None]] = None) -> None:
        super().__init__(address, state=state, count=count)
