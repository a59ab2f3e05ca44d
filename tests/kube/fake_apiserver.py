"""A FAKE kube-apiserver for tests (not a real one: no etcd, no defaulting, no authorization): real
HTTP on 127.0.0.1 (threaded http.server), speaking the list/watch protocol the way kube-apiserver
does for the resources ebpflb reads, and the status subresource of the Gateway API kinds it
writes.

- `GET /api/v1/services`, `/apis/discovery.k8s.io/v1/endpointslices`, `/api/v1/nodes`: a JSON
  list (`ServiceList`...) whose `metadata.resourceVersion` is the store's current version; items
  carry no kind/apiVersion, as the real server sends them. `?limit=N` pages it: `metadata.continue`
  names the rest of the same snapshot; an unknown continue token gets 410 Expired.
- `?watch=true&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=T`: a chunked stream of
  JSON lines `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}`: every event after N,
  then new ones as they happen, a BOOKMARK every `bookmark_interval` seconds, until T elapses.
  Watching from a version older than the compaction point gets an ERROR event carrying a 410
  Status (`Expired`), as etcd compaction makes the real server do.
- `GET /api/v1/namespaces`: Namespaces, the same way (the store starts empty).
- Gateway API custom resources (gatewayclasses, gateways, tcproutes, udproutes, referencegrants
  of gateway.networking.k8s.io), served only once "their CRD is installed" (`install_crds()`,
  which versions each serves; `uninstall_crds()` deletes them and their objects): until then,
  and for a version the CRD does not serve, 404 NotFound, as kube-apiserver answers.
  `GET /apis/gateway.networking.k8s.io/V/PLURAL` lists and watches across namespaces as above
  (items carry kind and apiVersion, as custom resources' do); `GET .../namespaces/NS/PLURAL/NAME`
  (or `.../PLURAL/NAME` for GatewayClasses), optionally `/status`, reads one; `PATCH` (JSON merge
  patch) and `PUT` on `.../status` write its status only: a resourceVersion in the body is a
  precondition (409 Conflict when it is not the object's), a status equal to the stored one
  writes nothing (no new resourceVersion, no event), and a status that breaks the CRD's rules
  for conditions and route parents gets 422. `metadata.generation` starts at 1 and moves when
  `put()` changes the spec; `put()` keeps the stored status (the main resource ignores status,
  as with a status subresource), `put_status()` sets it as another controller would.
  `forbidden` (resource names) answers 403, as a ClusterRole without the rule does.
- Test controls: `drop_watches()` cuts every open watch mid-stream (no terminating chunk),
  `go_away()` / `come_back()` close and reopen the listening socket (connections refused
  meanwhile), `compact()` forgets the event history, and `counts` counts list and watch requests
  per resource so a test can tell "resumed without a relist" from "relisted" (and, for the
  Gateway API, every request by method, plural and version, "GET tcproutes v1alpha2"; status
  writes that changed something, "PATCH gateways/status", also listed in `status_writes`; and
  409s, "conflict gateways/status"). `on_status_write(plural, key)` runs before a status write
  is looked at, so a test can race the writer as another controller would.

One resourceVersion sequence is shared by all resources, like etcd's revision. `netns` makes the
listening socket in that network namespace (the lab's node), so an agent there reaches it on its
own loopback.
"""
from __future__ import annotations

import bisect
import json
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import parse_qs, urlparse

PATHS = {
    "/api/v1/services": ("services", "ServiceList", "v1"),
    "/apis/discovery.k8s.io/v1/endpointslices": ("endpointslices", "EndpointSliceList",
                                                  "discovery.k8s.io/v1"),
    "/api/v1/nodes": ("nodes", "NodeList", "v1"),
    "/api/v1/namespaces": ("namespaces", "NamespaceList", "v1"),
}
GATEWAY_GROUP = "gateway.networking.k8s.io"
# plural -> (kind, cluster-scoped, the versions its CRD serves by default: gateway-api v1.6)
CUSTOM = {
    "gatewayclasses": ("GatewayClass", True, ("v1", "v1beta1")),
    "gateways": ("Gateway", False, ("v1", "v1beta1")),
    "tcproutes": ("TCPRoute", False, ("v1", "v1alpha2")),
    "udproutes": ("UDPRoute", False, ("v1", "v1alpha2")),
    "referencegrants": ("ReferenceGrant", False, ("v1", "v1beta1")),
}
RESOURCES = ("services", "endpointslices", "nodes", "namespaces") + tuple(CUSTOM)
# /apis/GROUP/VERSION/PLURAL, .../namespaces/NS/PLURAL/NAME[/status], .../PLURAL/NAME[/status]
_CUSTOM_PATH = re.compile(r"/apis/" + re.escape(GATEWAY_GROUP) + r"/(?P<version>[^/]+)"
                          r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)"
                          r"(?:/(?P<name>[^/]+)(?P<status>/status)?)?")
