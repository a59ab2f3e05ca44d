"""The `ebpflb cleanup` command: remove everything ebpflb attached or pinned in a network
namespace (ebpflb.dataplane.cleanup), asked first and refused under an agent. Part of the
ebpflb.cli package."""
from typing import Optional

import click

from .common import (_config, _confirm, _enter, _owner_lock, _require_root, cgroup_option,
                     force_option, netns_option, pin_dir_option, yes_option)


@click.command()
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
    from ..dataplane.cleanup import remove_dataplane

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
