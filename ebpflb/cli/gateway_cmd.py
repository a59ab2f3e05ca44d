"""The `ebpflb gateway` commands: `gateway list`, the Gateway API objects of ebpflb's
GatewayClass in manifests and the status ebpflb gives them (ebpflb.gateway, ebpflb.gateway_view).
Reads files only; nothing is programmed from Gateway objects yet. Part of the ebpflb.cli
package."""
from pathlib import Path

import click

from .common import emit, output_option


@click.group()
def gateway() -> None:
    """Gateway API L4 (TCPRoute, UDPRoute) objects of ebpflb's GatewayClass
    (controllerName ebpflb.io/gateway-controller)."""


@gateway.command("list")
@click.option("--manifests", required=True, type=click.Path(exists=True),
              help="Kubernetes YAML or JSON (file or directory): GatewayClasses, Gateways, "
                   "TCPRoutes, UDPRoutes, ReferenceGrants, Namespaces, and the Services and "
                   "EndpointSlices their routes name.")
@output_option
def gateway_list(manifests: str, output: str) -> None:
    """The Gateways, listeners and routes of ebpflb's GatewayClass with their conditions
    (Accepted, ResolvedRefs, Programmed, and why not), and the frontends their listeners make
    with each backend's weight. Objects that cannot be read are reported on stderr and left out
    alone."""
    from ..documents import TextError, load_documents
    from ..gateway import gateway_model, read_objects
    from ..gateway_view import render, to_json
    from ..manifests import manifest_files
    from ..store import ObjectStore

    path = Path(manifests)
    files = manifest_files(path) if path.is_dir() else [path]
    gw, services, slices = [], [], []
    for f in files:
        try:
            docs = load_documents(f.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"{f}: {exc}") from exc
        except TextError as exc:
            click.echo(f"{f}: {exc}", err=True)
            continue
        read = read_objects(docs, str(f))
        for error in read.errors:
            click.echo(str(error), err=True)
        gw.append(read.gateway)
        services += read.services
        slices += read.slices
    model = gateway_model(_merged(gw), ObjectStore.of(services, slices))
    view = to_json(model)
    emit(output, view, lambda: render(view))


def _merged(parts):
    """One GatewayObjects of every file's (a later file's object of the same name wins, as a
    later `kubectl apply` would)."""
    from ..gateway import GatewayObjects

    fields = ("classes", "gateways", "routes", "grants", "namespaces")
    merged = {name: {} for name in fields}
    for part in parts:
        for name in fields:
            merged[name].update(getattr(part, name))
    return GatewayObjects(**merged)