_REASON = re.compile(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")

Key = Tuple[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog is 5: a source opening more connections at once (one list
    # per resource, nine with the Gateway API) would see SYNs dropped and retried a second later.
    request_queue_size = 128
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

    def _not_found(self, path: str) -> None:
        self._json(404, status(404, "NotFound", f"the server could not find the requested "
                                                f"resource ({path})"))

    def _custom(self, path: str) -> Optional[Dict[str, Any]]:
        """A Gateway API path, parsed; None (after answering) when the server has no such
        resource: its CRD is not installed, or does not serve that version."""
        m = _CUSTOM_PATH.fullmatch(path)
        fake = self.server.fake
        if m is None or m["plural"] not in CUSTOM:
            self._not_found(path)
            return None
        parts = m.groupdict()
        with fake.cond:
            fake.counts[f"{self.command} {parts['plural']} {parts['version']}"] += 1
            served = parts["version"] in fake.crds.get(parts["plural"], ())
        cluster = CUSTOM[parts["plural"]][1]
        if not served or (parts["ns"] is not None and cluster) or \
                (parts["name"] is not None and parts["ns"] is None and not cluster):
            self._not_found(path)
            return None
        if parts["plural"] in fake.forbidden:
            self._forbidden(parts["plural"])
            return None
        return parts

    def _forbidden(self, resource: str) -> None:
        self._json(403, status(403, "Forbidden", f'{resource} is forbidden: User "ebpflb" cannot '
                                                 f"list resource {resource!r}"))

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        fake = self.server.fake
        url = urlparse(self.path)
        api_version: Optional[str] = None
        if url.path.startswith(f"/apis/{GATEWAY_GROUP}/"):
            parts = self._custom(url.path)
            if parts is None:
                return
            resource = parts["plural"]
            api_version = f"{GATEWAY_GROUP}/{parts['version']}"
            if parts["name"] is not None:
                self._get_one(resource, (parts["ns"] or "", parts["name"]), api_version)
                return
            list_kind = CUSTOM[resource][0] + "List"
        elif url.path not in PATHS:
            self._not_found(url.path)
            return
        else:
            resource, list_kind, _ = PATHS[url.path]
            if resource in fake.forbidden:
                self._forbidden(resource)
                return
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        fake.selectors[resource] = q.get("fieldSelector")
        if q.get("watch", "").lower() in ("true", "1"):
            with fake.cond:
                # Counted and bound to the drop epoch at once: a watch the test has seen counted
                # is one drop_watches() cuts.
                fake.counts[f"watch {resource}"] += 1
                epoch = fake.drop_epoch
            self._watch(fake, resource, q, epoch, api_version)
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
            if api_version is not None:
                items = [fake.as_served(resource, o, api_version) for o in items]
            self._json(200, {"kind": list_kind, "apiVersion": api_version or PATHS_API[resource],
                             "metadata": meta, "items": items})

    def _get_one(self, resource: str, key: Key, api_version: str) -> None:
        fake = self.server.fake
        with fake.cond:
            fake.counts[f"get {resource}"] += 1
            obj = fake.store[resource].get(key)
        if obj is None:
            self._json(404, status(404, "NotFound", f'{resource} "{key[1]}" not found'))
            return
        self._json(200, fake.as_served(resource, obj, api_version))

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"null")

    def do_PATCH(self) -> None:  # noqa: N802
        self._write_status()

    def do_PUT(self) -> None:  # noqa: N802
        self._write_status()

    def _write_status(self) -> None:
        """PATCH (JSON merge patch) or PUT of a Gateway API object's status subresource."""
        fake = self.server.fake
        url = urlparse(self.path)
        if not url.path.startswith(f"/apis/{GATEWAY_GROUP}/"):
            self._json(405, status(405, "MethodNotAllowed", "the fake writes only the status of "
                                                            "Gateway API objects"))
            return
        parts = self._custom(url.path)
        if parts is None:
            return
        if parts["name"] is None or not parts["status"]:
            self._json(405, status(405, "MethodNotAllowed", "the fake writes only /status"))
            return
        content_type = self.headers.get("Content-Type", "")
        if self.command == "PATCH" and content_type.split(";")[0] != "application/merge-patch+json":
            self._json(415, status(415, "UnsupportedMediaType",
                                   f"the fake takes merge patches, not {content_type}"))
            return
        body = self._body()
        resource, key = parts["plural"], (parts["ns"] or "", parts["name"])
        api_version = f"{GATEWAY_GROUP}/{parts['version']}"
        if fake.on_status_write is not None:
            fake.on_status_write(resource, key)  # the test's chance to race the writer
        with fake.cond:
            current = fake.store[resource].get(key)
            if current is None:
                self._json(404, status(404, "NotFound", f'{resource} "{key[1]}" not found'))
                return
            if not isinstance(body, dict):
                self._json(400, status(400, "BadRequest", "the body is not an object"))
                return
            want_rv = (body.get("metadata") or {}).get("resourceVersion")
            if self.command == "PUT" and not want_rv:
                self._json(422, status(422, "Invalid", "metadata.resourceVersion: must be "
                                                       "specified for an update"))
                return
            if want_rv is not None and want_rv != current["metadata"]["resourceVersion"]:
                fake.counts[f"conflict {resource}/status"] += 1
                self._json(409, status(409, "Conflict", f'Operation cannot be fulfilled on '
                                                        f'{resource} "{key[1]}": the object has '
                                                        "been modified; please apply your changes "
                                                        "to the latest version and try again"))
                return
            if self.command == "PATCH":
                new_status = merge_patch(current, body).get("status")
            else:
                new_status = body.get("status")
            problems = status_problems(CUSTOM[resource][0], new_status)
            if problems:
                self._json(422, status(422, "Invalid", "; ".join(problems)))
                return
            if new_status != current.get("status"):
                obj = fake._store_status(resource, key, new_status)
                fake.counts[f"{self.command} {resource}/status"] += 1
                fake.status_writes.append((self.command, resource, key, body))
            else:
                obj = current
            out = fake.as_served(resource, obj, api_version)
        self._json(200, out)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch(self, fake: "FakeApiServer", resource: str, q: Dict[str, str], epoch: int,
               api_version: Optional[str] = None) -> None:
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
                    if api_version is not None:
                        obj = fake.as_served(resource, obj, api_version)
                    self._chunk(json.dumps({"type": etype, "object": obj}).encode() + b"\n")
                    sent = rv
                if not pending:
                    sent = max(sent, current)
                if bookmarks and time.monotonic() - last_bookmark >= fake.bookmark_interval:
                    last_bookmark = time.monotonic()
                    self._chunk(json.dumps({"type": "BOOKMARK", "object": {
                        "kind": PATHS_KIND.get(resource) or CUSTOM[resource][0],
                        "apiVersion": api_version or PATHS_API[resource],
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


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: a mapping merges key by key (null removes), anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _condition_problems(conditions: Any, where: str) -> List[str]:
    """The CRDs' rules for metav1.Condition lists (listType map by type, at most 8)."""
    if not isinstance(conditions, list):
        return [f"{where}: not a list"]
    out = [] if len(conditions) <= 8 else [f"{where}: {len(conditions)} items, at most 8"]
    types = [c.get("type") for c in conditions if isinstance(c, dict)]
    if len(set(types)) != len(types):
        out.append(f"{where}: duplicate types {types}")
    for i, c in enumerate(conditions):
        at = f"{where}[{i}]"
        if not isinstance(c, dict):
            out.append(f"{at}: not an object")
            continue
        if not isinstance(c.get("type"), str) or not c["type"]:
            out.append(f"{at}.type: required")
        if c.get("status") not in ("True", "False", "Unknown"):
            out.append(f"{at}.status: {c.get('status')!r}")
        if not isinstance(c.get("reason"), str) or not _REASON.fullmatch(c["reason"]):
            out.append(f"{at}.reason: {c.get('reason')!r}")
        if not isinstance(c.get("message"), str) or len(c["message"]) > 32768:
            out.append(f"{at}.message: required, at most 32768 characters")
        if not isinstance(c.get("lastTransitionTime"), str) or \
                not _TIME.fullmatch(c["lastTransitionTime"]):
            out.append(f"{at}.lastTransitionTime: {c.get('lastTransitionTime')!r}")
        gen = c.get("observedGeneration")
        if gen is not None and (not isinstance(gen, int) or gen < 0):
            out.append(f"{at}.observedGeneration: {gen!r}")
    return out


def status_problems(kind: str, st: Any) -> List[str]:
    """What the Gateway API CRDs' schemas refuse in a status (the parts ebpflb writes)."""
    if st is None:
        return []
    if not isinstance(st, dict):
        return ["status: not an object"]
    out: List[str] = []
    if "conditions" in st:
        out += _condition_problems(st["conditions"], "status.conditions")
    if kind == "Gateway":
        for i, a in enumerate(st.get("addresses") or []):
            if not isinstance(a, dict) or not a.get("value"):
                out.append(f"status.addresses[{i}].value: required")
        for i, li in enumerate(st.get("listeners") or []):
            at = f"status.listeners[{i}]"
            if not li.get("name") or not isinstance(li.get("attachedRoutes"), int):
                out.append(f"{at}: name and attachedRoutes required")
            for j, k in enumerate(li.get("supportedKinds") or []):
                if not k.get("kind"):
                    out.append(f"{at}.supportedKinds[{j}].kind: required")
            out += _condition_problems(li.get("conditions"), f"{at}.conditions")
    if kind in ("TCPRoute", "UDPRoute"):
        parents = st.get("parents")
        if not isinstance(parents, list) or len(parents) > 32:
            out.append("status.parents: required, at most 32 items")
            parents = []
        for i, p in enumerate(parents):
            at = f"status.parents[{i}]"
            if not (p.get("parentRef") or {}).get("name") or not p.get("controllerName"):
                out.append(f"{at}: parentRef.name and controllerName required")
            if not p.get("conditions"):
                out.append(f"{at}.conditions: at least 1 item")
            out += _condition_problems(p.get("conditions"), f"{at}.conditions")
    return out


class FakeApiServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, netns: Optional[str] = None,
                 bookmark_interval: float = 1.0) -> None:
        self.host, self.port, self.netns = host, port, netns
        self.bookmark_interval = bookmark_interval
        self.cond = threading.Condition()
        self.selectors: Dict[str, Optional[str]] = {}  # resource -> the last fieldSelector asked
        # Gateway API CRDs installed: plural -> the versions served (none: 404 for all).
        self.crds: Dict[str, Tuple[str, ...]] = {}
        self.forbidden: set = set()  # resources answered with 403 Forbidden
        # Every status write that changed something: (method, plural, (namespace, name), body).
        self.status_writes: List[Tuple[str, str, Key, Any]] = []
        # Called with (plural, key) before a status write is looked at: a test may change the
        # object then, as another writer racing this one would.
        self.on_status_write: Optional[Callable[[str, Key], None]] = None
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

    # --- Gateway API CRDs ------------------------------------------------------------------
    def install_crds(self, versions: Optional[Mapping[str, Sequence[str]]] = None) -> None:
        """Install the Gateway API CRDs: `versions` maps a plural to the versions its CRD
        serves (default: all five, as gateway-api v1.6 serves them)."""
        chosen = versions if versions is not None else {p: v for p, (_, _, v) in CUSTOM.items()}
        with self.cond:
            for plural, served in chosen.items():
                if plural not in CUSTOM:
                    raise ValueError(f"fake API server: no CRD {plural}")
                self.crds[plural] = tuple(served)

    def uninstall_crds(self, *plurals: str) -> None:
        """Delete CRDs (default: all): their objects are deleted (DELETED events) and their
        watches end, as kube-apiserver does."""
        for plural in plurals or tuple(self.crds):
            for ns, name in sorted(self.store[plural]):
                self.delete(plural, ns, name)
            with self.cond:
                self.crds.pop(plural, None)
        self.drop_watches()

    def as_served(self, resource: str, obj: Dict[str, Any], api_version: str) -> Dict[str, Any]:
        """A custom resource as a version of its CRD serves it: kind and apiVersion set."""
        return dict(obj, kind=CUSTOM[resource][0], apiVersion=api_version)

    def get(self, resource: str, namespace: str, name: str) -> Dict[str, Any]:
        """The stored object (a copy)."""
        with self.cond:
            return json.loads(json.dumps(self.store[resource][namespace, name]))

    def put_status(self, resource: str, namespace: str, name: str, st: Any) -> int:
        """Set an object's status as another controller would (a new resourceVersion)."""
        with self.cond:
            self._store_status(resource, (namespace, name), st)
            return self.rv

    def _store_status(self, resource: str, key: Key, st: Any) -> Dict[str, Any]:
        """Under the lock."""
        current = self.store[resource][key]
        obj = json.loads(json.dumps(current))
        if st is None:
            obj.pop("status", None)
        else:
            obj["status"] = json.loads(json.dumps(st))
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.store[resource][key] = obj
        self.history.append((self.rv, resource, "MODIFIED", obj))
        self.cond.notify_all()
        return obj

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
                old = self.store[resource].get(key)
                etype = "MODIFIED" if old is not None else "ADDED"
                if resource in CUSTOM:
                    # The main resource ignores status, and a spec change moves the generation.
                    obj.pop("status", None)
                    if old is not None and "status" in old:
                        obj["status"] = old["status"]
                    gen = (old or {}).get("metadata", {}).get("generation", 0)
                    changed = old is None or old.get("spec") != obj.get("spec")
                    obj["metadata"]["generation"] = gen + 1 if changed else gen
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


def namespace(name: str, **labels: str) -> Dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **labels}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


# --- Gateway API objects (custom resources: stored without kind and apiVersion; the fake adds
# the version asked for) ----------------------------------------------------------------------
def gateway_class(name: str = "ebpflb",
                  controller: str = "ebpflb.io/gateway-controller") -> Dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": "2026-11-27T00:00:00Z"},
            "spec": {"controllerName": controller}}


def gateway(name: str = "gw", namespace: str = "default",
            addresses: Sequence[str] = ("192.0.2.10",),
            listeners: Optional[List[Dict[str, Any]]] = None,
            gateway_class_name: str = "ebpflb") -> Dict[str, Any]:
    spec: Dict[str, Any] = {"gatewayClassName": gateway_class_name,
                            "listeners": listeners or [{"name": "tcp", "port": 9000,
                                                        "protocol": "TCP",
                                                        "allowedRoutes": {"namespaces": {
                                                            "from": "Same"}}}]}
    if addresses:
        spec["addresses"] = [{"type": "IPAddress", "value": a} for a in addresses]
    return {"metadata": {"name": name, "namespace": namespace,
                         "creationTimestamp": "2026-11-27T00:00:00Z"}, "spec": spec}


def tcproute(name: str = "r", namespace: str = "default", parents: Sequence[Any] = ("gw",),
             backends: Sequence[Tuple[str, int]] = (("web", 80),), kind: str = "TCPRoute",
             rules: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """A TCPRoute (or, with kind, a UDPRoute: the fake stores them apart by plural); a parent
    is a Gateway name or a whole parentRef."""
    refs = [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": p}
            if isinstance(p, str) else p for p in parents]
    return {"metadata": {"name": name, "namespace": namespace,
                         "creationTimestamp": "2026-11-27T00:00:00Z"},
            "spec": {"parentRefs": refs,
                     "rules": rules if rules is not None else [
                         {"backendRefs": [{"group": "", "kind": "Service", "name": n, "port": p,
                                           "weight": 1} for n, p in backends]}]}}


def reference_grant(name: str = "allow", namespace: str = "backend",
                    from_namespace: str = "default") -> Dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "TCPRoute",
                               "namespace": from_namespace}],
                     "to": [{"group": "", "kind": "Service"}]}}
