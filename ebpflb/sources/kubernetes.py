"""The Kubernetes API source: list-then-watch of Services, discovery.k8s.io/v1 EndpointSlices and
Nodes, and of the Gateway API kinds ebpflb serves at layer 4 (GatewayClass, Gateway, TCPRoute,
UDPRoute, ReferenceGrant: custom resources of gateway.networking.k8s.io) with the Namespaces
(whose labels allowedRoutes selects by), through the official `kubernetes` client (first step of
sources -> changes -> store -> model -> plan -> apply).

One background thread per resource (a "reflector", as client-go calls it) lists, then watches from
the list's resourceVersion with bookmarks, resumes a dropped watch from the last resourceVersion
it saw (no relist), relists when the server answers 410 Gone (an ERROR event or an ApiException),
reconnects with capped exponential backoff and full jitter, and relists every `resync_seconds` to
repair anything a watch could have missed (a relist hands over only what differs from what it
has: objects gone meanwhile become deletions).

Each object is converted straight from the API's dict to the model by ebpflb.convert, the same
converter and rules as the manifest source (no text round trip), once per resourceVersion, in the
reflector's thread. What changed becomes a per-object change, queued and coalesced per object
(the latest version wins), and the agent is woken through an eventfd (`fileno()`); `take()` hands
over everything queued at once, so a burst becomes one sync. Nothing is handed over before every
resource was listed once: a restarted agent must not program a half-known cluster over the pins
of its predecessor. An object the converter refuses is logged, naming it and the field; its last
good version stays (the API server validated it already; one odd object must not stop the
others). A status-only update changes no model object, so it changes nothing.

A change's time is when its event arrived, so the programming-latency histogram measures
event-to-map time.

The Gateway API is optional: its CRDs may be missing, or serve only older versions (TCPRoute and
UDPRoute as v1alpha2 before gateway-api v1.5, the others as v1beta1 before v1.0). Each list tries
the versions of ebpflb.gateway.API_VERSIONS in order and keeps the first the server has (a 404
moves on to the next). When none is served (the CRD is not installed), or the Namespaces or a
Gateway API kind may not be read (403: a ClusterRole from before the Gateway API), the kind is
*absent*: it is said once in the log, it does not hold back `synced` (Services work in a
cluster without the Gateway API), objects it had are handed over as deletions, and it is
listed again every `absent_retry` seconds, so CRDs installed later are picked up.
"""
from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..backend_rules import DEFAULT_SERVICE_CIDRS
from ..changes import Change, ChangeBatch
from ..convert import Converted, convert_api_object
from ..errors import ManifestError, format_path
from ..gateway import (API_VERSIONS, GATEWAY, GATEWAY_CLASS, NAMESPACE, REFERENCE_GRANT, TCP_ROUTE,
                       UDP_ROUTE, convert_gateway_api_object)

log = logging.getLogger(__name__)

Key = Tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds


@dataclass(frozen=True)
class Resource:
    kind: str
    api_version: str  # a custom resource: the first of `versions`
    list_method: str  # the method of the client API class that lists it across namespaces
    api_class: str  # "CoreV1Api", "DiscoveryV1Api" or "CustomObjectsApi"
    plural: str = ""  # a custom resource's plural (listed with list_cluster_custom_object)
    versions: Tuple[str, ...] = ()  # a custom resource's apiVersions, in the order to try them
    # May be missing (a CRD not installed) or forbidden (RBAC): then absent, not an error.
    optional: bool = False

    @property
    def custom(self) -> bool:
        return bool(self.plural)


def _gateway_api(kind: str, plural: str) -> Resource:
    versions = API_VERSIONS[kind]
    return Resource(kind, versions[0], "list_cluster_custom_object", "CustomObjectsApi", plural,
                    versions, optional=True)


