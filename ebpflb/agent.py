"""The agent: keeps the data plane in step with a source until told to stop.

Start-up order keeps the node serving throughout: load the programs (maps pinned, or reused from
a previous agent), read the source's whole state and program it with a full sync against what the
pins hold, then attach to the devices (replacing any programs a previous agent left, atomically).
Afterwards the agent sleeps until something happens: the source's descriptor (inotify for
manifests, an eventfd the API watches write), a link event, or the next timer (conntrack GC,
device rescan, the slow full sync). What the source hands over is planned per changed Service and
written (ebpflb.syncer); whatever arrived meanwhile is handled as one batch, so a burst coalesces
and a lone change waits for nothing. A bad object is refused by the source alone, and its last
good version stays programmed. On SIGTERM or SIGINT the agent stops and, as asked by --on-exit,
leaves the data plane serving or removes it.
"""
import ipaddress
import logging
import os
import select
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from . import __version__
from .convert import ENDPOINT_SLICE, SERVICE
from .gcpause import give_back_memory, paused_gc
from .metrics import IP_FAMILY
from .model import HealthCheck, ModelContext
from .records import PlanDefaults
from . import node_info
from .sources import Source
from .status import remove_status, write_status
from .syncer import FULL, PERIODIC, SyncOutcome, Syncer

log = logging.getLogger(__name__)

ON_EXIT_KEEP = "keep"
ON_EXIT_REMOVE = "remove"
RESCAN_SECONDS = 10.0  # catch link events lost to a netlink overrun; check every device whole
PIN_CHECK_SECONDS = 1.0  # the maps still pinned where they belong (a stat per map)
OWNER_WAIT = 5.0  # seconds a starting agent waits for a one-shot command to release the pins
# The status file is rewritten at most every STATUS_SOON seconds (every STATUS_EVERY when it lists
# over STATUS_BIG skipped Services): coalesced, so a burst of syncs is a few writes.
STATUS_SOON = 0.05
STATUS_EVERY = 1.0
STATUS_BIG = 1000


