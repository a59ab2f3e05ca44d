"""The agent's Prometheus endpoint (an edge of the agent): counters read from the maps at scrape
time, so they are exactly what the data plane counted, plus the agent's own histogram of the time
from a source change to the maps being written (kube-proxy's network_programming_duration_seconds).

Bound to 127.0.0.1 by default: counters name every Service and pod address of the node.
"""
import errno
import logging
import threading
from typing import Any, Iterator, Optional, Tuple

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, start_http_server)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .addresses import format_address, parse_address
from .dataplane.bcc_maps import DROP_REASONS, EVENTS, read_stats, read_verdicts
from .dataplane.libbpf import map_info
from .gateway import GATEWAY_DISPLAY
from .dataplane.readers import conntrack_entries
from .views import read_service_stats

log = logging.getLogger(__name__)

# Series named X_created (a counter's creation time) are not exported: kube-proxy has none, and
# they double the series count for nothing a dashboard uses.
disable_created_metrics()

PROGRAMMING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# kube-proxy's own buckets (pkg/proxy/metrics): exponential from 1 ms for sync durations; for
# network programming 0.25 s, 0.5 s, each second to 59 s, every 5 s to 115 s, every 30 s to 5 min.
KUBE_PROXY_SYNC_BUCKETS = tuple(0.001 * 2 ** i for i in range(15))
KUBE_PROXY_PROGRAMMING_BUCKETS = ((0.25, 0.5) + tuple(float(s) for s in range(1, 60))
                                  + tuple(float(s) for s in range(60, 120, 5))
                                  + tuple(float(s) for s in range(120, 301, 30)))
IP_FAMILY = "IPv4"  # the ip_family label of kube-proxy's per-family series


class ListenError(OSError):
    """A server of the agent could not listen; the message names the option and the address."""

    def __str__(self) -> str:
        return str(self.strerror)


def listen_error(option: str, host: str, port: int, exc: OSError) -> ListenError:
    if exc.errno == errno.EADDRINUSE:
        what = ("address already in use (another ebpflb agent, kube-proxy or another program "
                "listens there): stop it, or give another address, or an empty value to turn "
                "this endpoint off")
    else:
        what = exc.strerror or str(exc)
    return ListenError(exc.errno, f"{option} {format_address(host, port)}: {what}")


def build_labels() -> Tuple[str, str, str, str]:
    import platform

    from . import __version__

    try:
        from bcc import __version__ as bcc_version
    except ImportError:
        bcc_version = ""
    return __version__, platform.python_version(), bcc_version, platform.release()


def _service_labels(name: str, frontend: str) -> Tuple[str, str, str, str]:
    """namespace, name, port (or listener), frontend of a record's name: "ns/svc:port", or
    "Gateway ns/gw:listener" (a Gateway's name keeps its prefix, so it cannot pass for a
    Service of the same name)."""
    ns_name, _, port = name.partition(":")
    namespace, _, svc = ns_name.partition("/")
    gateway, space, namespace_only = namespace.partition(" ")
    if space and gateway == GATEWAY_DISPLAY:
        return namespace_only, f"{GATEWAY_DISPLAY} {svc}", port, frontend
    return namespace, svc, port, frontend


