"""The `ebpflb` command line. Thin by design: each command parses its options, calls one library
function and prints the result; the work lives in the modules it calls."""
import os
import sys
from typing import List, Optional

import click

from . import __version__
from .dataplane.config import DataplaneConfig

PIN_DIR_ENV = "EBPFLB_PIN_DIR"

# The defaults of the data plane's size and lifetime options: bpf/lb_maps.h's, through
# ebpflb/abi.py.
_DEFAULTS = DataplaneConfig()


def _log_option(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> None:
    """--log-level / --log-format, wherever given (before the command or on it)."""
    from . import logs

    if value is None:
        return
    if param.name == "log_level":
        logs.setup(level=value.lower())
    else:
        logs.setup(fmt=value.lower())


def _log_options():
    """--log-level and --log-format, accepted by the group and by every command."""
    from .logs import FORMAT_ENV, FORMATS, LEVEL_ENV, LEVELS

    return [click.Option(["--log-level"], type=click.Choice(LEVELS, case_sensitive=False),
                         envvar=LEVEL_ENV, show_envvar=True, expose_value=False,
                         callback=_log_option, is_eager=True,
                         help="debug, info (default), warning or error."),
            click.Option(["--log-format"], type=click.Choice(FORMATS, case_sensitive=False),
                         envvar=FORMAT_ENV, show_envvar=True, expose_value=False,
                         callback=_log_option, is_eager=True,
                         help="text (default) or json: one line per event either way.")]


def _os_error_text(exc: OSError) -> str:
    """An OSError as a person reads it: "what: why", not Python's "[Errno 2] ..." form."""
    why = exc.strerror or str(exc)
    where = exc.filename if exc.filename is not None else None
    return f"{where}: {why}" if where and str(where) not in why else why


def _config(pin_dir: str, **sizes):
    try:
        return DataplaneConfig(pin_dir=pin_dir, **sizes)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _ct_timeouts(value: str):
    """"tcp_established=3600,udp=30" -> CtTimeouts; BadParameter naming the bad part."""
    from .dataplane.config import CtTimeouts

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


def _ipv4_list(values: List[str], option: str) -> tuple:
    import ipaddress

    try:
        return tuple(str(ipaddress.IPv4Address(v)) for v in values)
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


def _service_cidrs(values: List[str]) -> tuple:
    from .backend_rules import parse_service_cidrs

    try:
        parse_service_cidrs(tuple(values))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--service-cidr") from exc
    return tuple(values)


def _enter(netns: Optional[str]) -> None:
    if netns:
        from .dataplane.netns import enter_netns

        try:
            enter_netns(netns)
        except (FileNotFoundError, OSError) as exc:
            raise click.ClickException(f"--netns {netns}: {exc}") from exc


def _require_root() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("this command loads or reads BPF objects: run it as root")


def _require_agent_capabilities() -> None:
    from .dataplane.preflight import effective_capabilities, missing_capabilities

    missing = missing_capabilities(effective_capabilities())
    if missing:
        raise click.ClickException("the agent lacks capabilities it needs: " + "; ".join(missing)
                                   + ". Run it as root, or grant them (see deploy/).")


pin_dir_option = click.option(
    "--pin-dir", default="/sys/fs/bpf/ebpflb", envvar=PIN_DIR_ENV, show_default=True,
    help=f"bpffs directory holding the pinned maps (env {PIN_DIR_ENV}).")
netns_option = click.option(
    "--netns", default=None, metavar="NAME",
    help="Network namespace (as in `ip netns list`) to work in, e.g. a lab node.")
service_cidr_option = click.option(
    "--service-cidr", "service_cidrs", multiple=True, default=["10.96.0.0/12"], show_default=True,
    metavar="CIDR", help="The cluster's Service range (repeatable, one per family): cluster IPs "
                         "must lie in it and endpoints must not.")
def _cgroup_path(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[str]:
    """--cgroup: a cgroup v2 directory; by default the root of the cgroup v2 hierarchy."""
    from .dataplane.sock_attach import CgroupError, cgroup2_root, check_cgroup

    if value is None:
        return cgroup2_root()
    try:
        return check_cgroup(os.path.abspath(value))
    except CgroupError as exc:
        raise click.BadParameter(exc.strerror, param_hint="--cgroup") from exc


cgroup_option = click.option(
    "--cgroup", default=None, metavar="PATH", callback=_cgroup_path,
    help="The cgroup v2 directory the socket hooks attach to: they balance the sockets of every "
         "process in it and below it. Default: the root of the cgroup v2 hierarchy (the whole "
         "node: its own processes and every pod).")
force_option = click.option(
    "--force", is_flag=True,
    help="Act even though a running agent owns the data plane (it reports not ready and "
         "repairs what it needs).")
yes_option = click.option("--yes", "-y", is_flag=True,
                          help="Do not ask for confirmation (needed when not on a terminal).")


def _owner_lock(pin_dir: str, force: bool, command: str):
    """A one-shot writer's hold on the pin directory: refused while an agent owns it."""
    from .dataplane.owner import Owned, for_command

    try:
        return for_command(pin_dir, force)
    except Owned as exc:
        raise click.ClickException(
            f"{exc}; `ebpflb {command}` would change it under the agent. Stop the agent first, "
            "or give --force") from exc
    except OSError as exc:
        raise click.ClickException(f"--pin-dir {pin_dir}: {exc.strerror or exc}") from exc


def _confirm(question: str, yes: bool) -> None:
    """Asks on a terminal; elsewhere (a script, kubectl exec without -t) --yes must say it."""
    if yes:
        return
    if sys.stdin.isatty():
        click.confirm(question, abort=True)
        return
    raise click.ClickException(f"{question} Not asked (no terminal): give --yes to confirm.")


def _out(data, fmt: str) -> None:
    """Structured output (json, yaml) of a command's data."""
    from .output import dump

    click.echo(dump(data, fmt))


output_option = click.option(
    "-o", "--output", type=click.Choice(["table", "wide", "json", "yaml"]), default="table",
    show_default=True, help="Output format: table, wide (every column), json or yaml (one "
                            "shape per command, see docs/operations.md).")
STRUCTURED = ("json", "yaml")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ebpflb")
def main() -> None:
    """ebpflb: an eBPF load balancer for Kubernetes Services (a kube-proxy replacement)."""
    from . import logs

    logs.setup()


@main.command()
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
@click.option("--health-address", default="127.0.0.1:9403", show_default=True,
              metavar="HOST:PORT",
              help="/healthz and /readyz endpoint. Loopback by default; an empty value disables it.")
@click.option("--healthz-bind-address", default="0.0.0.0:10256", show_default=True,
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
@click.option("--metrics-address", default="127.0.0.1:9402", show_default=True,
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
              help="Program spec.externalIPs only inside these ranges; repeatable. Default none: "
                   "anyone who can edit a Service could otherwise take over any address "
                   "(CVE-2020-8554).")
@click.option("--proxy-name", default="", metavar="NAME",
              help="Also serve Services labelled service.kubernetes.io/service-proxy-name=NAME "
                   "(Services naming any other proxy are always left alone).")
@click.option("--socket-lb", type=click.Choice(["all", "host-only", "off"]), default="all",
              show_default=True,
              help="Balance sockets at connect()/sendmsg() time with the cgroup hooks: for every "
                   "process in --cgroup (all), only for those in the node's network namespace "
                   "(host-only: pods keep the packet path, for meshes that must see the "
                   "Service address), or for none (off). The packet path stays for the rest.")
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
          netns: Optional[str]) -> None:
    """Run the agent in the foreground: program the maps from the manifests or the Kubernetes
    API, attach to pod devices, and follow changes until SIGTERM."""
    from .gcpause import tune_malloc

    tune_malloc()  # before any thread or large allocation
    from .agent import Agent, AgentOptions
    from .dataplane.loader import DataplaneError
    from .dataplane.owner import Owned
    from .metrics import AgentMetrics, parse_address
    from .plan import PlanDefaults
    from .sources.files import ManifestSource

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
                           node_addresses=_ipv4_list(node_addresses, "--node-address"),
                           external_ip_allow=_cidr_list(external_ip_allow, "--external-ip-allow"),
                           node_devices=list(node_devices), node_mode=node_mode,
                           xdp_mode=xdp_mode,
                           nodeport_cidrs=_cidr_list(
                               [c for c in nodeport_cidrs if c != "primary"],
                               "--nodeport-addresses"),
                           nodeport_primary=_nodeport_primary(nodeport_cidrs),
                           health_check_bind=_ipv4_list(healthcheck_bind, "--healthcheck-address"),
                           full_sync_interval=full_sync_interval,
                           socket_lb=socket_lb, cgroup=cgroup)
    if use_kubernetes:
        from .sources.kubernetes import KubernetesSource, api_client_from

        try:
            api = api_client_from(kubeconfig)
        except Exception as exc:  # noqa: BLE001 - the client raises ConfigException and others
            raise click.ClickException(f"cannot configure the Kubernetes client: {exc}") from exc
        source = KubernetesSource(api, node_name=node_name, resync_seconds=resync_seconds,
                                  service_cidrs=_service_cidrs(service_cidrs))
        source.start()
    else:
        source = ManifestSource(manifests, _service_cidrs(service_cidrs), poll_interval=poll_interval)
    try:
        code = Agent(source, config, options, AgentMetrics()).run()
    except Owned as exc:
        raise click.ClickException(f"{exc}: stop it first, or give this agent another --pin-dir") from exc
    except DataplaneError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # a device vanished mid-attach, a file it needs unreadable...
        raise click.ClickException(f"agent failed: {_os_error_text(exc)}") from exc
    finally:
        if use_kubernetes:
            source.stop()
    sys.exit(code)


@main.command()
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
    from .apply import ApplyError
    from .dataplane.loader import DataplaneError, pinned
    from .manifests import ManifestErrors, load_manifests
    from .maps import empty_snapshot
    from .model import desired_state
    from .plan import PlanError, compute_plan
    from .reconcile import reconcile

    _require_root()
    config = _config(pin_dir)
    try:
        m = load_manifests(manifests, service_cidrs=_service_cidrs(service_cidrs))
    except ManifestErrors as exc:
        raise click.ClickException(f"manifests rejected:\n{exc}") from exc
    desired = desired_state(m.services, m.slices)
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
    if output in STRUCTURED:
        _out({"dry_run": dry_run, "writes": len(plan), "counts": plan.counts(),
              "ops": [str(op) for op in plan.ops]}, output)
    else:
        click.echo(plan.render())
        click.echo(f"{'would write' if dry_run else 'wrote'} {len(plan)} map entries")


def _writer(config, create: bool = False):
    from .dataplane.bcc_maps import BccMapWriter
    from .dataplane.loader import open_maps

    return BccMapWriter(open_maps(config, create=create))


@main.group()
def service() -> None:
    """Inspect programmed services."""


def _service_filter(value: Optional[str]):
    """NS/NAME or NS/NAME:PORT -> a predicate on a view's "namespace/name:port"."""
    if value is None:
        return lambda service: True
    if "/" not in value:
        raise click.BadParameter(f"{value!r} is not NS/NAME or NS/NAME:PORT", param_hint="SERVICE")
    if ":" in value:
        return lambda service: service == value
    return lambda service: service.partition(":")[0] == value


def _list_services(service_ref: Optional[str], show_all: bool, output: str, pin_dir: str,
                   must_exist: bool) -> None:
    from .apply import read_snapshot
    from .dataplane.loader import DataplaneError
    from .inspect import render_table, service_views, to_json
    from .status import read_status, status_path

    _require_root()
    wanted = _service_filter(service_ref)
    try:
        views = [v for v in service_views(read_snapshot(_writer(_config(pin_dir))))
                 if wanted(v.service)]
    except DataplaneError as exc:
        raise click.ClickException(str(exc)) from exc
    status = None
    if show_all:
        status = read_status(pin_dir)
        if status is None:
            raise click.ClickException(f"no agent status at {status_path(pin_dir)}: skipped "
                                       "Services are known only while an agent runs")
    skipped = ([s for s in status.get("skipped", []) if wanted(s.get("service", "") + ":")
                or wanted(s.get("service", ""))] if status is not None else None)
    if must_exist and not views and not skipped:
        raise click.ClickException(f"service {service_ref} is not programmed in {pin_dir} "
                                   "(`ebpflb service list --all` shows what the agent skipped)")
    if output in STRUCTURED:
        # One shape with or without --all: what the agent's status adds is null without it.
        _out({"services": to_json(views), "skipped": skipped,
              "node_devices": status.get("node_devices", []) if status is not None else None,
              "health_check_ports": (status.get("health_check_ports", [])
                                     if status is not None else None)}, output)
        return
    click.echo(render_table(views, wide=output == "wide"))
    if status is not None:
        click.echo(f"\nskipped ({len(skipped)}):" if skipped else "\nskipped: none")
        for item in skipped:
            click.echo(f"  {item['service']}: {item['reason']}")
        devices = status.get("node_devices", [])
        click.echo("node devices: " + (", ".join(f"{d['device']} {d['address'] or '-'} "
                                                 f"({d['hook']})" for d in devices) or "none"))
        ports = status.get("health_check_ports", [])
        if ports:
            click.echo("healthCheckNodePorts: " + ", ".join(map(str, ports)))


@service.command("list")
@click.argument("service_ref", metavar="[NS/NAME[:PORT]]", required=False)
@click.option("--all", "show_all", is_flag=True,
              help="Also list the Services the agent skipped (ExternalName, headless, another "
                   "proxy's, ...) and why, from the agent's status file.")
@output_option
@pin_dir_option
def service_list(service_ref: Optional[str], show_all: bool, output: str, pin_dir: str) -> None:
    """List every frontend and its backends as programmed in the BPF maps (not the manifests),
    or only those of one Service (NS/NAME) or Service port (NS/NAME:PORT)."""
    _list_services(service_ref, show_all, output, pin_dir, must_exist=False)


@service.command("get")
@click.argument("service_ref", metavar="NS/NAME[:PORT]")
@output_option
@pin_dir_option
def service_get(service_ref: str, output: str, pin_dir: str) -> None:
    """One Service's frontends and backends as programmed (with why it is skipped, when the
    agent skipped it); an error when it is neither."""
    from .status import read_status

    _list_services(service_ref, read_status(pin_dir) is not None, output, pin_dir,
                   must_exist=True)


def _open_or_fail(pin_dir: str):
    from .dataplane.loader import DataplaneError

    _require_root()
    try:
        return _writer(_config(pin_dir))
    except DataplaneError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--watch", type=click.FloatRange(0.1, 3600), default=None, metavar="SECONDS",
              help="Print again every SECONDS with rates over that interval, until Ctrl-C.")
