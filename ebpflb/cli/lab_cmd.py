"""The `ebpflb lab` commands: a Kubernetes-like node (or several) with pods in network namespaces
for real traffic (ebpflb.lab): up, down, status, add-pod, del-pod, and the Service conformance
scenarios (ebpflb.lab.conformance). Part of the ebpflb.cli package."""
import sys
from typing import List

import click

from .common import STRUCTURED, _config, _require_root, emit, output_option


@click.group()
def lab() -> None:
    """A Kubernetes-like node with pods, inside network namespaces, for real traffic."""


lab_name_option = click.option("--name", default="ebpflb", show_default=True,
                               help="Lab name (prefix of its namespaces).")


@lab.command("up")
@lab_name_option
@click.option("--pods", "n_pods", type=click.IntRange(1, 200), default=4, show_default=True,
              help="Number of web pods (web-1 at 10.244.0.11, or fd00:10:244::b in an IPv6-only "
                   "lab, ...), plus a client pod.")
@click.option("--nodes", "n_nodes", type=click.IntRange(1, 32), default=1, show_default=True,
              help="Number of nodes. With 2 or more: node k in netns <name>-node<k> (node 0: "
                   "<name>-node) at 192.168.200.(10+k) on an underlay, pod CIDR 10.244.k.0/24, "
                   "pods n<k>-client and n<k>-web-1..2 on node k > 0, and an external client "
                   "<name>-ext at 192.168.200.2.")
@click.option("--ip-family", type=click.Choice(["ipv4", "ipv6", "dual"]), default="ipv4",
              show_default=True,
              help="dual: every pod, node and the external client get an IPv6 address too "
                   "(a pod's is fd00:10:244:k::h for its 10.244.k.h; node k's "
                   "fd00:200::(10+k), the external client's fd00:200::2, hex), for dual-stack "
                   "Services. ipv6: those IPv6 addresses only, no IPv4 on any device but lo.")
def lab_up_cmd(name: str, n_pods: int, n_nodes: int, ip_family: str) -> None:
    """Create the lab: a node namespace, web pods serving HTTP :8080 and UDP echo :9053, and a
    client pod (10.244.0.2, or fd00:10:244::2 with --ip-family ipv6); with --nodes, more nodes
    joined by an underlay."""
    from ..lab import LabError, default_pods, lab_up

    _require_root()
    try:
        created = lab_up(name, default_pods(n_pods, nodes=n_nodes, ip_family=ip_family),
                         nodes=n_nodes, ip_family=ip_family)
    except LabError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"lab {name} up: node namespace{'s' if n_nodes > 1 else ''} "
               f"{', '.join(created.node_namespaces)}")
    if created.ext_ns:
        click.echo(f"  external client {created.ext_ns} {created.ext_address}, "
                   f"underlay {created.underlay_ns}")
    for pod in created.pods.values():
        six = f" {created.ip6(pod.name)}" if created.dual else ""
        click.echo(f"  pod {pod.name:10} {pod.ip:15} node {pod.node}{six}" if n_nodes > 1
                   else f"  pod {pod.name:10} {pod.ip}{six}")


@lab.command("down")
@lab_name_option
def lab_down_cmd(name: str) -> None:
    """Remove the lab: processes, namespaces, and the pins of an agent run for it. Works after a
    crash too."""
    from ..dataplane.cleanup import remove_pins
    from ..dataplane.config import lab_pin_dirs
    from ..lab import LabError, lab_down

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
    from ..lab import lab_status

    status = lab_status(name)

    def text() -> str:
        lines = [f"lab {name}: {'up' if status.get('exists') else 'down'}"
                 + (f" ({status['ip_family']})" if status.get("exists") else "")]
        for pod in status.get("pods", []):
            alive = pod.get("server_alive")
            server = "" if alive is None else ("server up" if alive else "server DOWN")
            lines.append(f"  pod {pod['name']:10} {pod['ip']:15} node {pod.get('node', 0)}  "
                         f"{server}")
        return "\n".join(lines)

    emit(output, status, text)


@lab.command("conformance")
@click.option("--scenario", "scenarios", multiple=True, metavar="TEXT",
              help="Run only scenarios whose name contains TEXT; repeatable.")
@click.option("--node-mode", type=click.Choice(["xdp", "tc"]), default="xdp", show_default=True,
              help="Hook of the agents' node devices in the two-node (north-south) scenarios.")
@click.option("--ip-family", type=click.Choice(["ipv4", "ipv6", "both"]), default="ipv4",
              show_default=True,
              help="ipv6: each scenario's IPv6 twin (the same scenario in a dual-stack lab, every "
                   "address its IPv6 twin); both: the two, one after the other.")
@click.option("--list", "list_only", is_flag=True, help="List the scenarios and run nothing.")
@output_option
def lab_conformance_cmd(scenarios: List[str], node_mode: str, ip_family: str, list_only: bool,
                        output: str) -> None:
    """Run the Kubernetes Service conformance scenarios (named after the Kubernetes e2e network
    tests) with real traffic, each in a fresh lab with the real agent, and print a pass/fail
    matrix. Exits 1 if any scenario fails."""
    from ..lab.conformance import SCENARIOS, run_conformance, to_json

    chosen = [s for s in SCENARIOS if not scenarios or any(t in s.name for t in scenarios)]
    if not chosen:
        raise click.BadParameter(f"{', '.join(map(repr, scenarios))} matches no scenario "
                                 "(`ebpflb lab conformance --list` shows them)",
                                 param_hint="--scenario")
    if list_only:
        emit(output, [{"name": s.name, "behaviour": s.behaviour, "nodes": s.nodes} for s in chosen],
             lambda: "\n".join(f"{s.nodes} node{'s' if s.nodes > 1 else ' '}  {s.name}"
                               for s in chosen))
        return
    _require_root()

    def progress(r) -> None:
        if output not in STRUCTURED:
            click.echo(f"{r.outcome.upper():4}  {r.seconds:5.1f}s  {r.family}  {r.name}"
                       + (f"\n      {r.detail}" if r.detail else ""))

    families = ("ipv4", "ipv6") if ip_family == "both" else (ip_family,)
    results = run_conformance(list(scenarios) or None, progress, node_mode, families)
    passed = sum(r.outcome == "pass" for r in results)
    emit(output, to_json(results), lambda: f"\n{passed} passed, {len(results) - passed} failed")
    if any(r.outcome != "pass" for r in results):
        sys.exit(1)


@lab.command("add-pod")
@lab_name_option
@click.option("--node", type=click.IntRange(min=0), default=0, show_default=True,
              help="The node the pod runs behind; in a multi-node lab IP is in that node's pod "
                   "CIDR (10.244.K.0/24).")
@click.argument("pod")
@click.argument("ip")
def lab_add_pod_cmd(name: str, node: int, pod: str, ip: str) -> None:
    """Add a pod POD with address IP (in 10.244.0.0/16; in fd00:10:244::/56 in an IPv6-only lab)
    to a running lab."""
    from ..lab import LabError, PodSpec, add_pod

    _require_root()
    try:
        add_pod(name, PodSpec(pod, ip, node))
    except (LabError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"pod {pod} {ip} added to lab {name}")


@lab.command("del-pod")
@lab_name_option
@click.argument("pod")
def lab_del_pod_cmd(name: str, pod: str) -> None:
    """Remove pod POD from a running lab."""
    from ..lab import LabError, del_pod

    _require_root()
    try:
        del_pod(name, pod)
    except LabError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"pod {pod} removed from lab {name}")
