"""Writes the Gateway API status ebpflb gives its objects back to the API server (an edge: the
only place that talks to the API about it).

sources -> changes -> store -> gateway model -> status bodies (ebpflb.gateway_status, pure) ->
**this writer** -> the status subresource of GatewayClasses, Gateways, TCPRoutes and UDPRoutes.

What it writes is ebpflb.gateway_status's: per object, ebpflb's conditions (and a Gateway's
addresses and listeners, a route's parent entries of ebpflb's controllerName), merged into the
object's current status by the spec's rules, which say to read the object before writing its
status ("Implementations MUST perform a read-modify-write cycle"). So each write reads the
object (an object never looked at before comes from one list of its kind, not one read each),
merges, and sends the difference as a JSON merge patch carrying the resourceVersion it read: if
someone wrote the object in between, the server answers 409 Conflict, and the writer reads it
again and merges again (conditions of other types and route parents of other controllers are
kept, never overwritten). An object whose generation is newer than the one the model judged is
left alone (the spec: the model is stale; the newer version is on its way through the watch).

It remembers what it wrote: an object whose status, as ebpflb.gateway_status gives it, is the
same as at the last write (or at the last check that found it as the API has it) costs no
request at all.
"""
from __future__ import annotations

import json
import logging
import time
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

from ..gateway import (API_VERSIONS, CONTROLLER_NAME, GATEWAY, GATEWAY_CLASS, TCP_ROUTE, UDP_ROUTE,
                       GatewayModel, GatewayObjects)
from ..gateway_status import (DesiredStatus, StatusKey, desired_statuses, merge_patch, merge_status,
                              rfc3339, stale)

log = logging.getLogger(__name__)

PLURALS = {GATEWAY_CLASS: "gatewayclasses", GATEWAY: "gateways", TCP_ROUTE: "tcproutes",
           UDP_ROUTE: "udproutes"}
CLUSTER_SCOPED = frozenset({GATEWAY_CLASS})
CONFLICT_RETRIES = 3  # reads and merges again after a 409, then leaves it for the next call
RETRY_AFTER = 10.0  # seconds without a request after the API server could not be reached
FORBIDDEN_RETRY = 300.0  # seconds before a kind whose status writes were refused (403) is tried
LIST_PAGE = 500


class _Unreachable(Exception):
    """The API server did not answer (connection refused, timeout): stop for now."""