@click.option("--verdicts", is_flag=True,
              help="Instead, the data plane's global counters since the maps were created: "
                   "one verdict per program run, by hook; why packets were dropped; events "
                   "(conntrack inserts, SNAT, XDP forwarding...).")
@click.option("--service", "service_ref", metavar="NS/NAME[:PORT]", default=None,
              help="Only this Service's (or Service port's) frontends.")
@output_option
@pin_dir_option
def stats(watch: Optional[float], verdicts: bool, service_ref: Optional[str], output: str,
          pin_dir: str) -> None:
    """Traffic per frontend and per backend: connections, packets and bytes in and out (as
    ipvsadm -Ln --stats), with rates per second when --watch is given: the table is redrawn in
    place on a terminal; JSON comes as one timestamped document per line."""
    import time

    from .dataplane.bcc_maps import DROP_REASONS, read_stats, read_verdicts
    from .dataplane.readers import read_service_stats as read_all
    from .output import watch_line
    from .stats import (global_counters, render_global_counters, render_table, to_json,
                        with_rates)

    wanted = _service_filter(service_ref)

    def read_service_stats(bpf):
        return [s for s in read_all(bpf) if wanted(s.service)]

    bpf = _open_or_fail(pin_dir).bpf
    if verdicts:
        stats_ = read_stats(bpf)
        counters = global_counters(read_verdicts(bpf),
                                   {k: stats_[k] for k in DROP_REASONS},
                                   {k: n for k, n in stats_.items() if k not in DROP_REASONS})
        if output in STRUCTURED:
            _out(counters, output)
        else:
            click.echo(render_global_counters(counters))
        return

    before, at = read_service_stats(bpf), time.monotonic()
    if watch is None:
        if output in STRUCTURED:
            _out(to_json(before), output)
        else:
            click.echo(render_table(before))
        return
    redraw = sys.stdout.isatty() and output not in STRUCTURED
    try:
        while True:
            time.sleep(watch)
            now_stats, now = read_service_stats(bpf), time.monotonic()
            current = with_rates(before, now_stats, now - at)
            if output in STRUCTURED:
                click.echo(watch_line(to_json(current)))  # one document per line, for tools
            else:
                # On a terminal the table is redrawn where it was (clear screen, home).
                click.echo(("\x1b[H\x1b[2J" if redraw else "\n")
                           + f"--- {time.strftime('%H:%M:%S')} (rates over {now - at:.1f}s)")
                click.echo(render_table(current))
            before, at = now_stats, now
    except KeyboardInterrupt:
        pass


