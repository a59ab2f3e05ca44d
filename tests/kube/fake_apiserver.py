"""A FAKE kube-apiserver for tests: real HTTP on 127.0.0.1 (threaded http.server), speaking the
list/watch protocol the way kube-apiserver does for the three resources ebpflb reads.

- `GET /api/v1/services`, `/apis/discovery.k8s.io/v1/endpointslices`, `/api/v1/nodes`: a JSON
  list (`ServiceList`...) whose `metadata.resourceVersion` is the store's current version; items
  carry no kind/apiVersion, as the real server sends them. `?limit=N` pages it: `metadata.continue`
  names the rest of the same snapshot; an unknown continue token gets 410 Expired.
- `?watch=true&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=T`: a chunked stream of
  JSON lines `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}`: every event after N,
  then new ones as they happen, a BOOKMARK every `bookmark_interval` seconds, until T elapses.
  Watching from a version older than the compaction point gets an ERROR event carrying a 410
  Status (`Expired`), as etcd compaction makes the real server do.
- Test controls: `drop_watches()` cuts every open watch mid-stream (no terminating chunk),
  `go_away()` / `come_back()` close and reopen the listening socket (connections refused
  meanwhile), `compact()` forgets the event history, and `counts` counts list and watch requests
  per resource so a test can tell "resumed without a relist" from "relisted".

One resourceVersion sequence is shared by all resources, like etcd's revision. `netns` makes the
listening socket in that network namespace (the lab's node), so an agent there reaches it on its
own loopback.
"""
from __future__ import annotations

import bisect
import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlparse

PATHS = {
    "/api/v1/services": ("services", "ServiceList", "v1"),
    "/apis/discovery.k8s.io/v1/endpointslices": ("endpointslices", "EndpointSliceList",
                                                  "discovery.k8s.io/v1"),
    "/api/v1/nodes": ("nodes", "NodeList", "v1"),
}
RESOURCES = ("services", "endpointslices", "nodes")

