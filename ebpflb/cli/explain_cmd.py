"""The `ebpflb explain` command: where a flow goes and why, as the program on the device it
arrives on decides (ebpflb.explain), or what the cgroup socket hooks do with a connect()
(--socket, ebpflb.explain_socket); ebpflb.views reads the kernel (ebpflb.dataplane.explain_inputs)
and returns the prediction. Part of the ebpflb.cli package."""
from typing import Optional

import click

from .common import (_enter, _open_or_fail, _require_root, emit, netns_option, output_option,
                     pin_dir_option)


@click.command()
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
    from ..views import DeviceError, explain_connect, explain_packet
    from ..explain import parse_flow, render
    from ..explain_socket import render_socket

    try:
        flow = parse_flow(src, dst, protocol, tcp_flags.upper())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    _require_root()
    _enter(netns)  # the devices and routes of the node; the pins stay visible
    writer = _open_or_fail(pin_dir)
    if (cookie is not None or netns_cookie is not None) and socket_hook is None:
        raise click.UsageError("--cookie and --netns-cookie go with --socket")
    if socket_hook is not None:
        result = explain_connect(writer, flow, socket_hook == "host", cookie, netns_cookie)
        emit(output, result.to_json(), lambda: render_socket(result))
        return
    try:
        packet, note = explain_packet(writer, flow, outside, ifname)
    except DeviceError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from exc
    emit(output, {**packet.to_json(), "path": note},
         lambda: render(packet, (("path", note),) if note else ()))
