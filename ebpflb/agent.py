"""The agent: keeps the data plane in step with a source until told to stop.

Start-up order keeps the node serving throughout: load the programs (maps pinned, or reused from
a previous agent), program the maps from the source, then attach to the devices (replacing any
programs a previous agent left, atomically). Afterwards it follows the source (only the difference
is written) and attaches to matching devices as they appear. A bad source change is logged with the
object and field, and the last good state stays programmed. On SIGTERM or SIGINT it stops and,
as asked by --on-exit, leaves the data plane serving or removes it.
"""
import gc
import logging
import os
import select
import signal
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from .apply import ApplyError, read_snapshot
from .manifests import ManifestErrors
from .maps import SERVICES, Snapshot
from .model import desired_state
from .plan import PlanDefaults, PlanError, conntrack_purge
from .reconcile import reconcile
from .sources import Source
from .status import remove_status, write_status

log = logging.getLogger(__name__)


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


def _in_cidrs(address: str, cidrs: Tuple[str, ...]) -> bool:
    """--nodeport-addresses: no list means every node address."""
    import ipaddress

    return not cidrs or any(ipaddress.ip_address(address) in ipaddress.ip_network(c) for c in cidrs)

ON_EXIT_KEEP = "keep"
ON_EXIT_REMOVE = "remove"
RESCAN_SECONDS = 10.0  # catch link events lost to a netlink overrun


@dataclass
class AgentOptions:
    devices: List[str]
    on_exit: str = ON_EXIT_KEEP
    poll_interval: float = 0.5
    ready_file: Optional[str] = None
    defaults: PlanDefaults = field(default_factory=PlanDefaults)
    metrics_address: Optional[str] = None  # "HOST:PORT", None for no endpoint
    health_address: Optional[str] = None  # "HOST:PORT" of /healthz and /readyz, None for none
    ct_gc_interval: float = 10.0  # seconds between conntrack garbage collections
    node_name: Optional[str] = None  # this node, for internalTrafficPolicy: Local
    proxy_name: Optional[str] = None  # serve Services labelled service-proxy-name=<this> too
    node_addresses: Tuple[str, ...] = ()  # where NodePorts listen; () = the node devices' own
    external_ip_allow: Tuple[str, ...] = ()  # CIDRs externalIPs may be programmed in
    node_devices: List[str] = field(default_factory=list)  # globs of devices facing outside
    node_mode: str = "tc"  # xdp | tc: the hook north-south traffic is taken at
    xdp_mode: str = "auto"  # auto | native | generic
    nodeport_cidrs: Tuple[str, ...] = ()  # only node addresses inside these get NodePorts
    health_check_bind: Tuple[str, ...] = ()  # addresses healthCheckNodePorts listen on; () = all


@dataclass
class AgentState:
    syncs: int = 0
    rejected: int = 0
    last_error: Optional[str] = None
    skipped: List[dict] = field(default_factory=list)
    snapshot: Optional[Snapshot] = field(default=None, repr=False)


