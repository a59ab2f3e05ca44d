"""The `ebpflb agent` and `ebpflb sync` commands: the long-running agent (its many options
checked and turned into ebpflb.agent.AgentOptions, then ebpflb.agent.Agent runs) and one-shot
programming of the maps from manifests (ebpflb.reconcile). Part of the ebpflb.cli package."""
import sys
from typing import List, Optional

import click

from ..addresses import DEFAULT_HEALTH_ADDRESS, DEFAULT_HEALTHZ_ADDRESS, DEFAULT_METRICS_ADDRESS
from .common import (_DEFAULTS, _config, _enter, _os_error_text, _owner_lock, _require_root,
                     _service_cidrs, _writer, cgroup_option, emit, force_option, netns_option,
                     output_option, pin_dir_option, service_cidr_option)


def _ct_timeouts(value: str):
    """"tcp_established=3600,udp=30" -> CtTimeouts; BadParameter naming the bad part."""
    from ..dataplane.config import CtTimeouts

    fields = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, _, seconds = item.partition("=")
        if name not in CtTimeouts.__dataclass_fields__ or not seconds.isdigit():
            raise click.BadParameter(f"{item!r} is not STATE=SECONDS with STATE one of "
                                     f"{', '.join(CtTimeouts.__dataclass_fields__)}",
                                     param_hint="--ct-timeouts")
        fields[name] = int(seconds)
    try:
        return CtTimeouts(**fields)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ct-timeouts") from exc


def _ip_list(values: List[str], option: str) -> tuple:
    import ipaddress

    from ..fields import canonical_ip

    try:
        return tuple(canonical_ip(str(ipaddress.ip_address(v))) for v in values)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from exc


def _cidr_list(values: List[str], option: str) -> tuple:
    import ipaddress

    try:
        return tuple(str(ipaddress.ip_network(v)) for v in values)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from exc


def _nodeport_primary(values: List[str]) -> bool:
    """--nodeport-addresses primary: alone, as kube-proxy takes it."""
    if "primary" not in values:
        return False
    if len(values) > 1:
        raise click.BadParameter("'primary' cannot be combined with CIDRs",
                                 param_hint="--nodeport-addresses")
    return True


def _port_range(value: str, option: str) -> tuple:
    low, sep, high = value.partition("-")
    try:
        if not sep:
            raise ValueError
        ports = (int(low), int(high))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not MIN-MAX", param_hint=option) from None
    return ports


TAKEOVER_SOURCES = ("auto", "iptables", "nftables", "ipvs")


def _emit_takeover(output: str, report: Optional[dict]) -> None:
    from ..takeover.run import TakeoverReport

    if report is None:
        raise click.ClickException("the agent stopped before its takeover")
    emit(output, report, lambda: TakeoverReport(**report).render())


def _require_agent_capabilities() -> None:
    from ..dataplane.preflight import effective_capabilities, missing_capabilities

    missing = missing_capabilities(effective_capabilities())
    if missing:
        raise click.ClickException("the agent lacks capabilities it needs: " + "; ".join(missing)
                                   + ". Run it as root, or grant them (see deploy/).")


@click.command()
@click.option("--manifests", "manifests", default=None, type=click.Path(exists=True),
              help="Kubernetes YAML (file or directory) with Services and EndpointSlices. "
                   "Exactly one of --manifests and --kubernetes.")
@click.option("--kubernetes", "use_kubernetes", is_flag=True,
              help="Follow the Kubernetes API server (list and watch Services, EndpointSlices "
                   "and Nodes), in-cluster or with --kubeconfig.")
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False), default=None,
              help="kubeconfig file for --kubernetes (default: the in-cluster service account).")
@click.option("--node-name", envvar="NODE_NAME", default=None, show_envvar=True,
              help="This node's name in the cluster (the DaemonSet sets NODE_NAME from the "
                   "downward API).")
@click.option("--node-zone", default=None, metavar="ZONE",
              help="This node's zone, for endpoint zone hints (trafficDistribution PreferClose "
                   "or PreferSameZone). Default: its Node's topology.kubernetes.io/zone label "
                   "(--kubernetes); with manifests, no zone (zone hints are then ignored).")
@click.option("--resync", "resync_seconds", type=click.FloatRange(10, 86400), default=300,
              show_default=True, help="Seconds between full relists of the API (--kubernetes).")
@click.option("--health-address", default=DEFAULT_HEALTH_ADDRESS, show_default=True,
              metavar="HOST:PORT",
              help="/healthz and /readyz endpoint. Loopback by default; an empty value disables it.")
@click.option("--healthz-bind-address", default=DEFAULT_HEALTHZ_ADDRESS, show_default=True,
              metavar="HOST:PORT",
              help="kube-proxy's health server: /healthz (503 while a change is late or this "
                   "node is being deleted) and /livez, which cloud load balancers probe. Empty "
                   "disables it.")