def _warn_snat_overlap(snat_ports: Tuple[int, int],
                       path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> bool:
    """The node's own connections draw source ports from ip_local_port_range: if it overlaps the
    SNAT ports, a node connection and a SNAT flow to the same backend could share a port. Only
    warned (ebpflb changes no sysctl). Returns True when they overlap."""
    try:
        with open(path) as f:
            low, high = map(int, f.read().split())
    except (OSError, ValueError):
        return False
    if low <= snat_ports[1] and high >= snat_ports[0]:
        log.warning("--snat-ports %d-%d overlap net.ipv4.ip_local_port_range %d-%d: the node's "
                    "own connections may pick a SNAT port; choose ports outside it",
                    snat_ports[0], snat_ports[1], low, high)
        return True
    return False


TAKEOVER_RETRY_SECONDS = 30


def _netfilter_alive(family: int, proto: int, orig: Tuple[str, int, str, int]) -> bool:
    """Whether netfilter still holds a flow taken over from kube-proxy (the conntrack GC asks
    only when such flows exist)."""
    from .takeover.nf_conntrack import exists

    return exists(family, proto, orig)


def rss_mib() -> float:
    """This process's resident memory (VmRSS), MiB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        return 0.0


def _in_cidrs(address: str, cidrs: Tuple[str, ...]) -> bool:
    """--nodeport-addresses: no list means every node address."""
    return not cidrs or any(ipaddress.ip_address(address) in ipaddress.ip_network(c) for c in cidrs)


@dataclass
class AgentOptions:
    devices: List[str]
    on_exit: str = ON_EXIT_KEEP
    ready_file: Optional[str] = None
    defaults: PlanDefaults = field(default_factory=PlanDefaults)
    metrics_address: Optional[str] = None  # "HOST:PORT", None for no endpoint
    health_address: Optional[str] = None  # "HOST:PORT" of /healthz and /readyz, None for none
    healthz_bind_address: Optional[str] = None  # kube-proxy's /healthz and /livez; None: none
    ct_gc_interval: float = 10.0  # seconds between conntrack garbage collections
    node_name: Optional[str] = None  # this node, for internalTrafficPolicy: Local
    node_zone: Optional[str] = None  # this node's zone for zone hints; None: its Node's label
    proxy_name: Optional[str] = None  # serve Services labelled service-proxy-name=<this> too
    node_addresses: Tuple[str, ...] = ()  # where NodePorts listen; () = the node devices' own
    external_ip_allow: Tuple[str, ...] = ()  # CIDRs externalIPs may be programmed in
    node_devices: List[str] = field(default_factory=list)  # globs of devices facing outside
    node_mode: str = "tc"  # xdp | tc: the hook north-south traffic is taken at
    xdp_mode: str = "auto"  # auto | native | generic
    nodeport_cidrs: Tuple[str, ...] = ()  # only node addresses inside these get NodePorts
    # --nodeport-addresses primary: only the Node's primary address (the devices' without a Node)
    nodeport_primary: bool = False
    health_check_bind: Tuple[str, ...] = ()  # addresses healthCheckNodePorts listen on; () = all
    full_sync_interval: float = 3600.0  # seconds between full syncs (kube-proxy's sync period)
    retry_interval: float = 5.0  # seconds before a refused or failed sync is tried again
    socket_lb: str = "all"  # all | host-only | off: whose sockets the cgroup hooks balance
    cgroup: Optional[str] = None  # where the socket hooks attach; None = the cgroup v2 root
    # Take the node over from kube-proxy at start (ebpflb/takeover/run.py): auto | iptables |
    # nftables | ipvs; None: no takeover.
    takeover: Optional[str] = None
    exit_when_ready: bool = False  # `ebpflb takeover`: stop once serving, the data plane kept


@dataclass
class AgentState:
    syncs: int = 0  # syncs applied
    rejected: int = 0  # syncs refused (too big) or failed (a write)
    last_error: Optional[str] = None
    skipped: List[dict] = field(default_factory=list)
    last_sync: Optional[dict] = None  # what the last applied sync did
    # Seconds from start: programs compiled and loaded, source read, first sync done, ready.
    startup: dict = field(default_factory=dict)
    rss_loaded_mib: float = 0.0  # after the programs were compiled: bcc and LLVM's share
    # The source's revision whose changes are all in the maps (manifests: the newest file
    # modification read, ns; the API: per kind, the newest resourceVersion): what "applied" means.
    applied_revision: Any = None
    takeover: Optional[dict] = None  # the takeover's report (TakeoverReport.to_json)


class Agent:
    def __init__(self, source: Source, config: Any, options: AgentOptions, metrics: Any = None,
                 gateway_status: Any = None):
        """`gateway_status`: an ebpflb.sources.gateway_status_writer.GatewayStatusThread (the
        Kubernetes source: the Gateway API status goes back to the API), or None."""
        self.source = source
        self.gateway_status = gateway_status
        self._offered_gateways: Any = None  # the GatewayModel last offered to gateway_status
        self.config = config
        self.options = options
        self.metrics = metrics  # an ebpflb.metrics.AgentMetrics, or None
        self.state = AgentState()
        self.syncer: Optional[Syncer] = None
        self._purge = None  # set by run(): deletes conntrack entries of removed backends
        self._stop = False
        self._serving = False  # programs attached and the loop running
        self._wake_r, self._wake_w = os.pipe()
        self._node_addresses: Tuple[str, ...] = tuple(options.node_addresses)
        self._health_checks = None  # HealthCheckServers, started by run() when node devices exist
        self._programmed_checks: Optional[Tuple[HealthCheck, ...]] = None
        self._nodes = None  # the NodeAttacher of the node devices, for the status file
        self._socket_lb: dict = {"mode": "off"}  # what the socket hooks do, for the status file
        self._sock_cgroup: Optional[str] = None  # _cgroup(): "" when there is none
        self._unsynced_since: Optional[float] = None  # wall clock of the oldest change not in the maps
        self._retry_at = 0.0  # no sync before this (time.monotonic) after a refusal or failure
        self._status_due: Optional[float] = None
        self._taken_revision: Any = None  # the source's revision at the last take
        self._model_version = -1  # the model's outcome version the skipped list was made at
        self._started = time.monotonic()
        self._started_wall = time.time()
        self._lock = None  # the OwnerLock on the pin directory, held while running
        self._guard = None  # the DataplaneGuard, once everything is attached
        self._problems: dict = {}  # part -> what is missing now (and could not be put back)
        self._repairs: dict = {}  # kind -> how many times something was put back
        self._unmatched: List[str] = []  # --device / --node-device patterns matching nothing
        self._zone: Optional[str] = options.node_zone or None  # this node's, for zone hints
        # Its Node's primary address of each family (--nodeport-addresses primary).
        self._primary: Tuple[str, ...] = ()

    # --- the model's view of this node -----------------------------------------------------
    def _context(self) -> ModelContext:
        return ModelContext(self.options.node_name, self.options.proxy_name,
                            self._nodeport_addresses(), tuple(self.options.external_ip_allow),
                            self._zone)

    def _nodeport_addresses(self) -> Tuple[str, ...]:
        if self.options.nodeport_primary and not self.options.node_addresses and self._primary:
            return self._primary
        return tuple(a for a in self._node_addresses if _in_cidrs(a, self.options.nodeport_cidrs))

    def _node_changed(self) -> None:
        """This node's Node as the source has it now: its zone (unless --node-zone) and primary
        address (for --nodeport-addresses primary); a change replans."""
        node = self.source.own_node()
        zone = self.options.node_zone or node_info.zone(node)
        primary = node_info.primary_addresses(node) if self.options.nodeport_primary else ()
        if (zone, primary) == (self._zone, self._primary):
            return
        if zone != self._zone:
            log.info("node zone: %s (endpoint zone hints follow it)", zone or "unknown")
        if primary != self._primary:
            log.info("node primary addresses for NodePorts: %s", ", ".join(primary) or
                     "unknown (the node devices' addresses serve them)")
        self._zone, self._primary = zone, primary
        if self.syncer is not None:
            self.syncer.set_context(self._context())

    def start_syncer(self, writer: Any) -> Syncer:
        """The control plane's state, writing through `writer` (the agent's maps, or a test's)."""
        purge = None
        if self._purge is not None:
            purge = lambda stale: self._purge(stale.svc_ids, stale.udp_backends,  # noqa: E731
                                              stale.tcp_backends)
        self.syncer = Syncer(writer, self.config.map_limits, self.options.defaults,
                             self._context(), purge)
        return self.syncer

    def node_addresses_changed(self, detected: List[str]) -> None:
        """The node devices' addresses as found now; with no --node-address, they are where
        NodePorts are served, so a change replans the Services with node ports (no source
        change needed)."""
        if self.options.node_addresses:
            return
        chosen = tuple(detected)
        if chosen != self._node_addresses:
            self._node_addresses = chosen
            log.info("node addresses for NodePorts: %s",
                     ", ".join(self._nodeport_addresses()) or "none")
            if self.syncer is not None:
                self.syncer.set_context(self._context())

    def proxy_health(self):
        """kube-proxy's health (ebpflb.proxy_health): late changes, and this node's Node."""
        from .proxy_health import proxy_health

        last = (self.state.last_sync or {}).get("time") or self._started_wall
        return proxy_health(time.time(), self._unsynced_since, last, self.source.own_node())

    def _serving_whole(self) -> bool:
        """What healthCheckNodePorts report (kube-proxy: its proxy health): the source's state
        programmed, the data plane whole, and no change late. Unlike readiness, a failed sync
        alone does not fail them until a change has waited the health timeout."""
        return (self.state.syncs > 0 and self._serving and not self._problems
                and self.proxy_health().healthy)

    def readiness(self):
        """(ready, reason): ready once the source's initial state is programmed and the programs
        are attached; /readyz reports it."""
        if self.state.syncs == 0:
            return False, f"initial sync from {self.source.description} not programmed yet"
        if not self._serving:
            why = self._problems.get("takeover")
            return False, f"programs not attached yet: {why}" if why else "programs not attached yet"
        if self._problems:
            return False, "; ".join(self._problems[k] for k in sorted(self._problems))
        if self.state.last_error and self.syncer is not None and self.syncer.pending:
            return False, f"the last sync did not program everything: {self.state.last_error}"
        return True, ""

    def stop(self, *_args) -> None:
        self._stop = True
        os.write(self._wake_w, b"x")

    # --- one step ------------------------------------------------------------------------
    def take_changes(self) -> int:
        """Hands what the source has over to the syncer; returns how many changes."""
        batch = self.source.take()
        self._taken_revision = self.source.revision()
        self._node_changed()
        if not batch.changes and self.syncer is not None and not self.syncer.pending \
                and self._taken_revision != self.state.applied_revision \
                and self._taken_revision is not None and self.state.syncs:
            # Nothing new to program: everything up to this revision is in the maps already.
            self.state.applied_revision = self._taken_revision
            self._status_soon()
        if batch.changes and self.metrics is not None:
            services = sum(1 for c in batch.changes if c.kind == SERVICE)
            # kube-proxy's change counters know Services and endpoints only.
            slices = sum(1 for c in batch.changes if c.kind == ENDPOINT_SLICE)
            self.metrics.changes_taken(services, slices, time.time())
        if batch.changes and self.syncer is not None:
            touched = self.syncer.take(batch.changes)
            since = batch.since if batch.since is not None else time.time()
            if self._unsynced_since is None or since < self._unsynced_since:
                self._unsynced_since = since
            log.debug("%s: %d changes, %d Services touched", self.source.description,
                      len(batch.changes), touched)
            self._gateways_changed()
        return len(batch.changes)

    def _gateways_changed(self) -> None:
        """Hands a recomputed Gateway model to the status writer and the status file. Called
        after changes are taken (a change of status alone, say a route not allowed, moves no
        frontend and makes no sync) and after each applied sync (a Gateway programmed)."""
        syncer = self.syncer
        if syncer is None or syncer.model.gateways is self._offered_gateways:
            return
        # The model is immutable: a new object is a recomputed one, and what the API must say
        # may have changed (the writer finds out, without a request when it has not).
        self._offered_gateways = syncer.model.gateways
        if self.gateway_status is not None:
            self.gateway_status.offer(syncer.model.gateways, syncer.store.gateway_objects)
        self._status_soon()

    def sync(self) -> Optional[SyncOutcome]:
        """Programs what is pending, if anything (and if no retry delay holds it back)."""
        if self.syncer is None or not self.syncer.pending or time.monotonic() < self._retry_at:
            return None
        outcome = self.syncer.sync()
        if outcome is not None:
            self._record(outcome)
        return outcome

    def release_drained(self, live_svc_ids) -> Optional[SyncOutcome]:
        """Removes the draining frontends whose last flow ended (after a conntrack GC)."""
        if self.syncer is None:
            return None
        outcome = self.syncer.release_drained(live_svc_ids)
        if outcome is not None:
            self._record(outcome)
        return outcome

    def _record(self, outcome: SyncOutcome) -> None:
        syncer = self.syncer
        assert syncer is not None
        if outcome.applied:
            self.state.syncs += 1
            # Applied in part (Services that did not fit stay pending): not ready until they are.
            self.state.last_error = outcome.error
            self._retry_at = 0.0
            self.state.last_sync = {"kind": outcome.kind, "reason": outcome.reason,
                                    "services": outcome.services, "writes": outcome.writes,
                                    "ms": round(outcome.seconds * 1000, 3), "time": time.time(),
                                    "counts": outcome.plan.counts()}
            if outcome.writes or outcome.kind == FULL:
                log.info("%s sync%s: %d Services planned; %d frontends programmed, %d map writes "
                         "in %.1f ms (plan %.1f ms)", outcome.kind,
                         f" ({outcome.reason})" if outcome.reason else "", outcome.services,
                         len(syncer.planner.frontend_ids()), outcome.writes,
                         outcome.seconds * 1000, outcome.plan_seconds * 1000)
        else:
            self.state.rejected += 1
            self.state.last_error = outcome.error
            self._retry_at = time.monotonic() + self.options.retry_interval
        if outcome.applied and syncer.model.version != self._model_version:
            # Skipped Services and health checks only change with the model's outcome: the
            # lists are rebuilt then, not on every sync (they cost the whole cluster). Health
            # checks follow what is programmed, so only after an applied sync.
            self._model_version = syncer.model.version
            self.state.skipped = [{"service": s.ref, "reason": s.reason} for s in syncer.skipped()]
            checks = syncer.health_checks()
            if self._health_checks is not None and checks != self._programmed_checks:
                self._health_checks.sync(checks)
                self._programmed_checks = checks
        if outcome.applied:
            self._gateways_changed()
        if self.metrics is not None:
            self._record_metrics(outcome)
        if outcome.applied and not syncer.pending:
            self._unsynced_since = None
            if self._taken_revision is not None:
                self.state.applied_revision = self._taken_revision
        self._status_soon()

    def _status_soon(self) -> None:
        """A status write, coalesced with whatever else happens meanwhile."""
        delay = STATUS_SOON if len(self.state.skipped) < STATUS_BIG else STATUS_EVERY
        due = time.monotonic() + delay
        self._status_due = due if self._status_due is None else min(self._status_due, due)

    def _record_metrics(self, outcome: SyncOutcome) -> None:
        m = self.metrics
        result = ("applied" if outcome.writes else "unchanged") if outcome.applied else outcome.status
        m.syncs.labels(result).inc()
        m.sync_seconds.labels(outcome.kind).observe(outcome.seconds)
        if outcome.kind == FULL and outcome.applied:
            m.full_syncs.labels(outcome.reason or "requested").inc()
            if outcome.reason == PERIODIC:
                m.drift_writes.inc(outcome.writes)
        if outcome.applied:
            now = time.time()
            m.map_writes.inc(outcome.writes)
            m.sync_applied(outcome.kind == FULL, outcome.seconds,
                           bool(self.syncer and self.syncer.pending), now)
            # Changes made before the agent started (what the start-up sync programs) are not
            # programming latency, as kube-proxy counts only changes after its tracker started.
            since = self._unsynced_since
            if outcome.writes and since is not None and since >= self._started_wall:
                m.programming.observe(max(0.0, now - since))
                m.kp_programming.labels(IP_FAMILY).observe(max(0.0, now - since))

    def _write_status(self) -> None:
        self._status_due = None
        syncer = self.syncer
        try:
            write_status(self.config.pin_dir, {
                "pid": os.getpid(), "version": __version__, "started": self._started_wall,
                "source": self.source.description, "time": time.time(),
                "syncs": self.state.syncs, "rejected": self.state.rejected,
                "last_error": self.state.last_error, "last_sync": self.state.last_sync,
                "applied_revision": self.state.applied_revision,
                "startup_s": self.state.startup,
                "takeover": self.state.takeover,
                "memory": {"rss_mib": round(rss_mib(), 1),
                           "rss_after_program_load_mib": round(self.state.rss_loaded_mib, 1)},
                "drift_repairs": syncer.counters.drift_repairs if syncer else 0,
                "pending": bool(syncer and syncer.pending),
                "skipped": self.state.skipped,
                "refused": [str(e) for e in self._source_problems()],
                "node_devices": [{"device": d.ifname, "address": d.address,
                                  "hook": f"xdp-{d.xdp}+tc" if d.xdp else "tc"}
                                 for d in (self._nodes.attached.values() if self._nodes else [])],
                "nodeport_addresses": list(self._nodeport_addresses()),
                "socket_lb": self._socket_lb,
                "ready": self.readiness()[0], "problems": sorted(self._problems.values()),
                "repairs": dict(self._repairs), "unmatched_devices": list(self._unmatched),
                "health_check_ports": list(self._health_checks.ports()
                                           if self._health_checks else []),
                "gateways": self._gateway_view()})
        except OSError as exc:  # status is for people; serving must not depend on it
            log.warning("status file not written: %s", exc)

    def _gateway_view(self) -> Optional[Dict[str, Any]]:
        """`ebpflb gateway list`'s view of the agent's Gateways (None: no Gateway API object)."""
        syncer = self.syncer
        if syncer is None or not syncer.store.gateway_version:
            return None
        from .gateway_view import to_json

        return to_json(syncer.model.gateways, syncer.unprogrammed_gateways())

    def _source_problems(self) -> list:
        return self.source.problems()[:100]

    # --- the process ---------------------------------------------------------------------
    def run(self) -> int:
        from .dataplane.loader import ensure_bpffs
        from .dataplane.owner import acquire

        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        ensure_bpffs(self.config)
        # Before anything is bound, loaded or pinned: a second agent on these pins stops here.
        self._lock = acquire(self.config.pin_dir, wait=OWNER_WAIT)
        servers: List[Any] = []
        try:
            if self.options.health_address:
                from .agent_health import HealthServer

                servers.append(HealthServer(self.options.health_address, self.readiness).start())
            if self.options.healthz_bind_address:
                from .proxy_health import ProxyHealthServer

                count = self.metrics.count_probe if self.metrics is not None else None
                servers.append(ProxyHealthServer(self.options.healthz_bind_address,
                                                 self.proxy_health, count).start())
            return self._run()
        finally:
            for server in servers:
                server.close()
            lock = self._guard.lock if self._guard is not None else self._lock
            if lock is not None:
                lock.release()

    def _phase(self, name: str) -> None:
        self.state.startup[name] = round(time.monotonic() - self._started, 3)

    def _wait_for_source(self) -> None:
        """Until the source has read its whole state once (or the agent is told to stop). A
        take that reads the whole state in this thread (the manifest source) runs with the
        collector paused: collections walking the growing heap would cost more than the reading
        (a third more at 100,000 Services). The API source reads in its own threads, with the
        collector on: their responses leave cyclic garbage it must free."""
        self.source.start()
        while not self._stop and not self.source.synced:
            fds = [self._wake_r] + ([self.source.fileno()] if self.source.fileno() is not None else [])
            select.select(fds, [], [], 0.5)
            with paused_gc(True):
                self.take_changes()  # hands over nothing until the whole state is read
        with paused_gc(True):
            self.take_changes()  # the whole state, planned by the first (full) sync

    def _run(self) -> int:
        # Kernel edges imported here so the module stays importable without bcc or pyroute2.
        from pyroute2 import IPRoute

        from .dataplane.attach import Attacher, LinkMonitor, PodAddresses, Program
        from .dataplane.bcc_maps import BccMapWriter
        from .dataplane.cleanup import remove_dataplane
        from .dataplane.ct_gc import ConntrackGc
        from .dataplane.integrity import DataplaneGuard
        from .dataplane.loader import MAP_NAMES, load_programs
        from .dataplane.node_attach import NodeAttacher

        progs = load_programs(self.config, socket_hooks=self.options.socket_lb != "off")
        give_back_memory()  # what clang and LLVM freed after compiling
        self._phase("programs")
        self.state.rss_loaded_mib = rss_mib()
        self._purge = lambda svc_ids, udp, tcp: self._purge_stale(progs.bpf, svc_ids, udp, tcp)
        # The one writer of the maps: the Services' records and the devices' entries go through it.
        writer = BccMapWriter(progs.bpf)
        self.start_syncer(writer)
        ipr = IPRoute()
        nodes = None
        if self.options.node_devices:
            from .service_health import ALL_ADDRESSES, HealthCheckServers

            _warn_snat_overlap(self.config.snat_ports)
            # As kube-proxy's: every check fails while the agent is not serving its source's state.
            self._health_checks = HealthCheckServers(self.options.health_check_bind or
                                                     (ALL_ADDRESSES,),
                                                     proxy_healthy=self._serving_whole)
            nodes = NodeAttacher(ipr, self.options.node_devices, self.options.node_mode,
                                 self.options.xdp_mode,
                                 Program(progs.node_in.fd, progs.node_in.name.decode()),
                                 Program(progs.node_out.fd, progs.node_out.name.decode()),
                                 progs.xdp_fns(), writer)
            # NodePorts are programmed before anything is attached, on the addresses found now.
            self.node_addresses_changed(nodes.present_addresses())
        monitor = None
        try:
            self._wait_for_source()
            self._phase("source")
            self.sync()  # the full sync against whatever the pins hold
            self._phase("first_sync")
            takeover = self._start_takeover(progs.bpf, writer, ipr)
            if self._stop:
                return 0
            monitor = LinkMonitor()
            attacher = Attacher(ipr, self.options.devices,
                                Program(progs.from_pod.fd, progs.from_pod.name.decode()),
                                Program(progs.to_pod.fd, progs.to_pod.name.decode()),
                                PodAddresses(ipr, writer),
                                exclude=self.options.node_devices)
            attacher.rescan()
            if nodes is not None:
                nodes.rescan()
                self._nodes = nodes
            self._socket_hooks(progs)
            self._guard = DataplaneGuard(self.config.pin_dir, progs.bpf, MAP_NAMES, self._lock,
                                         attacher, nodes, progs, self._socket_lb.get("cgroup"),
                                         progs.sock if self.options.socket_lb != "off" else {})
            self._report_unmatched(attacher, nodes)
            self._note("devices", self._guard.devices(ipr))
            if takeover is not None:
                self._takeover_after_attach(takeover, progs.bpf, writer, ipr)
            self._phase("ready")
            self._write_status()
            if self.metrics is not None and self.options.metrics_address:
                self.metrics.serve(self.options.metrics_address, progs.bpf)
            log.info("agent ready: %s, devices %s, node devices %s (%s), pins in %s, on exit: %s "
                     "the data plane; started in %.1f s (programs %.1f s, source %.1f s, first "
                     "sync %.2f s), RSS %.0f MiB (%.0f MiB after loading the programs)",
                     self.source.description, ",".join(self.options.devices),
                     ",".join(self.options.node_devices) or "none", self.options.node_mode,
                     self.config.pin_dir, self.options.on_exit, self.state.startup["ready"],
                     self.state.startup["programs"],
                     self.state.startup["source"] - self.state.startup["programs"],
                     self.state.startup["first_sync"] - self.state.startup["source"], rss_mib(),
                     self.state.rss_loaded_mib)
            if self._problems:
                log.error("agent running but not ready: %s", "; ".join(self._problems.values()))
            if self.options.ready_file:
                with open(self.options.ready_file, "w") as f:
                    f.write(f"{os.getpid()}\n")
            self._serving = True
            self._status_soon()  # the status file says ready from now on
            if self.options.exit_when_ready:
                self._write_status()
                self._stop = True
            self._loop(monitor, attacher, nodes, ConntrackGc(progs.bpf, self.config.ct_timeouts,
                                                             _netfilter_alive), ipr)
        finally:
            if monitor is not None:
                monitor.close()
            self.source.stop()
            if self._health_checks is not None:
                self._health_checks.close()
            if self.metrics is not None:
                self.metrics.close()
            if self.options.on_exit == ON_EXIT_REMOVE:
                remove_status(self.config.pin_dir)
                removed = remove_dataplane(self.config, ipr, self._cgroup())
                log.info("agent stopped; data plane removed (%d objects: programs on %d devices, "
                         "pins in %s)", len(removed),
                         sum(1 for r in removed if r.startswith("programs on")), self.config.pin_dir)
            else:
                log.info("agent stopped; data plane left serving (pins in %s, `ebpflb cleanup` "
                         "removes it)", self.config.pin_dir)
            ipr.close()
        return 0

    def _takeover_sides(self, ipr: Any):
        from .dataplane.takeover_maps import client_sides

        return client_sides(ipr, self.options.node_devices, self.options.devices)

    def _start_takeover(self, bpf: Any, writer: Any, ipr: Any) -> Optional[Any]:
        """_takeover_before_attach, tried again every TAKEOVER_RETRY_SECONDS while it cannot
        start: nothing is attached meanwhile (kube-proxy's rules still serve the node) and
        /readyz says why. `ebpflb takeover` (exit_when_ready) fails at once instead."""
        from .takeover.run import TakeoverError

        while not self._stop:
            try:
                takeover = self._takeover_before_attach(bpf, writer, ipr)
            except TakeoverError as exc:
                if self.options.exit_when_ready:
                    raise
                self._problems["takeover"] = (f"takeover from kube-proxy not started, nothing "
                                              f"attached (kube-proxy's rules still serve): {exc}")
                log.error("%s; trying again in %d s", self._problems["takeover"],
                          TAKEOVER_RETRY_SECONDS)
                self._write_status()
                select.select([self._wake_r], [], [], TAKEOVER_RETRY_SECONDS)
                continue
            self._problems.pop("takeover", None)
            return takeover
        return None

    def _takeover_before_attach(self, bpf: Any, writer: Any, ipr: Any) -> Optional[Any]:
        """--takeover, before anything is attached: kube-proxy's rules found, netfilter's flows
        imported (ebpflb/takeover/run.py). None when there is nothing to take over. A takeover
        that cannot start stops the agent before it attaches: the node stays kube-proxy's."""
        from .dataplane import takeover_maps

        # A takeover or a hand-back that stopped half-way (a crash) left its flags. Unless a
        # takeover starts again (it sets them as it needs), this agent serves: the programs take
        # every flow again.
        if not self.options.takeover:
            takeover_maps.clear_dp_flags(bpf)
            return None
        from .apply import read_snapshot
        from .takeover.run import Takeover

        takeover = Takeover(self.options.takeover, writes=takeover_maps)
        if not takeover.before_attach(bpf, read_snapshot(writer), self._takeover_sides(ipr)):
            takeover_maps.clear_dp_flags(bpf)
            self.state.takeover = takeover.report.to_json()
            return None
        return takeover

    def _takeover_after_attach(self, takeover: Any, bpf: Any, writer: Any, ipr: Any) -> None:
        from .apply import read_snapshot

        report = takeover.after_attach(bpf, read_snapshot(writer), self._takeover_sides(ipr))
        self.state.takeover = report.to_json()
        # Not a readiness problem: the data path serves; what is left is netfilter's.
        (log.error if report.failed else log.info)("%s", report.summary())

    def _report_unmatched(self, attacher: Any, nodes: Any) -> None:
        """--device and --node-device patterns that match no device now: logged when they stop
        matching, kept in the status file, looked at again on every rescan (pod devices may
        come later; a node device named exactly must exist, which readiness checks)."""
        from .dataplane.attach import matches

        def unmatched_of(option: str, patterns, names) -> List[str]:
            return [f"{option} {p}" for p in patterns if not any(matches(n, [p]) for n in names)]

        unmatched = unmatched_of("--device", self.options.devices, attacher.attached.values())
        if nodes is not None:
            unmatched += unmatched_of("--node-device", self.options.node_devices,
                                      [d.ifname for d in nodes.attached.values()])
        for what in unmatched:
            if what not in self._unmatched:
                log.warning("%s matches no device%s", what,
                            " yet" if what.startswith("--device") else "")
        if unmatched != self._unmatched:
            self._unmatched = unmatched
            self._status_soon()

    def _note(self, part: str, finding: Any, partial: bool = False) -> None:
        """A guard check's outcome: repairs logged and counted; what is still wrong makes the
        agent not ready until a later check finds it whole (`partial`: a check of some devices
        only, which may add a problem but not clear one)."""
        for kind, what in finding.repaired:
            log.warning("repaired: %s", what)
            self._repairs[kind] = self._repairs.get(kind, 0) + 1
            if self.metrics is not None:
                self.metrics.repairs.labels(kind).inc()
            if kind == "pins" and self.syncer is not None:
                # The maps are the agent's own, but whoever removed the pins may have written.
                self.syncer.request_full("repair")
        before = self._problems.get(part)
        if finding.problem:
            if finding.problem != before:
                log.error("data plane not whole: %s", finding.problem)
            self._problems[part] = finding.problem
        elif before is not None and not partial:
            log.info("data plane whole again (%s)", part)
            del self._problems[part]
        if finding.repaired or self._problems.get(part) != before:
            self._status_soon()

    def _check(self, ipr: Any, pins: bool = True, devices: bool = False,
               only: Optional[set] = None) -> None:
        """Runs the guard's checks; after pins had to be put back, everything else is checked
        too (`ebpflb cleanup --force` takes hooks and filters with the pins)."""
        guard = self._guard
        if guard is None:
            return
        if pins:
            finding = guard.pins()
            self._note("pins", finding)
            devices = devices or bool(finding.repaired)
        if devices or only:
            self._note("devices", guard.devices(ipr, None if devices else only),
                       partial=not devices)
        if devices:
            self._note("socket hooks", guard.hooks())

    def _purge_stale(self, bpf: Any, svc_ids, udp, tcp) -> int:
        """After a sync removed backends or frontends: their flows on the packet path (returns
        how many conntrack entries went), and the sockets the socket hooks sent to them
        (connected UDP, unanswered TCP)."""
        from .dataplane.ct_gc import purge as ct_purge
        from .dataplane.stale_sockets import close_stale_sockets

        removed = ct_purge(bpf, svc_ids, udp, tcp)
        try:
            closed = close_stale_sockets(bpf, self._cgroup(), svc_ids, udp, tcp)
        except Exception as exc:  # noqa: BLE001 - sockets left open time out; serving goes on
            log.warning("closing sockets sent to removed backends failed: %s", exc)
            closed = 0
        if closed and self.metrics is not None:
            self.metrics.stale_sockets_closed.inc(closed)
        return removed

    def _cgroup(self) -> Optional[str]:
        """--cgroup, or the cgroup v2 root, looked up once (every purge step asks)."""
        if self._sock_cgroup is None:
            from .dataplane.sock_attach import cgroup2_root

            self._sock_cgroup = self.options.cgroup or cgroup2_root() or ""
        return self._sock_cgroup or None

    def _socket_hooks(self, progs: Any) -> None:
        """Socket load balancing as --socket-lb says: the settings first, then the hooks (so a
        hook never runs with a previous agent's settings); with "off", a previous agent's hooks
        are detached, as the settings already stop them translating."""
        from .dataplane.cleanup import strict_owner
        from .dataplane.sock_attach import attach_sock_hooks, detach_sock_hooks, write_settings

        mode = self.options.socket_lb
        cgroup = self._cgroup()
        write_settings(self.syncer.writer, mode, host_cookie=0 if mode == "off" else None)
        if mode == "off":
            if cgroup and detach_sock_hooks(cgroup, strict_owner(self.config)):
                log.info("socket hooks of a previous agent detached from cgroup %s", cgroup)
            self._socket_lb = {"mode": mode}
            return
        if cgroup is None:
            raise OSError("no cgroup v2 hierarchy is mounted: mount one, give --cgroup, or run "
                          "with --socket-lb off")
        attach_sock_hooks(cgroup, progs.sock, strict_owner(self.config))
        self._socket_lb = {"mode": mode, "cgroup": cgroup, "hooks": sorted(progs.sock)}

    def _loop(self, monitor: Any, attacher: Any, nodes: Any, ct_gc: Any, ipr: Any) -> None:
        from .dataplane.attach import OVERRUN

        syncer = self.syncer
        assert syncer is not None
        now = time.monotonic()
        next_gc = now + self.options.ct_gc_interval
        next_rescan = now + RESCAN_SECONDS
        next_full = now + self.options.full_sync_interval
        next_pins = now + PIN_CHECK_SECONDS
        while not self._stop:
            now = time.monotonic()
            deadlines = [next_gc, next_rescan, next_full, next_pins]
            poll_at = self.source.next_poll()
            if poll_at is not None:
                deadlines.append(poll_at)
            if syncer.pending:
                deadlines.append(self._retry_at)
            if self._status_due is not None:
                deadlines.append(self._status_due)
            timeout = max(0.0, min(deadlines) - now)
            fds = [monitor.fileno(), self._wake_r]
            source_fd = self.source.fileno()
            if source_fd is not None:
                fds.append(source_fd)
            ready, _, _ = select.select(fds, [], [], timeout)
            if self._stop:
                break
            suspect = set()  # devices whose programs may have been removed under us
            if monitor.fileno() in ready:
                for event, ifindex, ifname in monitor.events():
                    if event == OVERRUN:
                        next_rescan = now  # what was lost is found by looking again
                    elif event in ("RTM_DELTFILTER", "RTM_DELQDISC"):
                        suspect.add(ifindex)
                    elif event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
                        attacher.routes_changed(ifindex)
                    elif event == "RTM_NEWLINK":
                        attacher.consider(ifindex, ifname)
                        if nodes is not None:
                            if nodes.attached.get(ifindex) is not None:
                                suspect.add(ifindex)  # its XDP program may have gone
                            known = len(nodes.attached)
                            nodes.consider(ifindex, ifname)
                            if len(nodes.attached) != known:
                                next_rescan = now  # a node device came: say so at once
                    else:
                        attacher.forget(ifindex)
                        if nodes is not None:
                            nodes.forget(ifindex)
            now = time.monotonic()
            if (source_fd is not None and source_fd in ready) or (poll_at is not None and now >= poll_at):
                self.take_changes()
            if now >= next_rescan:
                attacher.rescan()
                if nodes is not None:
                    nodes.rescan()
                    self.node_addresses_changed(nodes.addresses())
                self._check(ipr, pins=now >= next_pins, devices=True)
                self._report_unmatched(attacher, nodes)
                next_rescan = now + RESCAN_SECONDS
            elif now >= next_pins or suspect:
                self._check(ipr, pins=now >= next_pins, only=suspect)
            if now >= next_pins:
                next_pins = now + PIN_CHECK_SECONDS
            if now >= next_full:
                syncer.request_full(PERIODIC)
                if self.gateway_status is not None:
                    self.gateway_status.forget()  # someone may have written over ours
                next_full = now + self.options.full_sync_interval
            # A whole pending batch at once; what arrives during it is the next batch.
            self.sync()
            if time.monotonic() >= next_gc:
                result = ct_gc.run(time.monotonic_ns())  # the programs' clock is CLOCK_MONOTONIC
                if self.metrics is not None:
                    self.metrics.ct_gc_deleted.inc(result.deleted)
                self.release_drained(result.svc_ids)
                next_gc = time.monotonic() + self.options.ct_gc_interval
            if self._status_due is not None and time.monotonic() >= self._status_due:
                self._write_status()
