"""The `ebpflb stats` command: traffic per frontend and per backend (ebpflb.stats, read by
ebpflb.views), once or redrawn with rates (--watch), or the data plane's global
counters (--verdicts). Part of the ebpflb.cli package."""
import sys
from typing import Optional

import click

from .common import (STRUCTURED, _open_or_fail, _service_filter, emit, output_option,
                     pin_dir_option)


@click.command()
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

    from ..views import read_global_counters, read_service_stats as read_all
    from ..output import watch_line
    from ..stats import render_global_counters, render_table, to_json, with_rates

    wanted = _service_filter(service_ref)

    def read_service_stats(bpf):
        return [s for s in read_all(bpf) if wanted(s.service)]

    bpf = _open_or_fail(pin_dir).bpf
    if verdicts:
        counters = read_global_counters(bpf)
        emit(output, counters, lambda: render_global_counters(counters))
        return

    before, at = read_service_stats(bpf), time.monotonic()
    if watch is None:
        emit(output, to_json(before), lambda: render_table(before))
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