@click.option("--device", "devices", multiple=True, default=["lxc*"], show_default=True,
              help="Pod-facing device name or glob to attach to; repeatable. Devices that "
                   "appear later are attached as they appear.")
@click.option("--on-exit", type=click.Choice(["keep", "remove"]), default="keep",
              show_default=True,
              help="On SIGTERM/SIGINT: keep the data plane serving (pinned and attached) or "
                   "remove it.")
@click.option("--poll-interval", type=click.FloatRange(0.05, 60), default=1.0, show_default=True,
              help="Seconds between checks of the manifests where inotify is not available "
                   "(changes are otherwise seen as they are written).")
@click.option("--full-sync-interval", type=click.FloatRange(10, 7 * 86400), default=3600,
              show_default=True,
              help="Seconds between full syncs: the whole desired state against a read-back of "
                   "the maps (kube-proxy's sync period). In steady state it finds nothing; what "
                   "it repairs is logged and counted (ebpflb_drift_repairs_total).")
@click.option("--ct-max", type=click.IntRange(1024, 1 << 24), default=_DEFAULTS.ct_max_entries,
              show_default=True,
              help="Conntrack entries (both directions of a flow count).")
@click.option("--ct-syn-max", type=click.IntRange(1024, 1 << 24),
              default=_DEFAULTS.ct_syn_max_entries, show_default=True,
              help="Conntrack entries for half-open TCP flows, kept apart so a SYN flood cannot "
                   "evict established flows.")
@click.option("--ct-timeouts", default="", metavar="STATE=SECONDS,...",
              help="Conntrack lifetimes after a flow's last packet; states "
                   f"tcp_syn ({_DEFAULTS.ct_timeouts.tcp_syn}), tcp_established "
                   f"({_DEFAULTS.ct_timeouts.tcp_established}), tcp_close "
                   f"({_DEFAULTS.ct_timeouts.tcp_close}), udp ({_DEFAULTS.ct_timeouts.udp}), "
                   f"tcp_time_wait ({_DEFAULTS.ct_timeouts.tcp_time_wait}: a closed flow SNATed "
                   "to another node keeps its port).")
@click.option("--ct-gc-interval", type=click.FloatRange(0.1, 3600), default=10.0,
              show_default=True, help="Seconds between conntrack garbage collections.")
@click.option("--max-services", type=click.IntRange(16, 1 << 20), default=_DEFAULTS.max_services,
              show_default=True,
              help="Frontends the maps can hold.")
@click.option("--max-backends", type=click.IntRange(16, 1 << 22), default=_DEFAULTS.max_backends,
              show_default=True,
              help="Backend records (one per frontend and endpoint).")
@click.option("--max-slots", type=click.IntRange(1024, 1 << 24), default=_DEFAULTS.max_slots,
              show_default=True,
              help="Selection slots over all frontends (a backend per slot for hash-mod, M per "
                   "Maglev frontend); about 105 bytes each when used, 16 bytes each reserved.")
@click.option("--ready-file", type=click.Path(dir_okay=False), default=None,
              help="Write the agent's pid here once it serves (for scripts).")
@click.option("--algorithm", type=click.Choice(["random", "maglev"]), default="random",
              show_default=True,
              help="Backend selection for Services without the lb.ebpflb.io/algorithm annotation.")
@click.option("--maglev-table-size", type=int, default=16381, show_default=True,
              help="Maglev table size M (a prime, 251-131071) for Services without the "
                   "lb.ebpflb.io/maglev-table-size annotation.")
@click.option("--metrics-address", default=DEFAULT_METRICS_ADDRESS, show_default=True,
              metavar="HOST:PORT",
              help="Prometheus endpoint. Loopback by default; an empty value disables it.")
@click.option("--node-address", "node_addresses", multiple=True, metavar="IP",
              help="This node's address for NodePort frontends; repeatable (none: no NodePort "
                   "frontends).")
@click.option("--node-device", "node_devices", multiple=True, metavar="GLOB",
              help="Node devices (traffic from outside the cluster: NodePort, LoadBalancer, "
                   "externalIPs), e.g. eth0; repeatable. None: no north-south programs.")
@click.option("--node-mode", type=click.Choice(["xdp", "tc"]), default="xdp", show_default=True,
              help="Hook for node devices: XDP (with TC behind it) or TC only.")
@click.option("--xdp-mode", type=click.Choice(["auto", "native", "generic"]), default="auto",
              show_default=True, help="XDP flavour: native where the driver has it (auto falls "
                                      "back to generic).")