@main.group()
def ct() -> None:
    """Inspect or flush the load balancer's connection tracking."""


def _svc_ids(writer, services: List[str]) -> Optional[List[int]]:
    """Ids of the frontends named "namespace/name" (every port) or "namespace/name:port"."""
    from .apply import read_snapshot
    from .maps import SVC_META

    if not services:
        return None
    names = read_snapshot(writer)[SVC_META]
    ids = [i for i, name in names.items()
           if any(name == s or name.split(":")[0] == s for s in services)]
    unknown = [s for s in services if not any(n == s or n.split(":")[0] == s for n in names.values())]
    if unknown:
        raise click.BadParameter(f"no programmed service named {', '.join(unknown)}",
                                 param_hint="--service")
    return ids


def _ct_state(entry) -> str:
    if entry.protocol != "TCP":
        return "-"
    from .maps import CT_F_CLOSING

    if entry.flags & CT_F_CLOSING:
        return "closing"
    return "half-open" if entry.half_open else "established"


@ct.command("list")
@click.option("--service", "services", multiple=True, metavar="NS/NAME[:PORT]",
              help="Only flows of this service; repeatable.")
@output_option
@pin_dir_option
def ct_list(services: List[str], output: str, pin_dir: str) -> None:
    """List tracked flows: client, frontend, backend, protocol, age and idle time."""
    import time

    from .apply import read_snapshot
    from .dataplane.readers import flows
    from .maps import CT_F_EXTERNAL, CT_F_SRC_NAT, SVC_META

    writer = _open_or_fail(pin_dir)
    names = read_snapshot(writer)[SVC_META]
    now = time.monotonic_ns()
    entries = sorted(flows(writer.bpf, _svc_ids(writer, services)), key=lambda e: e.created_ns)
    rows = [{"protocol": e.protocol, "state": _ct_state(e), "client": f"{e.saddr}:{e.sport}",
             "frontend": f"{e.daddr}:{e.dport}", "backend": f"{e.nat_addr}:{e.nat_port}",
             "service": names.get(e.svc_id, f"(gone, svc {e.svc_id})"),
             # A backend on another node is reached from this node's address (SNAT); a second
             # flow from one client port to one backend, from a port of its own.
             "snat": f"{e.nat2_addr}:{e.nat2_port}" if e.flags & CT_F_SRC_NAT else None,
             "external": bool(e.flags & CT_F_EXTERNAL),
             "age_seconds": round((now - e.created_ns) / 1e9, 3),
             "idle_seconds": round((now - e.last_seen_ns) / 1e9, 3)} for e in entries]
    if output in STRUCTURED:
        _out(rows, output)
        return
    head = ("PROTO", "STATE", "CLIENT", "FRONTEND", "BACKEND", "SNAT", "SERVICE", "AGE", "IDLE")
    table = [head] + [(r["protocol"], r["state"], r["client"], r["frontend"], r["backend"],
                       r["snat"] or "-", r["service"],
                       f"{r['age_seconds']:.0f}s", f"{r['idle_seconds']:.0f}s") for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(head))]
    for t in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(t, widths)).rstrip())
    click.echo(f"{len(rows)} flows")