class DataplaneCollector:
    """Reads the maps on every scrape."""

    def __init__(self, bpf: Any):
        self.bpf = bpf

    def collect(self) -> Iterator[Metric]:
        svc_labels = ["namespace", "name", "port", "frontend"]
        be_labels = svc_labels + ["backend"]
        families = {
            key: CounterMetricFamily(f"ebpflb_{key}", doc, labels=labels)
            for key, doc, labels in (
                ("service_packets", "Packets through a Service frontend.", svc_labels + ["direction"]),
                ("service_bytes", "Bytes (frames at TC) through a Service frontend.", svc_labels + ["direction"]),
                ("service_connections", "Flows (new conntrack entries) of a Service frontend.", svc_labels),
                ("backend_packets", "Packets to or from a backend of a frontend.", be_labels + ["direction"]),
                ("backend_bytes", "Bytes to or from a backend of a frontend.", be_labels + ["direction"]),
                ("backend_connections", "Flows sent to a backend of a frontend.", be_labels),
            )}
        for s in read_service_stats(self.bpf):
            labels = list(_service_labels(s.service, s.frontend))
            c = s.counters
            families["service_packets"].add_metric(labels + ["in"], c.packets_in)
            families["service_packets"].add_metric(labels + ["out"], c.packets_out)
            families["service_bytes"].add_metric(labels + ["in"], c.bytes_in)
            families["service_bytes"].add_metric(labels + ["out"], c.bytes_out)
            families["service_connections"].add_metric(labels, c.conns)
            for b in s.backends:
                bl = labels + [b.backend]
                families["backend_packets"].add_metric(bl + ["in"], b.counters.packets_in)
                families["backend_packets"].add_metric(bl + ["out"], b.counters.packets_out)
                families["backend_bytes"].add_metric(bl + ["in"], b.counters.bytes_in)
                families["backend_bytes"].add_metric(bl + ["out"], b.counters.bytes_out)
                families["backend_connections"].add_metric(bl, b.counters.conns)
        yield from families.values()

        packets = CounterMetricFamily(
            "ebpflb_datapath_packets", "Program runs by hook and verdict, one per run: a packet "
            "at a TC or XDP hook, a connect() or a datagram at the socket hooks.",
            labels=["hook", "verdict"])
        for (hook, verdict), n in read_verdicts(self.bpf).items():
            packets.add_metric([hook, verdict], n)
        yield packets
        counters = read_stats(self.bpf)
        drops = CounterMetricFamily("ebpflb_drops", "Packets dropped, by reason: one per "
                                    "verdict drop.", labels=["reason"])
        for reason in DROP_REASONS:
            drops.add_metric([reason], counters[reason])
        yield drops
        events = CounterMetricFamily("ebpflb_datapath_events", "Events on the way of a packet, "
                                     "any number per packet.", labels=["event"])
        for event in EVENTS:
            events.add_metric([event], counters[event])
        yield events
        entries = GaugeMetricFamily("ebpflb_conntrack_entries", "Conntrack entries (two per "
                                    "flow), by table: ct4 (established, UDP), ct4_syn (half-open "
                                    "TCP), ct6 and ct6_syn (the same for IPv6).",
                                    labels=["table"])
        capacity = GaugeMetricFamily("ebpflb_conntrack_capacity", "Conntrack table sizes.",
                                     labels=["table"])
        for table, count in conntrack_entries(self.bpf).items():
            entries.add_metric([table], count)
            capacity.add_metric([table], map_info(self.bpf[table.encode()].map_fd).max_entries)
        yield entries
        yield capacity


