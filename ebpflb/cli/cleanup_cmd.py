"""The `ebpflb cleanup` command: remove everything ebpflb attached or pinned in a network
namespace (ebpflb.dataplane.cleanup), asked first and refused under an agent; with --handback,
after handing the node's flows back to kube-proxy's netfilter (ebpflb.takeover.handback). Part of
the ebpflb.cli package."""
from typing import Optional

import click

from .common import (_config, _confirm, _enter, _open_or_fail, _owner_lock, _require_root,
                     cgroup_option, emit, force_option, netns_option, output_option,
                     pin_dir_option, yes_option)


@click.command()
@click.option("--handback", is_flag=True,
              help="Roll back to kube-proxy without moving a connection: with kube-proxy's rules "
                   "back on the node (start kube-proxy first), new flows are left to them and "
                   "each established flow is written into netfilter's conntrack with its NAT, "
                   "then the data plane is removed. Flows ebpflb SNATed cannot be carried; the "
                   "report counts them.")
@output_option
@cgroup_option
@yes_option
@force_option
@pin_dir_option
@netns_option
def cleanup(handback: bool, output: str, cgroup: Optional[str], yes: bool, force: bool,
            pin_dir: str, netns: Optional[str]) -> None:
    """Remove everything ebpflb attached or pinned: its XDP and TC programs on every device of the
    network namespace, the clsact qdiscs nothing else uses, its socket hooks on the cgroup, and
    the pinned maps. Service traffic through this node stops. Asks first (--yes does not);
    refused while an agent owns the data plane, unless --force."""
    from ..dataplane.cleanup import remove_dataplane

    _require_root()
    config = _config(pin_dir)
    where = f"{pin_dir}{f' (network namespace {netns})' if netns else ''}"
    _confirm(f"Hand the node back to kube-proxy and remove the ebpflb data plane in {where}?"
             if handback else
             f"Remove the ebpflb data plane in {where}? Service traffic through it stops.", yes)
    lock = _owner_lock(pin_dir, force, "cleanup")
    _enter(netns)
    report = None
    try:
        if handback:
            report = _hand_back(pin_dir)
            if report.failed:
                # Removed now, the flows netfilter refused would break: the data plane stays,
                # leaving new flows to kube-proxy, until a hand-back succeeds.
                emit(output, report.to_json(), report.render)
                raise click.ClickException("hand-back incomplete: the data plane was left in "
                                           "place; run `ebpflb cleanup --handback` again")
        removed = remove_dataplane(config, cgroup=cgroup)
    finally:
        if lock is not None:
            lock.release()
    if report is not None:
        report.removed = removed
        emit(output, report.to_json(), report.render)
        return
    emit(output, {"removed": removed},
         lambda: "\n".join(f"removed {item}" for item in removed) or "nothing to remove")


def _hand_back(pin_dir: str):
    from ..dataplane import takeover_maps
    from ..dataplane.bcc_maps import read_conntrack
    from ..takeover.handback import HandBackError, hand_back
    from ..takeover.run import Netfilter

    reader = _open_or_fail(pin_dir)
    try:
        return hand_back(reader.bpf, Netfilter(), takeover_maps, read_conntrack)
    except HandBackError as exc:
        raise click.ClickException(str(exc)) from exc