@ct.command("flush")
@click.option("--service", "services", multiple=True, metavar="NS/NAME[:PORT]",
              help="Only flows of this service; repeatable. Without it, every flow.")
@yes_option
@force_option
@pin_dir_option
def ct_flush(services: List[str], yes: bool, force: bool, pin_dir: str) -> None:
    """Delete conntrack entries. Flows of existing frontends are re-hashed on their next packet
    (same backend while the backend set is unchanged); flows SNATed to other nodes and moved
    flows lose their translation. Asks first (--yes does not); refused while an agent owns the
    data plane, unless --force."""
    from .dataplane.readers import flush_conntrack

    writer = _open_or_fail(pin_dir)
    ids = _svc_ids(writer, services)
    what = f"the flows of {', '.join(services)}" if services else "every flow"
    _confirm(f"Delete the conntrack entries of {what} in {pin_dir}?", yes)
    lock = _owner_lock(pin_dir, force, "ct flush")
    try:
        click.echo(f"deleted {flush_conntrack(writer.bpf, ids)} conntrack entries")
    finally:
        if lock is not None:
            lock.release()


@main.command()
@click.argument("src")
@click.argument("dst")
@click.argument("protocol", type=click.Choice(["tcp", "udp"], case_sensitive=False))
@click.option("--from-outside", "outside", is_flag=True,
              help="The flow arrives on a node device from outside the cluster (default: from a "
                   "pod). Backends routed through a node device are shown SNATed and forwarded.")
