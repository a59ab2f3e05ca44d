"""What the command modules of `ebpflb` share: the options several commands take (--pin-dir,
--netns, --output, --cgroup, --force, --yes, --service-cidr, and --log-level / --log-format on
every command), opening the pinned maps, root and owner checks, confirmation, errors as click
shows them, and `emit`, the one place a command's result is printed (a table for people, JSON or
YAML for tools). Heavy modules are imported inside the functions, so `ebpflb --help` stays
fast."""
import os
import sys
from typing import Any, Callable, List, Optional

import click

from ..dataplane.config import DEFAULT_PIN_DIR, DataplaneConfig

PIN_DIR_ENV = "EBPFLB_PIN_DIR"

# The defaults of the data plane's size and lifetime options: bpf/lb_maps.h's, through
# ebpflb/abi.py.
_DEFAULTS = DataplaneConfig()


def _log_option(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> None:
    """--log-level / --log-format, wherever given (before the command or on it)."""
    from .. import logs

    if value is None:
        return
    if param.name == "log_level":
        logs.setup(level=value.lower())
    else:
        logs.setup(fmt=value.lower())


def _log_options():
    """--log-level and --log-format, accepted by the group and by every command."""
    from ..logs import FORMAT_ENV, FORMATS, LEVEL_ENV, LEVELS

    return [click.Option(["--log-level"], type=click.Choice(LEVELS, case_sensitive=False),
                         envvar=LEVEL_ENV, show_envvar=True, expose_value=False,
                         callback=_log_option, is_eager=True,
                         help="debug, info (default), warning or error."),
            click.Option(["--log-format"], type=click.Choice(FORMATS, case_sensitive=False),
                         envvar=FORMAT_ENV, show_envvar=True, expose_value=False,
                         callback=_log_option, is_eager=True,
                         help="text (default) or json: one line per event either way.")]


def _add_log_options(command: click.Command) -> None:
    """--log-level and --log-format on `command` and, for a group, on every command under it."""
    command.params.extend(_log_options())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _add_log_options(sub)


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


def _service_cidrs(values: List[str]) -> tuple:
    from ..backend_rules import parse_service_cidrs

    try:
        parse_service_cidrs(tuple(values))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--service-cidr") from exc
    return tuple(values)


def _service_filter(value: Optional[str]) -> Callable[[str], bool]:
    """NS/NAME or NS/NAME:PORT -> a predicate on a view's "namespace/name:port"
    (ebpflb.service_view.service_filter)."""
    from ..service_view import service_filter

    try:
        return service_filter(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="SERVICE") from exc


def _enter(netns: Optional[str]) -> None:
    if netns:
        from ..dataplane.netns import enter_netns

        try:
            enter_netns(netns)
        except (FileNotFoundError, OSError) as exc:
            raise click.ClickException(f"--netns {netns}: {exc}") from exc


def _require_root() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("this command loads or reads BPF objects: run it as root")


def _check_pin_dir(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Every command refuses a pin directory outside bpffs before it does anything."""
    try:
        DataplaneConfig(pin_dir=value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    return value


pin_dir_option = click.option(
    "--pin-dir", default=DEFAULT_PIN_DIR, envvar=PIN_DIR_ENV, show_default=True,
    callback=_check_pin_dir,
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
    from ..dataplane.sock_attach import CgroupError, cgroup2_root, check_cgroup

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
    from ..dataplane.owner import Owned, for_command

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


def _writer(config, create: bool = False):
    from ..dataplane.bcc_maps import BccMapWriter
    from ..dataplane.loader import open_maps

    return BccMapWriter(open_maps(config, create=create))


def _reader(config):
    from ..dataplane.bcc_maps import BccMapReader
    from ..dataplane.loader import open_maps

    return BccMapReader(open_maps(config))


def _open_or_fail(pin_dir: str):
    """A reader of the pinned maps of `pin_dir` (root only); a click error when they are not
    there or do not match."""
    from ..dataplane.loader import DataplaneError

    _require_root()
    try:
        return _reader(_config(pin_dir))
    except DataplaneError as exc:
        raise click.ClickException(str(exc)) from exc


output_option = click.option(
    "-o", "--output", type=click.Choice(["table", "wide", "json", "yaml"]), default="table",
    show_default=True, help="Output format: table, wide (every column), json or yaml (one "
                            "shape per command, see docs/operations.md).")
STRUCTURED = ("json", "yaml")


def _out(data, fmt: str) -> None:
    """Structured output (json, yaml) of a command's data."""
    from ..output import dump

    click.echo(dump(data, fmt))


def emit(output: str, data: Any, text: Callable[[], str]) -> None:
    """Prints a command's result as -o asks: `data` as JSON or YAML (one shape per command,
    ebpflb.output), else the text `text()` renders for people (table or wide)."""
    if output in STRUCTURED:
        _out(data, output)
    else:
        click.echo(text())