class AgentMetrics:
    """The registry of one agent and what the agent records into it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.programming = Histogram(
            "ebpflb_network_programming_duration_seconds",
            "Time from a change of the source (the manifest file's modification, or the API "
            "event's arrival) to the maps being written.", buckets=PROGRAMMING_BUCKETS, registry=self.registry)
        self.syncs = Counter("ebpflb_syncs", "Syncs (a batch of changes planned and written, or "
                             "a full sync), by result: applied, unchanged, refused (would not "
                             "fit), failed (a write failed and was undone).", ["result"],
                             registry=self.registry)
        self.sync_seconds = Histogram(
            "ebpflb_sync_duration_seconds", "Plan and apply time of a sync, by kind (incremental: "
            "the changed Services; full: everything against a read-back of the maps).", ["kind"],
            buckets=PROGRAMMING_BUCKETS, registry=self.registry)
        self.full_syncs = Counter("ebpflb_full_syncs", "Full syncs applied, by reason (start, "
                                  "periodic, after a failed apply).", ["reason"],
                                  registry=self.registry)
        self.drift_writes = Counter("ebpflb_drift_repairs", "Map writes made by periodic full "
                                    "syncs: records someone else changed, repaired.",
                                    registry=self.registry)
        self.map_writes = Counter("ebpflb_map_writes", "Map records written by the agent.",
                                  registry=self.registry)
        self.ct_gc_deleted = Counter("ebpflb_conntrack_gc_deleted",
                                     "Conntrack entries of expired flows deleted by the agent.",
                                     registry=self.registry)
        self.stale_sockets_closed = Counter(
            "ebpflb_stale_sockets_closed", "Sockets the socket hooks had sent to a backend that "
            "left its Service (connected UDP, unanswered TCP connects), closed by the agent.",
            registry=self.registry)
        self.build_info = Gauge("ebpflb_build_info", "ebpflb's version, with the Python, bcc and "
                                "kernel it runs on (always 1).",
                                ["version", "python", "bcc", "kernel"], registry=self.registry)
        self.build_info.labels(*build_labels()).set(1)
        self.repairs = Counter(
            "ebpflb_dataplane_repairs", "Parts of the data plane the agent found removed under "
            "it and put back, by what: pins (maps re-pinned), device (programs re-attached), "
            "socket_hooks (re-attached to the cgroup).", ["what"], registry=self.registry)
        # kube-proxy's names, types and buckets, for the dashboards and alerts written for it,
        # fed by the same events as ours.
        self.kp_sync = Histogram("kubeproxy_sync_proxy_rules_duration_seconds",
                                 "SyncProxyRules latency in seconds", ["ip_family"],
                                 buckets=KUBE_PROXY_SYNC_BUCKETS, registry=self.registry)
        self.kp_sync_full = Histogram("kubeproxy_sync_full_proxy_rules_duration_seconds",
                                      "SyncProxyRules latency in seconds for full resyncs",
                                      ["ip_family"], buckets=KUBE_PROXY_SYNC_BUCKETS,
                                      registry=self.registry)
        self.kp_sync_partial = Histogram("kubeproxy_sync_partial_proxy_rules_duration_seconds",
                                         "SyncProxyRules latency in seconds for partial resyncs",
                                         ["ip_family"], buckets=KUBE_PROXY_SYNC_BUCKETS,
                                         registry=self.registry)
        self.kp_last_sync = Gauge("kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                                  "The last time proxy rules were successfully synced",
                                  registry=self.registry)
        self.kp_last_queued = Gauge("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                                    "The last time a sync of proxy rules was queued",
                                    registry=self.registry)
        self.kp_programming = Histogram("kubeproxy_network_programming_duration_seconds",
                                        "In Cluster Network Programming Latency in seconds",
                                        ["ip_family"], buckets=KUBE_PROXY_PROGRAMMING_BUCKETS,
                                        registry=self.registry)
        self.kp_endpoint_changes = Counter("kubeproxy_sync_proxy_rules_endpoint_changes",
                                           "Cumulative proxy rules Endpoint changes",
                                           registry=self.registry)
        self.kp_endpoint_pending = Gauge("kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                                         "Pending proxy rules Endpoint changes",
                                         registry=self.registry)
        self.kp_service_changes = Counter("kubeproxy_sync_proxy_rules_service_changes",
                                          "Cumulative proxy rules Service changes",
                                          registry=self.registry)
        self.kp_service_pending = Gauge("kubeproxy_sync_proxy_rules_service_changes_pending",
                                        "Pending proxy rules Service changes",
                                        registry=self.registry)
        self.kp_healthz = Counter("kubeproxy_proxy_healthz", "kube-proxy health server /healthz "
                                  "answers, by HTTP status code.", ["code"], registry=self.registry)
        self.kp_livez = Counter("kubeproxy_proxy_livez", "kube-proxy health server /livez "
                                "answers, by HTTP status code.", ["code"], registry=self.registry)
        self._server: Optional[Any] = None
        self._thread: Optional[threading.Thread] = None

    def changes_taken(self, services: int, slices: int, now: float) -> None:
        """Changes handed to the syncer (kube-proxy counts what it receives)."""
        self.kp_service_changes.inc(services)
        self.kp_endpoint_changes.inc(slices)
        self.kp_service_pending.inc(services)
        self.kp_endpoint_pending.inc(slices)
        self.kp_last_queued.set(now)

    def sync_applied(self, kind_full: bool, seconds: float, pending: bool, now: float) -> None:
        self.kp_sync.labels(IP_FAMILY).observe(seconds)
        (self.kp_sync_full if kind_full else self.kp_sync_partial).labels(IP_FAMILY).observe(seconds)
        self.kp_last_sync.set(now)
        if not pending:
            self.kp_service_pending.set(0)
            self.kp_endpoint_pending.set(0)

    def count_probe(self, path: str, code: int) -> None:
        (self.kp_healthz if path == "/healthz" else self.kp_livez).labels(str(code)).inc()

    def serve(self, address: str, bpf: Any) -> None:
        host, port = parse_address(address)
        self.registry.register(DataplaneCollector(bpf))
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise listen_error("--metrics-address", host, port, exc) from exc
        log.info("metrics on http://%s/metrics", format_address(host, self._server.server_port))

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