Key = Tuple[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: "FakeApiServer"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: tests read counters instead
        pass

    def setup(self) -> None:
        # As kube-apiserver's sockets (Go sets TCP_NODELAY on every TCP connection): a watch
        # event is one small write, and Nagle's algorithm would hold it for the client's
        # delayed ACK (tens of milliseconds).
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    def _json(self, code: int, body: Dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        fake = self.server.fake
        url = urlparse(self.path)
        if url.path not in PATHS:
            self._json(404, status(404, "NotFound", f"the server could not find {url.path}"))
            return
        resource, list_kind, api_version = PATHS[url.path]
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        fake.selectors[resource] = q.get("fieldSelector")
        if q.get("watch", "").lower() in ("true", "1"):
            with fake.cond:
                # Counted and bound to the drop epoch at once: a watch the test has seen counted
                # is one drop_watches() cuts.
                fake.counts[f"watch {resource}"] += 1
                epoch = fake.drop_epoch
            self._watch(fake, resource, q, epoch)
        else:
            limit = int(q.get("limit") or 0)
            token = q.get("continue")
            with fake.cond:
                if token:
                    snapshot = fake.snapshots.pop(token, None)
                    if snapshot is None:  # as the server answers a continue token past compaction
                        self._json(410, status(410, "Expired", "the continue token has expired"))
                        return
                    items, rv = snapshot
                else:
                    fake.counts[f"list {resource}"] += 1
                    items = [o for (_, o) in sorted(fake.store[resource].items())
                             if _selected(o, q)]
                    rv = str(fake.rv)
                meta: Dict[str, Any] = {"resourceVersion": rv}
                if limit and len(items) > limit:
                    # Pages of one snapshot, at the first page's resourceVersion.
                    meta["continue"] = next_token = f"{rv}-{len(fake.snapshots)}-{id(items)}"
                    fake.snapshots[next_token] = (items[limit:], rv)
                    items = items[:limit]
                    fake.counts[f"page {resource}"] += 1
            self._json(200, {"kind": list_kind, "apiVersion": api_version,
                             "metadata": meta, "items": items})

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch(self, fake: "FakeApiServer", resource: str, q: Dict[str, str], epoch: int) -> None:
        since = int(q.get("resourceVersion") or 0)
        timeout = float(q.get("timeoutSeconds") or 1800)
        bookmarks = q.get("allowWatchBookmarks", "").lower() in ("true", "1")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.monotonic() + timeout
        with fake.cond:
            gone = since and since < fake.compacted
        if gone:
            self._chunk(json.dumps({"type": "ERROR", "object": status(
                410, "Expired", f"too old resource version: {since} ({fake.compacted})")}
            ).encode() + b"\n")
            self._chunk(b"")
            return
        sent = since
        last_bookmark = time.monotonic()
        try:
            while True:
                with fake.cond:
                    while True:
                        if fake.drop_epoch != epoch:
                            raise ConnectionAbortedError("dropped by the test")
                        # History is in resourceVersion order: look only past `sent`.
                        start = bisect.bisect_right(fake.history, (sent, "\uffff"))
                        pending = [e for e in fake.history[start:]
                                   if e[1] == resource and _selected(e[3], q)]
                        now = time.monotonic()
                        if pending or now >= deadline or (
                                bookmarks and now - last_bookmark >= fake.bookmark_interval):
                            break
                        fake.cond.wait(min(deadline - now, fake.bookmark_interval, 0.5))
                    current = fake.rv
                for rv, _, etype, obj in pending:
                    self._chunk(json.dumps({"type": etype, "object": obj}).encode() + b"\n")
                    sent = rv
                if not pending:
                    sent = max(sent, current)
                if bookmarks and time.monotonic() - last_bookmark >= fake.bookmark_interval:
                    last_bookmark = time.monotonic()
                    self._chunk(json.dumps({"type": "BOOKMARK", "object": {
                        "kind": PATHS_KIND[resource], "apiVersion": PATHS_API[resource],
                        "metadata": {"resourceVersion": str(current)}}}).encode() + b"\n")
                if time.monotonic() >= deadline:
                    self._chunk(b"")  # a clean end: the client resumes from its last version
                    return
        except (ConnectionAbortedError, BrokenPipeError, ConnectionResetError, OSError):
            # Cut mid-stream with no terminating chunk, as a dying connection looks.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _selected(obj: Dict[str, Any], q: Dict[str, str]) -> bool:
    """fieldSelector=metadata.name=NAME, the one field selector the agent uses."""
    selector = q.get("fieldSelector")
    if not selector:
        return True
    field, _, value = selector.partition("=")
    if field != "metadata.name":
        raise ValueError(f"fake API server: field selector {selector!r} not supported")
    return (obj.get("metadata") or {}).get("name") == value


PATHS_KIND = {r: k[:-len("List")] for r, k, _ in PATHS.values()}
PATHS_API = {r: a for r, _, a in PATHS.values()}


def status(code: int, reason: str, message: str) -> Dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class FakeApiServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, netns: Optional[str] = None,
                 bookmark_interval: float = 1.0) -> None:
        self.host, self.port, self.netns = host, port, netns
        self.bookmark_interval = bookmark_interval
        self.cond = threading.Condition()
        self.selectors: Dict[str, Optional[str]] = {}  # resource -> the last fieldSelector asked
        self.rv = 1
        self.compacted = 0
        self.drop_epoch = 0
        self.store: Dict[str, Dict[Key, Dict[str, Any]]] = {r: {} for r in RESOURCES}
        self.history: List[Tuple[int, str, str, Dict[str, Any]]] = []
        # continue token -> (the list's remaining items, its resourceVersion)
        self.snapshots: Dict[str, Tuple[List[Dict[str, Any]], str]] = {}
        self.counts: Counter = Counter()
        self._httpd: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # --- serving ---------------------------------------------------------------------------
    def start(self) -> "FakeApiServer":
        if self.netns:
            from ebpflb.lab.nsops import in_netns

            with in_netns(self.netns):
                httpd = _Server((self.host, self.port), _Handler)
        else:
            httpd = _Server((self.host, self.port), _Handler)
        httpd.fake = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="fake-apiserver")
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def go_away(self) -> None:
        """Stop listening (new connections are refused) and cut every open watch."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self.drop_watches()

    def come_back(self) -> None:
        self.start()

    def close(self) -> None:
        self.go_away()

    def drop_watches(self) -> None:
        with self.cond:
            self.drop_epoch += 1
            self.cond.notify_all()

    def compact(self) -> None:
        """Forget the history: watching from any version before now gets 410 Gone."""
        with self.cond:
            self.compacted = self.rv
            self.history.clear()
            self.snapshots.clear()  # continue tokens expire with the history they were taken at
            self.cond.notify_all()

    def open_watches_wait(self, resource: str, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.counts[f"watch {resource}"] < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no watch #{count} of {resource}: {dict(self.counts)}")
            time.sleep(0.01)

    # --- the store -------------------------------------------------------------------------
    def _key(self, obj: Dict[str, Any]) -> Key:
        m = obj["metadata"]
        return (m.get("namespace", ""), m["name"])

    def put(self, resource: str, obj: Dict[str, Any]) -> int:
        """Create or replace; returns the new resourceVersion."""
        return self.put_many(resource, [obj])

    def put_many(self, resource: str, objs: List[Dict[str, Any]]) -> int:
        with self.cond:
            for obj in objs:
                obj = json.loads(json.dumps(obj))
                obj.pop("kind", None)
                obj.pop("apiVersion", None)
                key = self._key(obj)
                etype = "MODIFIED" if key in self.store[resource] else "ADDED"
                self.rv += 1
                obj["metadata"]["resourceVersion"] = str(self.rv)
                self.store[resource][key] = obj
                self.history.append((self.rv, resource, etype, obj))
            self.cond.notify_all()
            return self.rv

    def delete(self, resource: str, namespace: str, name: str) -> int:
        with self.cond:
            obj = self.store[resource].pop((namespace, name))
            self.rv += 1
            obj = dict(obj, metadata=dict(obj["metadata"], resourceVersion=str(self.rv)))
            self.history.append((self.rv, resource, "DELETED", obj))
            self.cond.notify_all()
            return self.rv

    def kubeconfig(self) -> str:
        """A kubeconfig (YAML) pointing at this server, as `--kubeconfig` reads it."""
        return (f"apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n"
                f"    server: {self.url}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n"
                f"    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n"
                f"    token: not-a-secret\n")


# --- objects as the API server returns them ---------------------------------------------------
def service(name: str, ip: str, port: int = 80, target: Any = 8080, namespace: str = "default",
            protocol: str = "TCP", port_name: str = "http") -> Dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}",
                         "creationTimestamp": "2026-11-27T00:00:00Z"},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                     "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                     "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
                     "selector": {"app": name},
                     "ports": [{"name": port_name, "port": port, "protocol": protocol,
                                "targetPort": target}]},
            "status": {"loadBalancer": {}}}


def endpointslice(service_name: str, addresses: List[str], port: int = 8080,
                  namespace: str = "default", ready: bool = True, protocol: str = "TCP",
                  port_name: str = "http", name: Optional[str] = None) -> Dict[str, Any]:
    return {"metadata": {"name": name or f"{service_name}-abcde", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service_name,
                                    "endpointslice.kubernetes.io/managed-by":
                                        "endpointslice-controller.k8s.io"},
                         "generateName": f"{service_name}-"},
            "addressType": "IPv4",
            "ports": [{"name": port_name, "port": port, "protocol": protocol}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": ready, "serving": ready,
                                                            "terminating": False},
                           "nodeName": "node-1",
                           "targetRef": {"kind": "Pod", "name": f"{service_name}-{i}",
                                         "namespace": namespace}}
                          for i, a in enumerate(addresses)]}


def node(name: str, internal_ip: str) -> Dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {"podCIDR": "10.244.0.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": internal_ip},
                                     {"type": "Hostname", "address": name}]}}