class GatewayStatusWriter:
    """Writes what changed in the Gateway API status since the last write.

    Call contract (the agent):
    - `write(model, objects)` whenever the agent's GatewayModel was recomputed (through
      GatewayStatusThread.offer, after changes are taken and after applied syncs), with the
      GatewayObjects it was made of (their `generation` is the observedGeneration written).
      Returns the number of objects whose status it wrote (0 when nothing changed: then it makes
      no request at all). It blocks for its requests (each bounded by `request_timeout`), so
      call it outside anything latency-critical; it never raises: a failure is logged with the
      object named, and what could not be written is tried again on the next call.
    - `pending` is True while something could not be written (an error, a conflict that
      persisted, an object newer than the model, the API server unreachable): call `write()`
      again after a while even without a new model (RETRY_AFTER seconds is enough).
    - `unprogrammed`: the Gateways ("namespace/name") whose frontends are not in the maps, with
      why (Syncer.unprogrammed_gateways()): their Programmed (and their listeners') is written
      False, Pending, with that message, instead of what the model says. The agent passes none
      (GatewayStatusThread): every node's agent writes, and one node's own delay must not make
      them disagree; a single writer for the cluster could pass it.
    - `forget()` makes the next `write()` look at every object again (e.g. on the agent's slow
      full-resync timer: status changed by someone else is then repaired).
    Every agent of a cluster may run one: they compute the same status from the same objects,
    and a writer that finds the status already as it would write it writes nothing.
    """

    def __init__(self, api_client: Any, controller_name: str = CONTROLLER_NAME,
                 clock: Callable[[], float] = time.time,
                 request_timeout: Tuple[float, float] = (5.0, 10.0),
                 conflict_retries: int = CONFLICT_RETRIES,
                 retry_after: float = RETRY_AFTER,
                 forbidden_retry: float = FORBIDDEN_RETRY) -> None:
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.controller = controller_name
        self.clock = clock
        self.request_timeout = request_timeout
        self.conflict_retries = conflict_retries
        self.retry_after = retry_after
        self.forbidden_retry = forbidden_retry
        host = getattr(api_client.configuration, "host", "?")
        self.description = f"kubernetes API {host}"
        # What was last written (or found already there), per object: what write() compares.
        self._written: Dict[StatusKey, DesiredStatus] = {}
        self._versions: Dict[str, str] = {}  # kind -> the version (e.g. "v1") the server serves
        self._unreachable_until = 0.0  # time.monotonic(): no request before it
        self._failed: Set[StatusKey] = set()  # objects not written at the last call
        # kind -> time.monotonic() before which its status is not tried (a 403: the ClusterRole
        # does not let ebpflb write it; said once, tried again after FORBIDDEN_RETRY)
        self._forbidden_until: Dict[str, float] = {}
        self.writes = 0  # status writes made, in all
        self.conflicts = 0  # 409s met, in all

    @property
    def pending(self) -> bool:
        return bool(self._failed)

    def forget(self) -> None:
        self._written.clear()

    # --- the one call ----------------------------------------------------------------------
    def write(self, model: GatewayModel, objects: GatewayObjects,
              unprogrammed: Mapping[str, str] = MappingProxyType({})) -> int:
        try:
            desired = desired_statuses(model, objects, unprogrammed, self.controller)
        except Exception:  # noqa: BLE001 - a defect here must not stop the agent
            log.exception("Gateway API status: computing it failed; nothing written")
            return 0
        for key in [k for k in self._written if k not in desired]:
            del self._written[key]  # gone, or no longer ebpflb's: nothing to remember
        todo: Dict[str, List[Tuple[StatusKey, DesiredStatus]]] = {}
        for key, want in desired.items():
            if self._written.get(key) != want:
                todo.setdefault(key[0], []).append((key, want))
        self._failed = {k for items in todo.values() for k, _ in items}
        if not todo or time.monotonic() < self._unreachable_until:
            return 0
        made = 0
        for kind, items in todo.items():
            if time.monotonic() < self._forbidden_until.get(kind, 0.0):
                continue
            try:
                made += self._write_kind(kind, items)
            except _Unreachable as exc:
                self._unreachable_until = time.monotonic() + self.retry_after
                log.warning("Gateway API status: %s did not answer (%s); trying again in %.0f s",
                            self.description, exc, self.retry_after)
                break
            except Exception as exc:  # noqa: BLE001 - e.g. a list refused (403): the next call
                log.warning("Gateway API status of %s: %s: %s; trying again later",
                            _plural(kind), type(exc).__name__, _first_line(exc))
        return made

    # --- per kind, per object --------------------------------------------------------------
    def _write_kind(self, kind: str, items: List[Tuple[StatusKey, DesiredStatus]]) -> int:
        live: Dict[StatusKey, Dict[str, Any]] = {}
        if kind not in self._versions or any(k not in self._written for k, _ in items):
            # Objects never looked at (the agent started, or forget()): one list of the kind
            # instead of one read each. It also finds the version the server serves.
            found = self._list(kind, {k for k, _ in items})
            if found is None:  # the kind is not served: nothing of it to write
                self._failed.difference_update(k for k, _ in items)
                return 0
            live = found
        made = 0
        for key, want in items:
            try:
                if self._write_one(key, want, live.get(key)):
                    made += 1
            except _Unreachable:
                raise
            except Exception as exc:  # noqa: BLE001 - one object's failure is that object's
                if getattr(exc, "status", None) == 403:
                    # Every object of the kind would say the same: once, then a long pause.
                    if kind not in self._forbidden_until:
                        log.warning("Gateway API status: %s refused writing %s/status (403: the "
                                    "ClusterRole does not grant it; see deploy/rbac.yaml); "
                                    "trying again every %.0f s", self.description,
                                    PLURALS[kind], self.forbidden_retry)
                    self._forbidden_until[kind] = time.monotonic() + self.forbidden_retry
                    break
                log.warning("Gateway API status of %s %s: %s: %s; trying again later",
                            kind, _name(key), type(exc).__name__, _first_line(exc))
        return made

    def _write_one(self, key: StatusKey, want: DesiredStatus,
                   obj: Optional[Dict[str, Any]]) -> bool:
        """Reads (unless `obj` is fresh from a list), merges, patches; True when it wrote."""
        from kubernetes.client.rest import ApiException

        kind = key[0]
        for _ in range(self.conflict_retries + 1):
            if obj is None:
                obj = self._get(key)
                if obj is None:
                    # Deleted meanwhile: the model will say so. Nothing to remember.
                    self._failed.discard(key)
                    return False
            if stale(want, obj):
                log.debug("Gateway API status of %s %s: the object is at generation %s, the "
                          "model at %s: waiting for the model", kind, _name(key),
                          (obj.get("metadata") or {}).get("generation"), want.generation)
                return False
            live = obj.get("status") if isinstance(obj.get("status"), dict) else {}
            merged = merge_status(kind, want.body, live, rfc3339(self.clock()), self.controller)
            if merged == live:
                self._done(key, want)
                return False
            # The resourceVersion read is the precondition: a write in between is a 409.
            version = (obj.get("metadata") or {}).get("resourceVersion")
            patch = {"metadata": {"resourceVersion": version}, "status": merge_patch(live, merged)}
            try:
                self._call(self._patch_func(key), patch)
            except ApiException as exc:
                if exc.status == 409:
                    self.conflicts += 1
                    obj = None  # read it again and merge into what is there now
                    continue
                if exc.status == 404:
                    # Deleted meanwhile (or its version no longer served: this object is not
                    # remembered, so the next call lists its kind again, in every version).
                    self._failed.discard(key)
                    return False
                raise
            self.writes += 1
            self._done(key, want)
            log.info("Gateway API status of %s %s written (%s)", kind, _name(key),
                     _summary(want.body))
            return True
        log.warning("Gateway API status of %s %s: still in conflict after %d reads; trying "
                    "again later", kind, _name(key), self.conflict_retries + 1)
        return False

    def _done(self, key: StatusKey, want: DesiredStatus) -> None:
        self._written[key] = want
        self._failed.discard(key)

    # --- requests --------------------------------------------------------------------------
    def _call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A request with the writer's timeouts; connection failures become _Unreachable."""
        from kubernetes.client.rest import ApiException

        try:
            return func(*args, _request_timeout=self.request_timeout, **kwargs)
        except ApiException:
            raise
        except Exception as exc:  # noqa: BLE001 - urllib3's errors: the server is not there
            raise _Unreachable(f"{type(exc).__name__}: {_first_line(exc)}") from None

    def _list(self, kind: str, wanted: Set[StatusKey]) -> Optional[Dict[StatusKey, Dict[str, Any]]]:
        """The wanted objects of a kind, from a list (in pages), trying its versions in order;
        None when the server serves none of them."""
        from kubernetes.client.rest import ApiException

        versions = [v.rpartition("/")[2] for v in API_VERSIONS[kind]]
        if kind in self._versions:  # the one found last time first (and the others after it)
            versions.sort(key=lambda v: v != self._versions[kind])
        group = API_VERSIONS[kind][0].rpartition("/")[0]
        for version in versions:
            out: Dict[StatusKey, Dict[str, Any]] = {}
            token: Optional[str] = None
            try:
                while True:
                    kwargs: Dict[str, Any] = {"limit": LIST_PAGE, "_preload_content": False}
                    if token:
                        kwargs["_continue"] = token
                    resp = self._call(self.api.list_cluster_custom_object, group, version,
                                      PLURALS[kind], **kwargs)
                    try:
                        data = json.loads(resp.data)
                    finally:
                        resp.release_conn()
                    for obj in data.get("items") or []:
                        meta = obj.get("metadata") or {}
                        key = (kind, meta.get("namespace") or "", meta.get("name") or "")
                        if key in wanted:
                            out[key] = obj
                    token = (data.get("metadata") or {}).get("continue") or None
                    if token is None:
                        break
            except ApiException as exc:
                if exc.status == 404:
                    continue
                raise
            self._versions[kind] = version
            return out
        self._versions.pop(kind, None)
        log.info("Gateway API status: %s does not serve %s; not writing their status",
                 self.description, _plural(kind))
        return None

    def _get(self, key: StatusKey) -> Optional[Dict[str, Any]]:
        from kubernetes.client.rest import ApiException

        kind, namespace, name = key
        group, version = API_VERSIONS[kind][0].rpartition("/")[0], self._versions[kind]
        try:
            if kind in CLUSTER_SCOPED:
                resp = self._call(self.api.get_cluster_custom_object_status, group, version,
                                  PLURALS[kind], name, _preload_content=False)
            else:
                resp = self._call(self.api.get_namespaced_custom_object_status, group, version,
                                  namespace, PLURALS[kind], name, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        try:
            return json.loads(resp.data)
        finally:
            resp.release_conn()

    def _patch_func(self, key: StatusKey) -> Callable[[Any], Any]:
        """A merge patch of the object's status (the client sends patches of a dict body as
        application/merge-patch+json)."""
        kind, namespace, name = key
        group, version = API_VERSIONS[kind][0].rpartition("/")[0], self._versions[kind]
        if kind in CLUSTER_SCOPED:
            return lambda body, **kw: self.api.patch_cluster_custom_object_status(
                group, version, PLURALS[kind], name, body, **kw)
        return lambda body, **kw: self.api.patch_namespaced_custom_object_status(
            group, version, namespace, PLURALS[kind], name, body, **kw)


def _plural(kind: str) -> str:
    return kind + ("es" if kind.endswith("s") else "s")


def _name(key: StatusKey) -> str:
    return f"{key[1]}/{key[2]}" if key[1] else key[2]


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


def _summary(body: Any) -> str:
    """The conditions written, briefly: "Accepted=True, Programmed=False (AddressNotAssigned)"."""
    conds = list(body.get("conditions") or [])
    for p in body.get("parents") or []:
        conds.extend(p.get("conditions") or [])
    if not conds and "parents" in body:
        return "no parent of ebpflb's"
    return ", ".join(f"{c['type']}={c['status']}"
                     + ("" if c["status"] == "True" else f" ({c['reason']})") for c in conds)


class GatewayStatusThread:
    """Runs a GatewayStatusWriter beside the agent's loop, so a slow API server never delays
    programming the maps: `offer()` hands over the latest model (what has not been written yet
    is replaced, never queued), and a thread of its own writes it, and writes again after
    RETRY_AFTER while the writer has something pending.

    The agent offers the model every agent would write the same: Programmed as the model says,
    not this node's own delays (each node's agent writes; they agree, and an agent that finds
    the status already right makes no write)."""

    def __init__(self, writer: GatewayStatusWriter, retry_after: float = RETRY_AFTER) -> None:
        import threading

        self.writer = writer
        self.retry_after = retry_after
        self._cond = threading.Condition()
        self._latest: Optional[Tuple[GatewayModel, GatewayObjects]] = None
        self._stop = False
        self._forget = False
        self._thread = threading.Thread(target=self._run, name="gateway-status", daemon=True)

    def start(self) -> "GatewayStatusThread":
        self._thread.start()
        return self

    def offer(self, model: GatewayModel, objects: GatewayObjects) -> None:
        """`objects` is copied: the store's dicts change under the agent's loop."""
        snapshot = GatewayObjects(dict(objects.classes), dict(objects.gateways),
                                  dict(objects.routes), dict(objects.grants),
                                  dict(objects.namespaces))
        with self._cond:
            self._latest = (model, snapshot)
            self._cond.notify()

    def forget(self) -> None:
        """The next write checks every object against the API again (the agent's slow timer)."""
        with self._cond:
            self._forget = True
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        last: Optional[Tuple[GatewayModel, GatewayObjects]] = None
        while True:
            with self._cond:
                if not self._stop and self._latest is None and not self._forget:
                    self._cond.wait(self.retry_after if self.writer.pending else None)
                if self._stop:
                    return
                if self._latest is not None:
                    last, self._latest = self._latest, None
                if self._forget:
                    self.writer.forget()
                    self._forget = False
            if last is not None:
                try:
                    self.writer.write(*last)
                except Exception:  # noqa: BLE001 - status must never stop the agent's thread
                    log.exception("Gateway API status not written")


__all__ = ["GatewayStatusWriter", "GatewayStatusThread"]
