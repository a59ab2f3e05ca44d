"""The Kubernetes API source: list-then-watch of Services, discovery.k8s.io/v1 EndpointSlices and
Nodes through the official `kubernetes` client (first step of sources -> model -> plan -> apply).

One background thread per resource (a "reflector", as client-go calls it) keeps a cache of the raw
API objects: it lists, then watches from the list's resourceVersion with bookmarks, resumes a
dropped watch from the last resourceVersion it saw (no relist), relists when the server answers
410 Gone (an ERROR event or an ApiException), reconnects with capped exponential backoff and full
jitter, and relists every `resync_seconds` to repair anything a watch could have missed.

`poll()` (the agent calls it every poll interval) turns the cache into a `Manifests` value only
when something changed since the last poll, so a burst of events becomes one sync. Objects are
converted exactly as the manifest source converts files: the raw API JSON already is the dict
shape `kubectl get -o json` prints, and each object is validated by the manifest parser
(`parse_documents`), once per resourceVersion. Unlike a file, the desired state from the API is
assembled object by object: an object the parser refuses is skipped with a logged error naming it
(the API server has already validated it, and one odd object must not freeze every other update).
A relist that returns what is already cached changes nothing, and a poll whose result equals the
previous one returns None, so the agent writes no map.

`changed_at` is the wall-clock time of the oldest event not yet handed to the agent, so the
programming-latency histogram measures event-to-map time.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..backend_rules import DEFAULT_SERVICE_CIDRS
from ..convert import convert_api_object
from ..errors import format_path
from ..manifests import Manifests

log = logging.getLogger(__name__)

Key = Tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds


@dataclass(frozen=True)
class Resource:
    kind: str
    api_version: str
    list_method: str  # the method of the client API class that lists it across namespaces
    api_class: str  # "CoreV1Api" or "DiscoveryV1Api"


SERVICES = Resource("Service", "v1", "list_service_for_all_namespaces", "CoreV1Api")
ENDPOINTSLICES = Resource("EndpointSlice", "discovery.k8s.io/v1",
                          "list_endpoint_slice_for_all_namespaces", "DiscoveryV1Api")
NODES = Resource("Node", "v1", "list_node", "CoreV1Api")
RESOURCES = (SERVICES, ENDPOINTSLICES, NODES)


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


class _Gone(Exception):
    """The server no longer has the resourceVersion we watch from: relist."""


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
        self.list_func: Callable[..., Any] = getattr(api, resource.list_method)
        self.objects: Dict[Key, Dict[str, Any]] = {}  # guarded by source.lock
        self.synced = False
        self.resource_version: Optional[str] = None
        self.stats = ReflectorStats()
        self.backoff = Backoff(source.backoff_base, source.backoff_cap)
        self._response: Any = None
        self._last_list = 0.0
        self.thread = threading.Thread(target=self._run, name=f"watch-{resource.kind}", daemon=True)

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
            except _Gone:
                self.stats.relists_410 += 1
                log.info("watch %s: resourceVersion %s is gone (410), relisting",
                         self.resource.kind, self.resource_version)
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
                self.stats.errors += 1
                delay = self.backoff.next()
                log.warning("watch %s: %s: %s; retrying in %.2f s", self.resource.kind,
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "",
                            delay)
                stop.wait(delay)
        self.source._wake()

    def _request_kwargs(self) -> Dict[str, Any]:
        # A read timeout longer than the server-side watch timeout: a silent dead connection is
        # noticed, a quiet healthy one is not cut.
        return {"_preload_content": False,
                "_request_timeout": (self.source.connect_timeout,
                                     self.source.watch_timeout + self.source.connect_timeout)}

    def _list(self) -> None:
        self.stats.lists += 1
        resp = self.list_func(**self._request_kwargs())
        try:
            data = json.loads(resp.data)
        finally:
            resp.release_conn()
        items = {self.key(o): o for o in data.get("items") or []}
        self.resource_version = (data.get("metadata") or {}).get("resourceVersion")
        self._last_list = time.monotonic()
        with self.source.lock:
            changed = items != self.objects
            self.objects = items
            first = not self.synced
            self.synced = True
            if changed or first:
                self.source._changed_locked()
        log.info("listed %d %ss at resourceVersion %s%s", len(items), self.resource.kind,
                 self.resource_version, "" if changed or first else " (unchanged)")
        node = self.source.node_name
        if self.resource is NODES and node and ("", node) not in items:
            log.warning("node %s (--node-name / NODE_NAME) is not among the %d Nodes the API "
                        "lists", node, len(items))

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
            raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = rv
        if kind == "BOOKMARK":
            return
        self.stats.events += 1
        key = self.key(obj)
        with self.source.lock:
            if kind == "DELETED":
                if self.objects.pop(key, None) is not None:
                    self.source._changed_locked()
            elif kind in ("ADDED", "MODIFIED"):
                if self.objects.get(key) != obj:
                    self.objects[key] = obj
                    self.source._changed_locked()
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
    """A Source following the API server. `start()` launches the watches; `poll()` is the agent's
    view; `stop()` ends the watches promptly."""

    def __init__(self, api_client: Any, node_name: Optional[str] = None,
                 resync_seconds: float = 300.0, watch_timeout: float = 300.0,
                 connect_timeout: float = 5.0, backoff_base: float = 0.5,
                 backoff_cap: float = 30.0, description: Optional[str] = None,
                 service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS) -> None:
        from kubernetes import client

        self.node_name = node_name
        self.service_cidrs = tuple(service_cidrs)
        self.resync_seconds = resync_seconds
        self.watch_timeout = watch_timeout
        self.connect_timeout = connect_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        host = getattr(api_client.configuration, "host", "?")
        self.description = description or f"kubernetes API {host}"
        self.changed_at: Optional[float] = None
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self._generation = 0  # bumped (under lock) whenever a cached object really changed
        self._pending_since: Optional[float] = None  # wall clock of the oldest unpolled change
        self._polled_generation = -1
        self._last: Optional[Manifests] = None
        # (kind, key) -> (resourceVersion, parsed model object or None when refused)
        self._parsed: Dict[Tuple[str, Key], Tuple[Optional[str], Any]] = {}
        self._waiters = threading.Condition(self.lock)
        apis = {"CoreV1Api": client.CoreV1Api(api_client),
                "DiscoveryV1Api": client.DiscoveryV1Api(api_client)}
        self.reflectors = {r.kind: _Reflector(self, r, apis[r.api_class]) for r in RESOURCES}
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
        """Every resource listed at least once (before that, poll() returns None: an agent that
        restarts must not program a half-known cluster over the pins of its predecessor)."""
        return all(r.synced for r in self.reflectors.values())

    def wait_synced(self, timeout: float) -> bool:
        with self._waiters:
            return self._waiters.wait_for(lambda: self.synced, timeout)

    def wait_changed(self, timeout: float) -> bool:
        """Blocks until an unpolled change exists (for benchmarks and tests)."""
        with self._waiters:
            return self._waiters.wait_for(lambda: self._generation != self._polled_generation,
                                          timeout)

    def _changed_locked(self) -> None:
        self._generation += 1
        if self._pending_since is None:
            self._pending_since = time.time()
        self._waiters.notify_all()

    def _wake(self) -> None:
        with self._waiters:
            self._waiters.notify_all()

    # --- the Source protocol ---------------------------------------------------------------
    def poll(self) -> Optional[Manifests]:
        self.start()
        with self.lock:
            if not self.synced or self._generation == self._polled_generation:
                return None
            self._polled_generation = self._generation
            pending_since, self._pending_since = self._pending_since, None
            services = dict(self.reflectors["Service"].objects)
            slices = dict(self.reflectors["EndpointSlice"].objects)
        # Parsing happens outside the lock so the watches keep reading meanwhile.
        manifests = Manifests(self._convert(SERVICES, services),
                              self._convert(ENDPOINTSLICES, slices), ())
        if manifests == self._last:
            log.debug("%s: changes left the desired state as it was", self.description)
            return None
        self._last = manifests
        self.changed_at = pending_since
        return manifests

    def _convert(self, resource: Resource, objects: Dict[Key, Dict[str, Any]]) -> tuple:
        out: List[Any] = []
        for key in sorted(objects):
            obj = objects[key]
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            cached = self._parsed.get((resource.kind, key))
            if cached is None or cached[0] != rv or rv is None:
                cached = (rv, self._parse(resource, obj))
                self._parsed[(resource.kind, key)] = cached
            if cached[1] is not None:
                out.append(cached[1])
        # Forget parses of deleted objects.
        for k in [k for k in self._parsed if k[0] == resource.kind and k[1] not in objects]:
            del self._parsed[k]
        return tuple(out)

    def _parse(self, resource: Resource, obj: Dict[str, Any]):
        verdict = convert_api_object(resource.kind, obj, self.service_cidrs)
        if verdict.refused:
            ns, name = _Reflector.key(obj)
            log.error("%s: %s %s/%s skipped, it does not validate:\n%s", self.description,
                      resource.kind, ns, name, "\n".join(
                          f"{verdict.label}: {format_path(p) or '-'}: {m}" for p, m in verdict.problems))
            return None
        return verdict.obj

    # --- nodes (kept for NodePort and topology work) ---------------------------------------
    def nodes(self) -> Dict[str, Dict[str, List[str]]]:
        """node name -> {address type: [addresses]} as the API reports them."""
        with self.lock:
            objects = list(self.reflectors["Node"].objects.values())
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
            return self.reflectors["Node"].objects.get(("", self.node_name))

    def stats(self) -> Dict[str, ReflectorStats]:
        return {kind: r.stats for kind, r in self.reflectors.items()}


__all__ = ["KubernetesSource", "api_client_from", "Backoff", "RESOURCES"]
