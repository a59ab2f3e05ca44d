"""The `ebpflb status`, `doctor`, `version` and `completion` commands: the data plane at a glance
(ebpflb.status_view), the node checks (ebpflb.doctor, ebpflb.dataplane.probes), the versions
ebpflb runs with, and the shell completion scripts. Part of the ebpflb.cli package."""
import os
import sys
from typing import Optional

import click

from .. import __version__
from ..dataplane.config import DataplaneConfig
from .common import (_enter, _require_root, cgroup_option, emit, netns_option, output_option,
                     pin_dir_option)


@click.command()
@output_option
@cgroup_option
@pin_dir_option
@netns_option
def status(output: str, cgroup: Optional[str], pin_dir: str, netns: Optional[str]) -> None:
    """The data plane in --pin-dir at a glance: the agent that owns it (pid, version, uptime,
    readiness, source and last sync, refused objects, repairs), the devices of the network
    namespace that run its programs, its socket hooks, each map's fill against its maximum,
    and warnings."""
    from ..dataplane.owner import holder
    from ..views import status_view
    from ..status_view import render

    _require_root()
    config = DataplaneConfig(pin_dir=pin_dir)
    owner = holder(pin_dir)
    if owner is None and not os.path.isdir(pin_dir):
        raise click.ClickException(f"no ebpflb data plane pinned in {pin_dir} (give --pin-dir, "
                                   f"or start `ebpflb agent`)")
    _enter(netns)
    view = status_view(config, owner, cgroup)
    emit(output, view, lambda: render(view))


@click.command()
@output_option
@netns_option
def doctor(output: str, netns: Optional[str]) -> None:
    """Check what this node gives ebpflb: kernel, capabilities, bpffs, BTF, cgroup v2, compiling
    with bcc, TC and XDP attachment (tried on a veth in a namespace of its own), forwarding
    sysctls, and kube-proxy rules that would compete. Exits 1 when a check fails."""
    from ..dataplane.probes import run_checks
    from ..doctor import render, verdict

    _require_root()
    _enter(netns)  # the sysctls and rules that count are the node namespace's
    checks = run_checks()
    emit(output, [c.as_dict() for c in checks], lambda: render(checks))
    sys.exit(verdict(checks))


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL, e.g. `eval "$(ebpflb completion bash)"` in
    ~/.bashrc, or `ebpflb completion fish > ~/.config/fish/completions/ebpflb.fish`."""
    from click.shell_completion import get_completion_class

    from . import main  # the root group, which the package builds after importing this module

    cls = get_completion_class(shell)
    assert cls is not None  # click ships all three
    click.echo(cls(main, {}, "ebpflb", "_EBPFLB_COMPLETE").source())


@click.command()
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
    emit(output, info, lambda: "\n".join(f"{k}: {v if v is not None else 'not installed'}"
                                         for k, v in info.items()))