@click.option("--tcp-flags", default="S", show_default=True, metavar="LETTERS",
              help="The TCP flags of the packet, as scapy writes them (S, A, F, R, P...): which "
                   "packet of the flow is explained.")
@click.option("--device", "ifname", metavar="IFNAME",
              help="The device the packet arrives on, in this network namespace: a pod device's "
                   "listed addresses and the flow's device binding are checked.")
@click.option("--socket", "socket_hook", type=click.Choice(["pod", "host"]), default=None,
              help="Explain the connect()/sendmsg() of a process in the socket hooks' cgroup "
                   "instead (a pod's, or a host-network one's): whether the hooks send the "
                   "socket to a backend, and which.")
@click.option("--cookie", type=click.IntRange(1, (1 << 64) - 1), default=None,
              help="With --socket: the socket's cookie (getsockopt SO_COOKIE, `ss -e`), which "
                   "decides its slot.")
@click.option("--netns-cookie", type=click.IntRange(1, (1 << 64) - 1), default=None,
              help="With --socket pod: the pod's network namespace cookie (SO_NETNS_COOKIE), "
                   "to read its session-affinity binding (a host process's is known).")
@output_option
@pin_dir_option
@netns_option
def explain(src: str, dst: str, protocol: str, outside: bool, tcp_flags: str,
            ifname: Optional[str], socket_hook: Optional[str], cookie: Optional[int],
            netns_cookie: Optional[int], output: str, pin_dir: str,
            netns: Optional[str]) -> None:
    """Predict where a flow SRC (ip:port) -> DST (ip:port) PROTOCOL goes, from the programmed maps,
    conntrack and the routes, as the program on that device decides: the frontend, algorithm,
    hash, slot and backend, and whether a conntrack entry decides. With --socket, what the
    cgroup socket hooks do at connect() time instead (the packet path never sees the frontend
    of a socket they translate)."""
    import time

    from .apply import read_snapshot
    from .dataplane.bcc_maps import lookup_affinity, lookup_conntrack
    from .dataplane.loader import DataplaneError
    from .explain import (AffinityView, ConntrackView, explain as explain_flow, parse_flow, render,
                          reply_key)
    from .dataplane.explain_inputs import device as explain_device
    from .maps import BACKENDS, CT_F_SRC_NAT, SERVICES, SVC_F_ETP_LOCAL, SvcKey

    try:
        flow = parse_flow(src, dst, protocol, tcp_flags.upper())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    _require_root()
    _enter(netns)  # the devices and routes of the node; the pins stay visible
    try:
        writer = _writer(_config(pin_dir))
    except DataplaneError as exc:
        raise click.ClickException(str(exc)) from exc
    snapshot = read_snapshot(writer)
    now = time.monotonic_ns()  # bpf_ktime_get_ns() is CLOCK_MONOTONIC too
    if (cookie is not None or netns_cookie is not None) and socket_hook is None:
        raise click.UsageError("--cookie and --netns-cookie go with --socket")
    if socket_hook is not None:
        from .dataplane.bcc_maps import lookup_sock_affinity
        from .dataplane.sock_attach import read_host_cookie, read_mode
        from .explain_socket import explain_socket, render_socket

        ns_cookie = read_host_cookie(writer.bpf) if socket_hook == "host" else netns_cookie
        svc = snapshot[SERVICES].get(SvcKey(flow.daddr, flow.dport, flow.proto))
        bound = (lookup_sock_affinity(writer.bpf, svc.svc_id, ns_cookie)
                 if svc is not None and svc.affinity_timeout and ns_cookie else None)
        result = explain_socket(snapshot, flow.daddr, flow.dport, flow.proto,
                                read_mode(writer.bpf), socket_hook == "host", cookie,
                                AffinityView(bound[0], (now - bound[1]) / 1e9) if bound else None,
                                affinity_known=bool(ns_cookie))
        if output in STRUCTURED:
            _out(result.to_json(), output)
        else:
            click.echo(render_socket(result))
        return

    def view(entry):
        # Without --device, ifindex 0: the device binding is not checked.
        return ConntrackView(f"{entry.nat_addr}:{entry.nat_port}", entry.backend_id,
                             (now - entry.created_ns) / 1e9, (now - entry.last_seen_ns) / 1e9,
                             f"{entry.nat2_addr}:{entry.nat2_port}"
                             if entry.flags & CT_F_SRC_NAT else None,
                             flags=entry.flags, half_open=entry.half_open,
                             ifindex=entry.ifindex if ifname else 0)

    entry = lookup_conntrack(writer.bpf, flow.saddr, flow.sport, flow.daddr, flow.dport, flow.proto)
    ct = affinity = None
    table = {}
    if entry is not None:
        ct = view(entry)
        rev = reply_key(flow, ct)  # the program checks it (a SNAT port still the flow's)
        reply = lookup_conntrack(writer.bpf, rev.saddr, rev.sport, rev.daddr, rev.dport,
                                 flow.proto, reply=True)
        if reply is not None:
            table[rev] = view(reply)
    key = SvcKey(flow.daddr, flow.dport, flow.proto)
    svc = snapshot[SERVICES].get(key)
    if svc is not None and outside and svc.flags & SVC_F_ETP_LOCAL:
        svc = snapshot[SERVICES].get(key._replace(scope=1))  # the record for traffic from outside
    bound = lookup_affinity(writer.bpf, svc.svc_id, flow.saddr) if svc else None
    if bound is not None:
        affinity = AffinityView(bound[0], (now - bound[1]) / 1e9)
    backends = {b.addr for b in snapshot[BACKENDS].values() if svc and b.svc_id == svc.svc_id}
    try:
        dev = explain_device(writer.bpf, ifname, outside, backends)
    except OSError as exc:
        raise click.BadParameter(f"{ifname}: {exc.strerror or exc}", param_hint="--device") from exc
    result = explain_flow(snapshot, flow, ct, affinity, device=dev, ct_table=table)
    from .dataplane.sock_attach import read_mode
    from .explain_socket import packet_path_note

    note = packet_path_note(read_mode(writer.bpf), outside, key in snapshot[SERVICES])
    if output in STRUCTURED:
        _out({**result.to_json(), "path": note}, output)
    else:
        click.echo(render(result, (("path", note),) if note else ()))