@click.option("--nodeport-addresses", "nodeport_cidrs", multiple=True, metavar="CIDR|primary",
              help="Serve NodePorts only on node addresses inside these CIDRs; repeatable "
                   "(default: every node address). 'primary', as kube-proxy's: only the node's "
                   "primary address (its Node's first InternalIP; the node devices' addresses "
                   "while no Node is known).")
@click.option("--snat-ports", default="-".join(map(str, _DEFAULTS.snat_ports)), show_default=True,
              metavar="MIN-MAX",
              help="Source ports for SNAT towards backends on other nodes; keep them outside "
                   "net.ipv4.ip_local_port_range and the NodePort range.")
@click.option("--healthcheck-address", "healthcheck_bind", multiple=True, metavar="IP",
              help="Address the healthCheckNodePort servers listen on; repeatable "
                   "(default: all addresses of the node).")
@click.option("--external-ip-allow", "external_ip_allow", multiple=True, metavar="CIDR",
              help="Program spec.externalIPs and Gateway addresses only inside these ranges; "
                   "repeatable. Default none: anyone who can edit a Service or a Gateway could "
                   "otherwise take over any address (CVE-2020-8554).")
@click.option("--proxy-name", default="", metavar="NAME",
              help="Also serve Services labelled service.kubernetes.io/service-proxy-name=NAME "
                   "(Services naming any other proxy are always left alone).")
@click.option("--socket-lb", type=click.Choice(["all", "host-only", "off"]), default="all",
              show_default=True,
              help="Balance sockets at connect()/sendmsg() time with the cgroup hooks: for every "
                   "process in --cgroup (all), only for those in the node's network namespace "
                   "(host-only: pods keep the packet path, for meshes that must see the "
                   "Service address), or for none (off). The packet path stays for the rest.")
@click.option("--takeover", "takeover", type=click.Choice(["off", *TAKEOVER_SOURCES]),
              default="off", show_default=True,
              help="At start, take the node over from kube-proxy without moving a connection "
                   "(its conntrack flows imported, then its rules removed; see `ebpflb takeover` "
                   "and docs/operations.md): auto finds iptables (legacy or nft), nftables and "
                   "IPVS state; or only the mode named. Meant for the DaemonSet's first start on a "
                   "node kube-proxy served; with nothing to take over it does nothing.")