class Agent:
    def __init__(self, source: Source, config, options: AgentOptions, metrics=None):
        self.source = source
        self.config = config
        self.options = options
        self.metrics = metrics  # an ebpflb.metrics.AgentMetrics, or None
        self.state = AgentState()
        self._purge = None  # set by run(): deletes conntrack entries of removed backends
        self._stop = False
        self._serving = False  # programs attached and the loop running
        self._wake_r, self._wake_w = os.pipe()
        self._manifests = None  # the last good source state, replanned when node addresses change
        self._replan = False
        self._node_addresses: Tuple[str, ...] = tuple(options.node_addresses)
        self._health_checks = None  # HealthCheckServers, started by run() when node devices exist
        self._nodes = None  # the NodeAttacher of the node devices, for the status file

    def node_addresses_changed(self, detected: List[str]) -> None:
        """The node devices' addresses as found now; with no --node-address, they are where
        NodePorts are served, so a change replans (no source change needed)."""
        if self.options.node_addresses:
            return
        chosen = tuple(a for a in detected if _in_cidrs(a, self.options.nodeport_cidrs))
        if chosen != self._node_addresses:
            log.info("node addresses for NodePorts: %s", ", ".join(chosen) or "none")
            self._node_addresses = chosen
            self._replan = True

    def readiness(self):
        """(ready, reason): ready once the source's initial sync is programmed and the programs
        are attached; /readyz reports it."""
        if self.state.syncs == 0:
            return False, f"initial sync from {self.source.description} not programmed yet"
        if not self._serving:
            return False, "programs not attached yet"
        return True, ""

    def stop(self, *_args) -> None:
        self._stop = True
        os.write(self._wake_w, b"x")

    def sync(self, writer) -> bool:
        """Reads the source if it changed and programs the difference. Returns True if it wrote."""
        before = (self.state.syncs, self.state.rejected)
        wrote = self._sync(writer)
        if (self.state.syncs, self.state.rejected) != before:
            self._write_status()
        return wrote

    def _write_status(self) -> None:
        try:
            write_status(self.config.pin_dir, {
                "pid": os.getpid(), "source": self.source.description, "time": time.time(),
                "syncs": self.state.syncs, "rejected": self.state.rejected,
                "last_error": self.state.last_error, "skipped": self.state.skipped,
                "node_devices": [{"device": d.ifname, "address": d.address,
                                  "hook": f"xdp-{d.xdp}+tc" if d.xdp else "tc"}
                                 for d in (self._nodes.attached.values() if self._nodes else [])],
                "nodeport_addresses": list(self._node_addresses),
                "health_check_ports": list(self._health_checks.ports()
                                           if self._health_checks else [])})
        except OSError as exc:  # status is for people; serving must not depend on it
            log.warning("status file not written: %s", exc)

    def _sync(self, writer) -> bool:
        try:
            manifests = self.source.poll()
        except (ManifestErrors, FileNotFoundError) as exc:
            self._rejected(exc)
            log.error("%s rejected, last good state stays programmed:\n%s",
                      self.source.description, exc)
            return False
        if manifests is None:
            if not (self._replan and self._manifests is not None):
                return False
            manifests = self._manifests
        self._replan = False
        self._manifests = manifests
        node_addresses = tuple(a for a in self._node_addresses
                               if _in_cidrs(a, self.options.nodeport_cidrs))
        desired = desired_state(manifests.services, manifests.slices, self.options.node_name,
                                self.options.proxy_name, node_addresses,
                                self.options.external_ip_allow)
        for skipped in desired.skipped:
            log.info("service %s skipped: %s", skipped.ref, skipped.reason)
        self.state.skipped = [{"service": s.ref, "reason": s.reason} for s in desired.skipped]
        started = time.monotonic()
        try:
            result = reconcile(desired, writer, self.config.map_limits, current=self.state.snapshot,
                               defaults=self.options.defaults)
        except PlanError as exc:
            self._rejected(exc)
            log.error("%s not programmed: %s", self.source.description, exc)
            return False
        except ApplyError as exc:
            self._rejected(exc)
            log.error("%s: %s", self.source.description, exc)
            self.state.snapshot = read_snapshot(writer)  # trust the kernel after a failure
            return False
        self.state.snapshot = result.snapshot
        if self._health_checks is not None:
            self._health_checks.sync(desired.health_checks)
        self.state.syncs += 1
        self.state.last_error = None
        if self.state.syncs == 1:
            # The initial state lives as long as the agent: keep the cyclic GC from walking it
            # on every collection (measured: a third off event-to-map latency at 10k Services).
            gc.freeze()
        stale = conntrack_purge(result.plan, result.snapshot[SERVICES])
        if stale and self._purge is not None:
            log.info("%d conntrack entries removed (%d frontends gone, %d UDP backends gone)",
                     self._purge(stale.svc_ids, stale.udp_backends), len(stale.svc_ids),
                     len(stale.udp_backends))
        if self.metrics is not None:
            self.metrics.syncs.labels("applied" if result.applied else "unchanged").inc()
            self.metrics.map_writes.inc(len(result.plan))
            if result.applied and self.source.changed_at:
                self.metrics.programming.observe(max(0.0, time.time() - self.source.changed_at))
        log.info("%s: %d frontends programmed, %d map writes in %.1f ms",
                 self.source.description, len(desired.frontends), len(result.plan),
                 (time.monotonic() - started) * 1000)
        return result.applied

    def _rejected(self, exc: Exception) -> None:
        self.state.rejected += 1
        self.state.last_error = str(exc)
        if self.metrics is not None:
            self.metrics.syncs.labels("rejected").inc()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        health = None
        if self.options.health_address:
            from .health import HealthServer

            health = HealthServer(self.options.health_address, self.readiness).start()
        try:
            return self._run()
        finally:
            if health is not None:
                health.close()

    def _run(self) -> int:
        # Kernel edges imported here so the module stays importable without bcc or pyroute2.
        from pyroute2 import IPRoute

        from .dataplane.attach import Attacher, LinkMonitor, Program
        from .dataplane.bcc_maps import BccMapWriter
        from .dataplane.cleanup import remove_dataplane
        from .dataplane.ct_gc import ConntrackGc
        from .dataplane.ct_gc import purge as ct_purge
        from .dataplane.loader import load_programs

        from .dataplane.node_attach import NodeAttacher

        progs = load_programs(self.config)
        writer = BccMapWriter(progs.bpf)
        self._purge = lambda svc_ids, udp: ct_purge(progs.bpf, svc_ids, udp)
        self.state.snapshot = read_snapshot(writer)
        ipr = IPRoute()
        nodes = None
        if self.options.node_devices:
            from .healthcheck import HealthCheckServers

            _warn_snat_overlap(self.config.snat_ports)

            # As kube-proxy's: every check fails while the agent is not serving its source's state.
            self._health_checks = HealthCheckServers(self.options.health_check_bind or ("0.0.0.0",),
                                                     proxy_healthy=lambda: self.readiness()[0])
            nodes = NodeAttacher(ipr, self.options.node_devices, self.options.node_mode,
                                 self.options.xdp_mode,
                                 Program(progs.node_in.fd, progs.node_in.name.decode()),
                                 Program(progs.node_out.fd, progs.node_out.name.decode()),
                                 progs.node_xdp, progs.bpf[b"lb4_node_ifs"])
            # NodePorts are programmed before anything is attached, on the addresses found now.
            self.node_addresses_changed(nodes.present_addresses())
        self.sync(writer)
        monitor = LinkMonitor()
        attacher = Attacher(ipr, self.options.devices,
                            Program(progs.from_pod.fd, progs.from_pod.name.decode()),
                            Program(progs.to_pod.fd, progs.to_pod.name.decode()))
        attacher.rescan()
        if nodes is not None:
            nodes.rescan()
            self._nodes = nodes
            self._write_status()
        if self.metrics is not None and self.options.metrics_address:
            self.metrics.serve(self.options.metrics_address, progs.bpf)
        log.info("agent ready: %s, devices %s, node devices %s (%s), pins in %s, on exit: %s "
                 "the data plane", self.source.description, ",".join(self.options.devices),
                 ",".join(self.options.node_devices) or "none", self.options.node_mode,
                 self.config.pin_dir, self.options.on_exit)
        if self.options.ready_file:
            with open(self.options.ready_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        last_rescan = last_gc = time.monotonic()
        gc = ConntrackGc(progs.bpf, self.config.ct_timeouts)
        self._serving = True
        try:
            while not self._stop:
                ready, _, _ = select.select([monitor.fileno(), self._wake_r], [], [],
                                            self.options.poll_interval)
                if monitor.fileno() in ready:
                    for event, ifindex, ifname in monitor.events():
                        if event == "RTM_NEWLINK":
                            attacher.consider(ifindex, ifname)
                            if nodes is not None:
                                nodes.consider(ifindex, ifname)
                        else:
                            attacher.forget(ifindex)
                            if nodes is not None:
                                nodes.forget(ifindex)
                if time.monotonic() - last_gc > self.options.ct_gc_interval:
                    result = gc.run(time.monotonic_ns())  # the programs' clock is CLOCK_MONOTONIC
                    if self.metrics is not None:
                        self.metrics.ct_gc_deleted.inc(result.deleted)
                    last_gc = time.monotonic()
                if time.monotonic() - last_rescan > RESCAN_SECONDS:
                    attacher.rescan()
                    if nodes is not None:
                        nodes.rescan()
                        self.node_addresses_changed(nodes.addresses())
                    last_rescan = time.monotonic()
                if not self._stop:
                    self.sync(writer)
        finally:
            monitor.close()
            if self._health_checks is not None:
                self._health_checks.close()
            if self.metrics is not None:
                self.metrics.close()
            if self.options.on_exit == ON_EXIT_REMOVE:
                remove_status(self.config.pin_dir)
                removed = remove_dataplane(self.config, ipr)
                log.info("agent stopped; data plane removed (%d objects: programs on %d devices, "
                         "pins in %s)", len(removed),
                         sum(1 for r in removed if r.startswith("programs on")), self.config.pin_dir)
            else:
                log.info("agent stopped; data plane left serving (pins in %s, `ebpflb cleanup` "
                         "removes it)", self.config.pin_dir)
            ipr.close()
        return 0