@main.command()
@cgroup_option
@yes_option
@force_option
@pin_dir_option
@netns_option
def cleanup(cgroup: Optional[str], yes: bool, force: bool, pin_dir: str,
            netns: Optional[str]) -> None:
    """Remove everything ebpflb attached or pinned: its XDP and TC programs on every device of the
    network namespace, the clsact qdiscs nothing else uses, its socket hooks on the cgroup, and
    the pinned maps. Service traffic through this node stops. Asks first (--yes does not);
    refused while an agent owns the data plane, unless --force."""
    from .dataplane.cleanup import remove_dataplane

    _require_root()
    config = _config(pin_dir)
    _confirm(f"Remove the ebpflb data plane in {pin_dir}"
             f"{f' (network namespace {netns})' if netns else ''}? Service traffic through it "
             "stops.", yes)
    lock = _owner_lock(pin_dir, force, "cleanup")
    _enter(netns)
    try:
        removed = remove_dataplane(config, cgroup=cgroup)
    finally:
        if lock is not None:
            lock.release()
    for item in removed:
        click.echo(f"removed {item}")
    if not removed:
        click.echo("nothing to remove")


@main.command()
@output_option
@cgroup_option
@pin_dir_option
@netns_option
def status(output: str, cgroup: Optional[str], pin_dir: str, netns: Optional[str]) -> None:
    """The data plane in --pin-dir at a glance: the agent that owns it (pid, version, uptime,
    readiness, source and last sync, refused objects, repairs), the devices of the network
    namespace that run its programs, its socket hooks, each map's fill against its maximum,
    and warnings."""
    from .dataplane import survey
    from .dataplane.loader import pinned
    from .dataplane.owner import holder
    from .status import read_status
    from .status_view import build, render

    _require_root()
    config = DataplaneConfig(pin_dir=pin_dir)
    owner = holder(pin_dir)
    if owner is None and not os.path.isdir(pin_dir):
        raise click.ClickException(f"no ebpflb data plane pinned in {pin_dir} (give --pin-dir, "
                                   f"or start `ebpflb agent`)")
    _enter(netns)
    recorded = (read_status(pin_dir) or {}).get("socket_lb") or {}
    hooks = None if recorded.get("mode") == "off" else survey.socket_hooks(
        config, None if recorded.get("cgroup") else cgroup)
    view = build(pin_dir, owner, read_status(pin_dir), survey.map_fill(pin_dir),
                 survey.devices(config) if pinned(config) else [], hooks)
    if output in STRUCTURED:
        _out(view, output)
    else:
        click.echo(render(view))