SERVICES = Resource("Service", "v1", "list_service_for_all_namespaces", "CoreV1Api")
ENDPOINTSLICES = Resource("EndpointSlice", "discovery.k8s.io/v1",
                          "list_endpoint_slice_for_all_namespaces", "DiscoveryV1Api")
NODES = Resource("Node", "v1", "list_node", "CoreV1Api")
GATEWAY_CLASSES = _gateway_api(GATEWAY_CLASS, "gatewayclasses")
GATEWAYS = _gateway_api(GATEWAY, "gateways")
TCP_ROUTES = _gateway_api(TCP_ROUTE, "tcproutes")
UDP_ROUTES = _gateway_api(UDP_ROUTE, "udproutes")
REFERENCE_GRANTS = _gateway_api(REFERENCE_GRANT, "referencegrants")
# Read for their labels only (allowedRoutes namespace selectors): part of the Gateway API path.
NAMESPACES = Resource(NAMESPACE, "v1", "list_namespace", "CoreV1Api", optional=True)
LIST_PAGE = 500  # objects per list request (client-go's reflector pages by 500 too)
ABSENT_RETRY = 60.0  # seconds between two looks for an absent kind (a CRD installed later)
RESOURCES = (SERVICES, ENDPOINTSLICES, NODES)
GATEWAY_RESOURCES = (GATEWAY_CLASSES, GATEWAYS, TCP_ROUTES, UDP_ROUTES, REFERENCE_GRANTS,
                     NAMESPACES)


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter (sleep uniform in [0, min(cap, base*2^n)])."""
    base: float = 0.5
    cap: float = 30.0
    attempts: int = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2 ** self.attempts))
        self.attempts = min(self.attempts + 1, 32)
        return random.uniform(0, delay)

    def reset(self) -> None:
        self.attempts = 0


@dataclass
class ReflectorStats:
    lists: int = 0
    watches: int = 0
    relists_410: int = 0
    errors: int = 0
    events: int = 0
    refused: int = 0  # objects the converter refused (their last good version stays)


def _plural(kind: str) -> str:
    return kind + ("es" if kind.endswith("s") else "s")


class _WatchRefused(Exception):
    """An optional kind's watch answered 403 or 404 (relist, after a backoff)."""


class _Gone(Exception):
    """The server no longer has the resourceVersion we watch from: relist."""


class _Absent(Exception):
    """An optional kind the server does not serve (404 for every version) or does not let us
    read (403)."""