@cgroup_option
@service_cidr_option
@pin_dir_option
@netns_option
def agent(manifests: Optional[str], use_kubernetes: bool, kubeconfig: Optional[str],
          node_name: Optional[str], node_zone: Optional[str], resync_seconds: float,
          health_address: str, healthz_bind_address: str,
          devices: List[str], on_exit: str, poll_interval: float, full_sync_interval: float,
          ct_max: int,
          ct_syn_max: int, ct_timeouts: str, ct_gc_interval: float,
          max_services: int, max_backends: int, max_slots: int, ready_file: Optional[str],
          algorithm: str, maglev_table_size: int, metrics_address: str,
          node_addresses: List[str], node_devices: List[str], node_mode: str, xdp_mode: str,
          nodeport_cidrs: List[str], snat_ports: str, healthcheck_bind: List[str],
          external_ip_allow: List[str], proxy_name: str, socket_lb: str,
          cgroup: Optional[str], service_cidrs: List[str], pin_dir: str,
          netns: Optional[str], takeover: str = "off", exit_when_ready: bool = False,
          report_output: Optional[str] = None) -> None:
    """Run the agent in the foreground: program the maps from the manifests or the Kubernetes
    API, attach to pod devices, and follow changes until SIGTERM."""
    from ..gcpause import tune_malloc

    tune_malloc()  # before any thread or large allocation
    from ..agent import Agent, AgentOptions
    from ..dataplane.loader import DataplaneError
    from ..dataplane.owner import Owned
    from ..addresses import parse_address
    from ..metrics import AgentMetrics
    from ..plan import PlanDefaults
    from ..sources.files import ManifestSource

    if (manifests is None) == (not use_kubernetes):
        raise click.UsageError("give exactly one of --manifests and --kubernetes")
    if kubeconfig and not use_kubernetes:
        raise click.UsageError("--kubeconfig goes with --kubernetes")
    _require_agent_capabilities()
    config = _config(pin_dir, ct_max_entries=ct_max, ct_syn_max_entries=ct_syn_max,
                     max_services=max_services,
                     max_backends=max_backends, max_slots=max_slots,
                     ct_timeouts=_ct_timeouts(ct_timeouts),
                     snat_ports=_port_range(snat_ports, "--snat-ports"))
    for value, option in ((health_address, "--health-address"),
                          (healthz_bind_address, "--healthz-bind-address")):
        if value:
            try:
                parse_address(value)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint=option) from exc
    try:
        defaults = PlanDefaults(algorithm, maglev_table_size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--maglev-table-size") from exc
    if metrics_address:
        try:
            parse_address(metrics_address)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--metrics-address") from exc
    _enter(netns)
    options = AgentOptions(list(devices), on_exit, ready_file, defaults,
                           metrics_address or None, health_address or None,
                           ct_gc_interval=ct_gc_interval, node_name=node_name,
                           node_zone=node_zone or None,
                           healthz_bind_address=healthz_bind_address or None,
                           proxy_name=proxy_name or None,
                           node_addresses=_ip_list(node_addresses, "--node-address"),
                           external_ip_allow=_cidr_list(external_ip_allow, "--external-ip-allow"),
                           node_devices=list(node_devices), node_mode=node_mode,
                           xdp_mode=xdp_mode,
                           nodeport_cidrs=_cidr_list(
                               [c for c in nodeport_cidrs if c != "primary"],
                               "--nodeport-addresses"),
                           nodeport_primary=_nodeport_primary(nodeport_cidrs),
                           health_check_bind=_ip_list(healthcheck_bind, "--healthcheck-address"),
                           full_sync_interval=full_sync_interval,
                           socket_lb=socket_lb, cgroup=cgroup,
                           takeover=None if takeover == "off" else takeover,
                           exit_when_ready=exit_when_ready)
    if use_kubernetes:
        from ..sources.kubernetes import KubernetesSource, api_client_from

        try:
            api = api_client_from(kubeconfig)
        except Exception as exc:  # noqa: BLE001 - the client raises ConfigException and others
            raise click.ClickException(f"cannot configure the Kubernetes client: {exc}") from exc
        from ..sources.gateway_status_writer import GatewayStatusThread, GatewayStatusWriter

        source = KubernetesSource(api, node_name=node_name, resync_seconds=resync_seconds,
                                  service_cidrs=_service_cidrs(service_cidrs))
        source.start()
        gateway_status = GatewayStatusThread(GatewayStatusWriter(api)).start()
    else:
        source = ManifestSource(manifests, _service_cidrs(service_cidrs), poll_interval=poll_interval)
        gateway_status = None
    from ..takeover.run import TakeoverError

    runner = Agent(source, config, options, AgentMetrics(), gateway_status)
    try:
        code = runner.run()
    except TakeoverError as exc:
        raise click.ClickException(f"takeover not started, nothing attached: {exc}") from exc
    except Owned as exc:
        raise click.ClickException(f"{exc}: stop it first, or give this agent another --pin-dir") from exc
    except DataplaneError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # a device vanished mid-attach, a file it needs unreadable...
        raise click.ClickException(f"agent failed: {_os_error_text(exc)}") from exc
    finally:
        if gateway_status is not None:
            gateway_status.stop()
        if use_kubernetes:
            source.stop()
    if report_output is not None:
        _emit_takeover(report_output, runner.state.takeover)
    sys.exit(code)


@click.command()
@click.option("--manifests", required=True, type=click.Path(exists=True),
              help="Kubernetes YAML (file or directory) with Services and EndpointSlices.")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@output_option
@service_cidr_option
@force_option
@pin_dir_option
def sync(manifests: str, dry_run: bool, output: str, service_cidrs: List[str], force: bool,
         pin_dir: str) -> None:
    """Program the maps once from manifests (no agent, no attach). With --dry-run, print the map
    writes it would make against what is programmed now. Refused while an agent owns the pin
    directory (it would undo what the agent programs), unless --force."""
    from ..apply import ApplyError
    from ..dataplane.loader import DataplaneError, pinned
    from ..manifests import ManifestErrors, load_manifests
    from ..maps import empty_snapshot
    from ..model import desired_state
    from ..plan import PlanError, compute_plan
    from ..reconcile import reconcile

    _require_root()
    config = _config(pin_dir)
    try:
        m = load_manifests(manifests, service_cidrs=_service_cidrs(service_cidrs))
    except ManifestErrors as exc:
        raise click.ClickException(f"manifests rejected:\n{exc}") from exc
    desired = desired_state(m.services, m.slices, gateway=m.gateway)
    for skipped in desired.skipped:
        click.echo(f"skipped {skipped.ref}: {skipped.reason}", err=True)
    lock = None if dry_run else _owner_lock(pin_dir, force, "sync")
    try:
        if dry_run and not pinned(config):
            plan = compute_plan(desired, empty_snapshot(), config.map_limits)
        else:
            writer = _writer(config, create=not dry_run)
            plan = reconcile(desired, writer, config.map_limits, dry_run=dry_run).plan
    except (PlanError, ApplyError, DataplaneError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if lock is not None:
            lock.release()
    summary = f"{'would write' if dry_run else 'wrote'} {len(plan)} map entries"
    emit(output, {"dry_run": dry_run, "writes": len(plan), "counts": plan.counts(),
                  "ops": [str(op) for op in plan.ops]}, lambda: f"{plan.render()}\n{summary}")