@main.command()
@output_option
@netns_option
def doctor(output: str, netns: Optional[str]) -> None:
    """Check what this node gives ebpflb: kernel, capabilities, bpffs, BTF, cgroup v2, compiling
    with bcc, TC and XDP attachment (tried on a veth in a namespace of its own), forwarding
    sysctls, and kube-proxy rules that would compete. Exits 1 when a check fails."""
    from .dataplane.probes import run_checks
    from .doctor import render, verdict

    _require_root()
    _enter(netns)  # the sysctls and rules that count are the node namespace's
    checks = run_checks()
    if output in STRUCTURED:
        _out([c.as_dict() for c in checks], output)
    else:
        click.echo(render(checks))
    sys.exit(verdict(checks))


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL, e.g. `eval "$(ebpflb completion bash)"` in
    ~/.bashrc, or `ebpflb completion fish > ~/.config/fish/completions/ebpflb.fish`."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # click ships all three
    click.echo(cls(main, {}, "ebpflb", "_EBPFLB_COMPLETE").source())


@main.command()
@output_option
def version(output: str) -> None:
    """ebpflb's version, with the Python, bcc and kernel it runs on."""
    import platform

    try:
        from bcc import __version__ as bcc_version
    except ImportError:
        bcc_version = None
    info = {"ebpflb": __version__, "python": platform.python_version(), "bcc": bcc_version,
            "kernel": platform.release()}
    if output in STRUCTURED:
        _out(info, output)
    else:
        click.echo("\n".join(f"{k}: {v if v is not None else 'not installed'}"
                             for k, v in info.items()))


@main.group()
def lab() -> None:
    """A Kubernetes-like node with pods, inside network namespaces, for real traffic."""


lab_name_option = click.option("--name", default="ebpflb", show_default=True,
                               help="Lab name (prefix of its namespaces).")


@lab.command("up")
@lab_name_option
@click.option("--pods", "n_pods", type=click.IntRange(1, 200), default=4, show_default=True,
              help="Number of web pods (web-1 at 10.244.0.11, ...), plus a client pod.")
@click.option("--nodes", "n_nodes", type=click.IntRange(1, 32), default=1, show_default=True,
              help="Number of nodes. With 2 or more: node k in netns <name>-node<k> (node 0: "
                   "<name>-node) at 192.168.200.(10+k) on an underlay, pod CIDR 10.244.k.0/24, "
                   "pods n<k>-client and n<k>-web-1..2 on node k > 0, and an external client "
                   "<name>-ext at 192.168.200.2.")
def lab_up_cmd(name: str, n_pods: int, n_nodes: int) -> None:
    """Create the lab: a node namespace, web pods serving HTTP :8080 and UDP echo :9053, and a
    client pod (10.244.0.2); with --nodes, more nodes joined by an underlay."""
    from .lab import LabError, default_pods, lab_up

    _require_root()
    try:
        created = lab_up(name, default_pods(n_pods, nodes=n_nodes), nodes=n_nodes)
    except LabError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"lab {name} up: node namespace{'s' if n_nodes > 1 else ''} "
               f"{', '.join(created.node_namespaces)}")
    if created.ext_ns:
        click.echo(f"  external client {created.ext_ns} 192.168.200.2, underlay {created.underlay_ns}")
    for pod in created.pods.values():
        click.echo(f"  pod {pod.name:10} {pod.ip:15} node {pod.node}" if n_nodes > 1
                   else f"  pod {pod.name:10} {pod.ip}")


