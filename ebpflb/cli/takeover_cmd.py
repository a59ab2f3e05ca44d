"""The `ebpflb takeover` command: take this node over from kube-proxy without moving a
connection, once (the agent's own --takeover does the same at its first start). It runs the
agent with the same options until it serves, prints the report (ebpflb.takeover.run) and exits,
leaving the data plane attached for the agent that starts next. With --dry-run it only reads:
kube-proxy's rules, netfilter's conntrack and the Services of the manifests, and prints what
would be imported and removed. Part of the ebpflb.cli package."""
from typing import Optional

import click

from .agent_cmd import TAKEOVER_SOURCES, _emit_takeover, agent
from .common import _enter, _require_root, _service_cidrs, output_option

# Options of the agent a one-shot takeover does not take: its own, or meaningless once.
_NOT_TAKEN = {"takeover", "ready_file", "on_exit"}


@click.command()
@click.option("--from", "source", type=click.Choice(TAKEOVER_SOURCES), default="auto",
              show_default=True,
              help="Which kube-proxy state to take over: auto (whatever is found: iptables "
                   "legacy or nft, nftables, IPVS), or only that of one mode.")
@click.option("--dry-run", is_flag=True,
              help="Change nothing: print the flows that would be imported (and whether each is "
                   "handed over or kept with netfilter) and the rules that would be removed. "
                   "Needs --manifests.")
@output_option
@click.pass_context
def takeover(ctx: click.Context, source: str, dry_run: bool, output: str, **options) -> None:
    """Take this node over from kube-proxy: program the maps for the Services of --manifests or
    --kubernetes (as `ebpflb agent` does), import every netfilter conntrack flow to a Service
    frontend with the backend netfilter chose, attach the programs, hand the flows over, and
    remove kube-proxy's rules (one transaction per table, every other rule left alone). Stop
    kube-proxy on the node first: it would write its rules again. Takes every `ebpflb agent`
    option; the data plane stays attached on exit, for the agent."""
    if dry_run:
        _dry_run(source, output, options)
        return
    ctx.invoke(agent, **options, takeover=source, on_exit="keep", ready_file=None,
               exit_when_ready=True, report_output=output)


takeover.params.extend(p for p in agent.params if p.name not in _NOT_TAKEN)


def _dry_run(source: str, output: str, options: dict) -> None:
    from ..manifests import ManifestErrors, load_manifests
    from ..maps import empty_snapshot
    from ..model import desired_state
    from ..plan import apply_to, compute_plan
    from ..dataplane.config import DataplaneConfig
    from ..takeover.run import Takeover, TakeoverError

    manifests: Optional[str] = options.get("manifests")
    if manifests is None:
        raise click.UsageError("--dry-run reads the Services from --manifests (with "
                               "--kubernetes, run the agent with --takeover instead)")
    _require_root()
    _enter(options.get("netns"))
    try:
        m = load_manifests(manifests, service_cidrs=_service_cidrs(options["service_cidrs"]))
    except ManifestErrors as exc:
        raise click.ClickException(f"manifests rejected:\n{exc}") from exc
    desired = desired_state(m.services, m.slices, options.get("node_name"),
                            options.get("proxy_name") or None,
                            tuple(options.get("node_addresses") or ()),
                            tuple(options.get("external_ip_allow") or ()),
                            gateway=m.gateway)
    limits = DataplaneConfig().map_limits
    snapshot = apply_to(empty_snapshot(), compute_plan(desired, empty_snapshot(), limits))
    from pyroute2 import IPRoute

    from ..dataplane.takeover_maps import client_sides

    with IPRoute() as ipr:
        sides = client_sides(ipr, list(options.get("node_devices") or ()),
                             list(options.get("devices") or ("lxc*",)))
        try:
            report = Takeover(source).dry_run(snapshot, sides)
        except TakeoverError as exc:
            raise click.ClickException(str(exc)) from exc
    _emit_takeover(output, report.to_json())
