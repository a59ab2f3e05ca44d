"""The `ebpflb service` commands: `service list` and `service get`, what the BPF maps hold per
frontend (ebpflb.service_view's views and report) with, for --all, what the agent's status file says
it skipped. Part of the ebpflb.cli package."""
from typing import Optional

import click

from .common import (_config, _require_root, _service_filter, _reader, emit, output_option,
                     pin_dir_option)


@click.group()
def service() -> None:
    """Inspect programmed services."""


def _list_services(service_ref: Optional[str], show_all: bool, output: str, pin_dir: str,
                   must_exist: bool) -> None:
    from ..apply import read_snapshot
    from ..dataplane.loader import DataplaneError
    from ..service_view import render_report, service_report, service_views
    from ..status import read_status, status_path

    _require_root()
    wanted = _service_filter(service_ref)
    try:
        views = [v for v in service_views(read_snapshot(_reader(_config(pin_dir))))
                 if wanted(v.service)]
    except DataplaneError as exc:
        raise click.ClickException(str(exc)) from exc
    status = None
    if show_all:
        status = read_status(pin_dir)
        if status is None:
            raise click.ClickException(f"no agent status at {status_path(pin_dir)}: skipped "
                                       "Services are known only while an agent runs")
    report = service_report(views, status, wanted)
    if must_exist and not views and not report["skipped"]:
        raise click.ClickException(f"service {service_ref} is not programmed in {pin_dir} "
                                   "(`ebpflb service list --all` shows what the agent skipped)")
    emit(output, report, lambda: render_report(views, report, wide=output == "wide"))


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
    from ..status import read_status

    _list_services(service_ref, read_status(pin_dir) is not None, output, pin_dir,
                   must_exist=True)