@lab.command("down")
@lab_name_option
def lab_down_cmd(name: str) -> None:
    """Remove the lab: processes, namespaces, and the pins of an agent run for it. Works after a
    crash too."""
    from .dataplane.cleanup import remove_pins
    from .dataplane.config import lab_pin_dirs
    from .lab import LabError, lab_down

    _require_root()
    try:
        removed = lab_down(name)
        for pin_dir in lab_pin_dirs(name):  # the pins of every node's agent
            removed += remove_pins(_config(pin_dir))
    except LabError as exc:
        raise click.ClickException(str(exc)) from exc
    for item in removed:
        click.echo(f"removed {item}")
    if not removed:
        click.echo(f"lab {name}: nothing to remove")


@lab.command("status")
@lab_name_option
@output_option
def lab_status_cmd(name: str, output: str) -> None:
    """Show the lab's namespaces and pods."""
    from .lab import lab_status

    status = lab_status(name)
    if output in STRUCTURED:
        _out(status, output)
        return
    click.echo(f"lab {name}: {'up' if status.get('exists') else 'down'}")
    for pod in status.get("pods", []):
        alive = pod.get("server_alive")
        server = "" if alive is None else ("server up" if alive else "server DOWN")
        click.echo(f"  pod {pod['name']:10} {pod['ip']:15} node {pod.get('node', 0)}  {server}")


@lab.command("conformance")
@click.option("--scenario", "scenarios", multiple=True, metavar="TEXT",
              help="Run only scenarios whose name contains TEXT; repeatable.")
@click.option("--node-mode", type=click.Choice(["xdp", "tc"]), default="xdp", show_default=True,
              help="Hook of the agents' node devices in the two-node (north-south) scenarios.")
@click.option("--list", "list_only", is_flag=True, help="List the scenarios and run nothing.")
@output_option
def lab_conformance_cmd(scenarios: List[str], node_mode: str, list_only: bool,
                        output: str) -> None:
    """Run the Kubernetes Service conformance scenarios (named after the Kubernetes e2e network
    tests) with real traffic, each in a fresh lab with the real agent, and print a pass/fail
    matrix. Exits 1 if any scenario fails."""
    from .lab.conformance import SCENARIOS, run_conformance, to_json

    chosen = [s for s in SCENARIOS if not scenarios or any(t in s.name for t in scenarios)]
    if not chosen:
        raise click.BadParameter(f"{', '.join(map(repr, scenarios))} matches no scenario "
                                 "(`ebpflb lab conformance --list` shows them)",
                                 param_hint="--scenario")
    if list_only:
        if output in STRUCTURED:
            _out([{"name": s.name, "behaviour": s.behaviour, "nodes": s.nodes} for s in chosen],
                 output)
        else:
            for s in chosen:
                click.echo(f"{s.nodes} node{'s' if s.nodes > 1 else ' '}  {s.name}")
        return
    _require_root()

    def progress(r) -> None:
        if output not in STRUCTURED:
            click.echo(f"{r.outcome.upper():4}  {r.seconds:5.1f}s  {r.name}"
                       + (f"\n      {r.detail}" if r.detail else ""))

    results = run_conformance(list(scenarios) or None, progress, node_mode)
    if output in STRUCTURED:
        _out(to_json(results), output)
    else:
        passed = sum(r.outcome == "pass" for r in results)
        click.echo(f"\n{passed} passed, {len(results) - passed} failed")
    if any(r.outcome != "pass" for r in results):
        sys.exit(1)


@lab.command("add-pod")
@lab_name_option
@click.argument("pod")
@click.argument("ip")
def lab_add_pod_cmd(name: str, pod: str, ip: str) -> None:
    """Add a pod POD with address IP (in 10.244.0.0/16) to a running lab."""
    from .lab import LabError, PodSpec, add_pod

    _require_root()
    try:
        add_pod(name, PodSpec(pod, ip))
    except (LabError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"pod {pod} {ip} added to lab {name}")


@lab.command("del-pod")
@lab_name_option
@click.argument("pod")
def lab_del_pod_cmd(name: str, pod: str) -> None:
    """Remove pod POD from a running lab."""
    from .lab import LabError, del_pod

    _require_root()
    try:
        del_pod(name, pod)
    except LabError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"pod {pod} removed from lab {name}")


def _add_log_options(command: click.Command) -> None:
    command.params.extend(_log_options())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _add_log_options(sub)


_add_log_options(main)

if __name__ == "__main__":
    main()
