"""The `ebpflb ct` commands: `ct list` (the tracked flows: ebpflb.dataplane.readers reads them,
ebpflb.views renders them) and `ct flush` (delete conntrack entries, asked first, refused under an agent).
Part of the ebpflb.cli package."""
from typing import List, Optional

import click

from .common import (_confirm, _open_or_fail, _owner_lock, emit, force_option, output_option,
                     pin_dir_option, yes_option)


@click.group()
def ct() -> None:
    """Inspect or flush the load balancer's connection tracking."""


def _svc_ids(writer, services: List[str]) -> Optional[List[int]]:
    """Ids of the frontends named "namespace/name" (every port) or "namespace/name:port"."""
    from ..apply import read_snapshot
    from ..service_view import frontends_named
    from ..maps import SVC_META

    if not services:
        return None
    ids, unknown = frontends_named(read_snapshot(writer)[SVC_META], services)
    if unknown:
        raise click.BadParameter(f"no programmed service named {', '.join(unknown)}",
                                 param_hint="--service")
    return ids


@ct.command("list")
@click.option("--service", "services", multiple=True, metavar="NS/NAME[:PORT]",
              help="Only flows of this service; repeatable.")
@output_option
@pin_dir_option
def ct_list(services: List[str], output: str, pin_dir: str) -> None:
    """List tracked flows: client, frontend, backend, protocol, age and idle time."""
    from ..views import flow_rows, render_flows

    writer = _open_or_fail(pin_dir)
    rows = flow_rows(writer.bpf, _svc_ids(writer, services))
    emit(output, rows, lambda: render_flows(rows))


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
    from ..dataplane.readers import flush_conntrack

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