def api_client_from(kubeconfig: Optional[str] = None, context: Optional[str] = None):
    """An ApiClient from a kubeconfig file, or the in-cluster service account when none is given."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    else:
        config.load_incluster_config(client_configuration=cfg)
    # The reflectors retry with their own backoff; urllib3's immediate retries would only hide
    # the failure for a moment and multiply the load on an API server that is struggling.
    cfg.retries = False
    return client.ApiClient(cfg)


class _Reflector:
    """List-then-watch of one resource into a cache of raw objects, in a thread."""

    def __init__(self, source: "KubernetesSource", resource: Resource, api: Any) -> None:
        self.source = source
        self.resource = resource
        self._api = api
        # The apiVersion listed and watched now (a custom resource's: the first one served).
        self.api_version = resource.api_version
        self.list_func: Callable[..., Any] = self._lister(resource.api_version)
        self.absent = False  # an optional kind the server does not serve (or let us read) now
        # key -> (resourceVersion, model object or None): for Nodes the raw object instead.
        # Written by this thread only; read under source.lock by nodes().
        self.cache: Dict[Key, Tuple[Optional[str], Any]] = {}
        self.synced = False  # listed once (an absent kind is not, and holds nothing back)
        self.resource_version: Optional[str] = None
        self.stats = ReflectorStats()
        self.backoff = Backoff(source.backoff_base, source.backoff_cap)
        self._response: Any = None
        self._last_list = 0.0
        self.thread = threading.Thread(target=self._run, name=f"watch-{resource.kind}", daemon=True)

    def _lister(self, api_version: str) -> Callable[..., Any]:
        if not self.resource.custom:
            return getattr(self._api, self.resource.list_method)
        group, _, version = api_version.rpartition("/")
        return partial(getattr(self._api, self.resource.list_method), group, version,
                       self.resource.plural)

    @staticmethod
    def key(obj: Dict[str, Any]) -> Key:
        meta = obj.get("metadata") or {}
        return (meta.get("namespace") or "", meta.get("name") or "")

    def _run(self) -> None:
        stop = self.source.stop_event
        need_list = True
        while not stop.is_set():
            try:
                if need_list or time.monotonic() - self._last_list >= self.source.resync_seconds:
                    self._list()
                    need_list = False
                self._watch()
                self.backoff.reset()  # the server ended a healthy watch (timeout): resume
            except _Gone as exc:
                self.stats.relists_410 += 1
                log.info("watch %s: %s, relisting", self.resource.kind,
                         str(exc) or f"resourceVersion {self.resource_version} is gone (410)")
                need_list = True
            except _Absent as exc:
                self._gone_away(str(exc))
                need_list = True
                stop.wait(self.source.absent_retry)
            except _WatchRefused as exc:
                self._refused(str(exc))
                need_list = True
            except Exception as exc:  # noqa: BLE001 - any failure of a watch means: reconnect
                if stop.is_set():
                    break
                from kubernetes.client.rest import ApiException

                if isinstance(exc, ApiException) and exc.status == 410:
                    self.stats.relists_410 += 1
                    log.info("watch %s: 410 Gone, relisting", self.resource.kind)
                    need_list = True
                    continue
                if isinstance(exc, ApiException) and exc.status in (403, 404) and \
                        self.resource.optional:
                    self._refused(f"{exc.status}")
                    need_list = True
                    continue
                self.stats.errors += 1
                delay = self.backoff.next()
                log.warning("watch %s: %s: %s; retrying in %.2f s", self.resource.kind,
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "",
                            delay)
                stop.wait(delay)
        self.source._wake()

    def _refused(self, why: str) -> None:
        """An optional kind's watch refused (403, 404): the CRD was removed, or our right to
        watch it (a role that may list but not watch). A relist says whether another version is
        served or the kind is absent now; it waits its backoff first, so a list that keeps
        succeeding and a watch that keeps being refused never loop hot."""
        self.stats.errors += 1
        # At least a second: a watch that connects (which resets the backoff) and is then
        # refused by an ERROR event would otherwise retry at the backoff's smallest delays.
        delay = max(1.0, self.backoff.next())
        log.info("watch %s: %s; relisting in %.2f s", self.resource.kind, why, delay)
        self.source.stop_event.wait(delay)

    def _request_kwargs(self) -> Dict[str, Any]:
        # A read timeout longer than the server-side watch timeout: a silent dead connection is
        # noticed, a quiet healthy one is not cut.
        kwargs: Dict[str, Any] = {
            "_preload_content": False,
            "_request_timeout": (self.source.connect_timeout,
                                 self.source.watch_timeout + self.source.connect_timeout)}
        if self.resource is NODES and self.source.node_name:
            # Only this node's Node (its zone, its labels): not every Node of the cluster.
            kwargs["field_selector"] = f"metadata.name={self.source.node_name}"
        return kwargs

    def _list(self) -> None:
        """A paginated list (LIST_PAGE objects a request, as client-go's reflector pages): the
        API server holds one page at a time for us, and so do we, not the whole cluster."""
        self.stats.lists += 1
        listed = set()
        before = self.stats.events
        token: Optional[str] = None
        count = 0
        while True:
            kwargs = dict(self._request_kwargs(), limit=self.source.list_page)
            if token:
                kwargs["_continue"] = token
            resp = self.list_func(**kwargs) if token else self._first_page(kwargs)
            try:
                data = json.loads(resp.data)
            finally:
                resp.release_conn()
            meta = data.get("metadata") or {}
            if token is None:  # every page is of the first page's snapshot
                self.resource_version = meta.get("resourceVersion")
            for obj in data.get("items") or []:
                key = self.key(obj)
                listed.add(key)
                # No revision per item: items are not in resourceVersion order, and a take()
                # between pages must not see the list as handed over.
                self._upsert(key, obj, seen=False)
                count += 1
            del data
            token = meta.get("continue") or None
            if token is None:
                break
            if self.source.stop_event.is_set():
                return  # half a list: nothing may read as deleted
        self._last_list = time.monotonic()
        for key in [k for k in self.cache if k not in listed]:
            self._delete(key)
        if self.absent:
            self.absent = False
            log.info("%s: %s are served now (%s): reading them", self.source.description,
                     _plural(self.resource.kind), self.api_version)
        first = not self.synced
        self.source._seen(self.resource.kind, self.resource_version)
        self.synced = True
        self.source._listed(self)
        log.info("listed %d %ss at resourceVersion %s%s", count, self.resource.kind,
                 self.resource_version, "" if first or self.stats.events != before
                 else " (unchanged)")
        node = self.source.node_name
        if self.resource is NODES and node and ("", node) not in listed:
            log.warning("node %s (--node-name / NODE_NAME) is not among the %d Nodes the API "
                        "lists", node, count)

    def _first_page(self, kwargs: Dict[str, Any]) -> Any:
        """A list's first request. A custom resource is asked for in each of its versions in
        turn until one is served (404: the next); an optional kind none of whose versions is
        served, or that we may not read (403), raises _Absent."""
        from kubernetes.client.rest import ApiException

        versions = self.resource.versions or (self.resource.api_version,)
        missing = []
        for api_version in versions:
            func = self._lister(api_version)
            try:
                resp = func(**kwargs)
            except ApiException as exc:
                if exc.status == 404 and self.resource.custom:
                    missing.append(api_version)
                    continue
                if exc.status in (403, 404) and self.resource.optional:
                    raise _Absent(f"{exc.status} {exc.reason}: the ClusterRole does not let "
                                  "ebpflb list them" if exc.status == 403
                                  else f"{exc.status} {exc.reason}") from None
                raise
            if api_version != self.api_version:
                log.info("%s: %s read as %s (the first of %s the server has)",
                         self.source.description, _plural(self.resource.kind), api_version,
                         ", ".join(versions))
            self.api_version, self.list_func = api_version, func
            return resp
        raise _Absent(f"none of {', '.join(missing)} is served: 404, its CRD is not installed")

    def _gone_away(self, why: str) -> None:
        """The kind is absent: what we had of it is deleted, and we look again later."""
        for key in list(self.cache):
            self._delete(key)
        if not self.absent:  # said once (and again only after it was served meanwhile)
            log.log(logging.WARNING if why.startswith("403") else logging.INFO,
                    "%s: %s are not read (%s); Services are served without them; looking again "
                    "every %.0f s", self.source.description, _plural(self.resource.kind), why,
                    self.source.absent_retry)
        self.absent = True
        self.synced = False
        self.resource_version = None
        self.source._listed(self)  # no longer holds `synced` back

    def _upsert(self, key: Key, obj: Dict[str, Any], seen: bool = True) -> None:
        """An object as the API has it now: converted once per resourceVersion. `seen`: its
        resourceVersion is this watch's newest (not so for a list's items)."""
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        cached = self.cache.get(key)
        if not (cached is not None and rv is not None and cached[0] == rv):
            self._convert(key, obj, rv, cached, rv if seen else None)
        if seen:
            self.source._seen(self.resource.kind, rv)

    def _convert(self, key: Key, obj: Dict[str, Any], rv: Optional[str],
                 cached: Optional[Tuple[Optional[str], Any]], revision: Optional[str]) -> None:
        """`revision`: recorded with the change, atomically (None for a list's items)."""
        self.stats.events += 1
        if self.resource is NODES:
            with self.source.lock:
                self.cache[key] = (rv, obj)
            return
        old = cached[1] if cached is not None else None
        try:
            if self.resource.kind in API_VERSIONS:
                verdict = convert_gateway_api_object(self.resource.kind, obj, self.api_version)
            else:
                verdict = convert_api_object(self.resource.kind, obj, self.source.service_cidrs)
        except Exception as exc:  # noqa: BLE001 - a converter defect refuses this object only
            log.exception("%s: converting %s %s/%s failed", self.source.description,
                          self.resource.kind, key[0], key[1])
            verdict = Converted(self.resource.kind, key, f"{self.resource.kind} {key[0]}/{key[1]}",
                                problems=(((), f"internal error ({exc!r}); please report it"),))
        self.source._note_refusal(self.resource.kind, key, verdict)
        if verdict.refused:
            self.stats.refused += 1
            log.error("%s: %s %s/%s refused, %s:\n%s", self.source.description, self.resource.kind,
                      key[0], key[1], "its last good version stays" if old is not None
                      else "not programmed", "\n".join(
                          f"  {format_path(p) or '-'}: {m}" for p, m in verdict.problems))
            self.cache[key] = (rv, old)
            return
        if verdict.ignored:
            log.info("%s: %s %s/%s ignored: %s", self.source.description, self.resource.kind,
                     key[0], key[1], verdict.ignored)
        new = verdict.obj
        self.cache[key] = (rv, new)
        if new != old:
            self.source._emit(Change(self.resource.kind, key, new), revision)

    def _delete(self, key: Key, rv: Optional[str] = None) -> None:
        with self.source.lock:  # nodes() reads the Node cache from another thread
            cached = self.cache.pop(key, None)
        if cached is not None:
            self.stats.events += 1
            self.source._note_refusal(self.resource.kind, key, None)
            if self.resource is not NODES and cached[1] is not None:
                self.source._emit(Change(self.resource.kind, key, None), rv)
        self.source._seen(self.resource.kind, rv)

    def _watch(self) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        remaining = self.source.resync_seconds - (time.monotonic() - self._last_list)
        timeout = max(1, int(min(self.source.watch_timeout, remaining)))
        self.stats.watches += 1
        resp = self.list_func(watch=True, resource_version=self.resource_version,
                              allow_watch_bookmarks=True, timeout_seconds=timeout,
                              **self._request_kwargs())
        self._response = resp
        try:
            if self.source.stop_event.is_set():
                return
            self.backoff.reset()  # connected: the next failure starts from the base delay again
            for line in iter_resp_lines(resp):
                self._event(json.loads(line))
                if self.source.stop_event.is_set():
                    return
        finally:
            self._response = None
            resp.release_conn()

    def _event(self, event: Dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            if obj.get("code") in (403, 404) and self.resource.optional:
                raise _WatchRefused(f"watch error {obj.get('code')}: {obj.get('message')}")
            raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = rv
        if kind == "BOOKMARK":
            self.source._seen(self.resource.kind, rv)  # everything before it was delivered
            return
        key = self.key(obj)
        if kind == "DELETED":
            self._delete(key, rv)
        elif kind in ("ADDED", "MODIFIED"):
            self._upsert(key, obj)
        else:
            log.warning("watch %s: unknown event type %r ignored", self.resource.kind, kind)

    def interrupt(self) -> None:
        resp = self._response
        if resp is not None and hasattr(resp, "shutdown"):
            try:
                resp.shutdown()  # unblocks a read in progress (urllib3 >= 2.3)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass


class KubernetesSource:
    """A Source following the API server. `start()` launches the watches; `take()` is the
    agent's view; `stop()` ends the watches promptly."""

    def __init__(self, api_client: Any, node_name: Optional[str] = None,
                 resync_seconds: float = 300.0, watch_timeout: float = 300.0,
                 connect_timeout: float = 5.0, backoff_base: float = 0.5,
                 backoff_cap: float = 30.0, description: Optional[str] = None,
                 service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS,
                 list_page: int = LIST_PAGE, gateway_api: bool = True,
                 absent_retry: float = ABSENT_RETRY) -> None:
        """`gateway_api`: also read the Gateway API kinds and the Namespaces (when the server
        has them); `absent_retry`: seconds between two looks for a kind it does not have."""
        from kubernetes import client

        self.node_name = node_name
        self.list_page = list_page
        self.service_cidrs = tuple(service_cidrs)
        self.resync_seconds = resync_seconds
        self.watch_timeout = watch_timeout
        self.connect_timeout = connect_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.absent_retry = absent_retry
        host = getattr(api_client.configuration, "host", "?")
        self.description = description or f"kubernetes API {host}"
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self._pending: Dict[Tuple[str, Key], Change] = {}  # coalesced per object
        self._pending_since: Optional[float] = None  # wall clock of the oldest untaken change
        # Per resource, the newest resourceVersion its list or watch delivered and handled (its
        # change queued), and the same as it was when take() last handed changes over.
        self._revisions: Dict[str, int] = {}
        self._taken_revisions: Dict[str, int] = {}
        self._refused: Dict[Tuple[str, Key], ManifestError] = {}  # objects refused now
        self._waiters = threading.Condition(self.lock)
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        apis = {"CoreV1Api": client.CoreV1Api(api_client),
                "DiscoveryV1Api": client.DiscoveryV1Api(api_client),
                "CustomObjectsApi": client.CustomObjectsApi(api_client)}
        resources = RESOURCES + (GATEWAY_RESOURCES if gateway_api else ())
        self.reflectors = {r.kind: _Reflector(self, r, apis[r.api_class]) for r in resources}
        self._started = False

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if not self._started:
            self._started = True
            for r in self.reflectors.values():
                r.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        for r in self.reflectors.values():
            r.interrupt()
        deadline = time.monotonic() + timeout
        for r in self.reflectors.values():
            if r.thread.is_alive():
                r.thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def synced(self) -> bool:
        """Every resource listed at least once (before that, take() hands over nothing), but
        for the optional kinds the server does not have (absent: see the module docstring)."""
        return all(r.synced or r.absent for r in self.reflectors.values())

    def absent(self) -> List[str]:
        """The optional kinds the server does not serve (or let us read) now."""
        return [kind for kind, r in self.reflectors.items() if r.absent]

    def api_versions(self) -> Dict[str, str]:
        """The apiVersion each kind is read in now (the absent ones left out)."""
        return {kind: r.api_version for kind, r in self.reflectors.items() if not r.absent}

    def wait_changed(self, timeout: float) -> bool:
        """Blocks until take() has something to hand over (for benchmarks and tests)."""
        with self._waiters:
            return self._waiters.wait_for(lambda: self.synced and bool(self._pending), timeout)

    def fileno(self) -> int:
        """Readable when take() may have something to hand over."""
        return self._wake_fd

    def next_poll(self) -> Optional[float]:
        return None  # woken by events only

    def _note_refusal(self, kind: str, key: Key, verdict: Optional[Converted]) -> None:
        with self.lock:
            if verdict is not None and verdict.refused:
                path, message = verdict.problems[0]
                more = f" (and {len(verdict.problems) - 1} more)" if len(verdict.problems) > 1 else ""
                self._refused[(kind, key)] = ManifestError(
                    self.description, verdict.label, format_path(path) or None, message + more)
            else:
                self._refused.pop((kind, key), None)

    def problems(self) -> List[ManifestError]:
        """The objects refused now (their last good version is what is programmed)."""
        with self.lock:
            return [self._refused[k] for k in sorted(self._refused)]

    def revision(self) -> Dict[str, int]:
        """Per resource kind, the newest resourceVersion whose change (if it made one) take()
        has handed over. Each watch delivers its resource in order, so once the agent reports
        this applied, every change of that kind up to it is in the maps. (resourceVersions
        are etcd's revision on the API servers in use; one that is not a number is skipped.)"""
        with self.lock:
            return dict(self._taken_revisions)

    def _seen(self, kind: str, resource_version: Optional[str]) -> None:
        """An event handled whose change (if it made one) is queued: its revision may be
        reported. When it moves the revision without a change (a status update, a bookmark), the
        agent is woken to say so."""
        with self.lock:
            if self._advance(kind, resource_version) and self.synced:
                self._wake_agent()

    def _advance(self, kind: str, resource_version: Optional[str]) -> bool:
        """Under the lock."""
        if resource_version and resource_version.isdigit() and \
                int(resource_version) > self._revisions.get(kind, 0):
            self._revisions[kind] = int(resource_version)
            return True
        return False

    def _emit(self, change: Change, resource_version: Optional[str] = None) -> None:
        """Queues a change; `resource_version` (a watch event's) is recorded with it, so a
        take() that hands the change over reports its revision too, never one without the other."""
        with self._waiters:
            if not self._pending:
                self._pending_since = time.time()
            self._pending[(change.kind, change.key)] = change
            self._advance(change.kind, resource_version)
            if self.synced:
                self._waiters.notify_all()
            self._wake_agent()

    def _listed(self, reflector: "_Reflector") -> None:
        with self._waiters:
            self._waiters.notify_all()
            self._wake_agent()

    def _wake_agent(self) -> None:
        """Under the lock, so close() cannot close the descriptor in between (a write to a
        reused descriptor number would land in some other file)."""
        if self._wake_fd >= 0:
            os.eventfd_write(self._wake_fd, 1)

    def _wake(self) -> None:
        with self._waiters:
            self._waiters.notify_all()

    # --- the Source protocol ---------------------------------------------------------------
    def take(self) -> ChangeBatch:
        """Every change queued since the last call (nothing before the initial lists)."""
        self.start()
        try:
            os.eventfd_read(self._wake_fd)
        except (BlockingIOError, OSError):
            pass
        with self.lock:
            if not self.synced:
                return ChangeBatch()
            self._taken_revisions = dict(self._revisions)
            if not self._pending:
                return ChangeBatch()
            changes, self._pending = list(self._pending.values()), {}
            since, self._pending_since = self._pending_since, None
        return ChangeBatch(changes, since)

    def close(self) -> None:
        self.stop()
        with self.lock:
            fd, self._wake_fd = self._wake_fd, -1
        if fd >= 0:
            os.close(fd)

    # --- nodes: this node's only, when its name is known -----------------------------------
    def nodes(self) -> Dict[str, Dict[str, List[str]]]:
        """node name -> {address type: [addresses]} as the API reports them."""
        with self.lock:
            objects = [obj for _, obj in self.reflectors["Node"].cache.values()]
        out: Dict[str, Dict[str, List[str]]] = {}
        for node in objects:
            addrs: Dict[str, List[str]] = {}
            for a in ((node.get("status") or {}).get("addresses") or []):
                addrs.setdefault(a.get("type", ""), []).append(a.get("address", ""))
            out[(node.get("metadata") or {}).get("name", "")] = addrs
        return out

    def own_node(self) -> Optional[Dict[str, Any]]:
        if not self.node_name:
            return None
        with self.lock:
            cached = self.reflectors["Node"].cache.get(("", self.node_name))
        return cached[1] if cached is not None else None

    def stats(self) -> Dict[str, ReflectorStats]:
        return {kind: r.stats for kind, r in self.reflectors.items()}


__all__ = ["KubernetesSource", "api_client_from", "Backoff", "RESOURCES", "GATEWAY_RESOURCES"]
