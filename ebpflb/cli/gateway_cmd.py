"""The `ebpflb gateway` commands: `gateway list`, the Gateway API objects of ebpflb's
GatewayClass and the status ebpflb gives them (ebpflb.gateway, ebpflb.gateway_view): from the
running agent's status file, or computed from manifests. Part of the ebpflb.cli package."""
from pathlib import Path
from typing import Optional

import click

from .common import emit, output_option, pin_dir_option


@click.group()
def gateway() -> None:
    """Gateway API L4 (TCPRoute, UDPRoute) objects of ebpflb's GatewayClass
    (controllerName ebpflb.io/gateway-controller)."""


@gateway.command("list")
@click.option("--manifests", type=click.Path(exists=True),
              help="Compute the status from these Kubernetes YAML or JSON files (file or "
                   "directory: GatewayClasses, Gateways, TCPRoutes, UDPRoutes, ReferenceGrants, "
                   "Namespaces, and the Services and EndpointSlices their routes name) instead "
                   "of reading the running agent's.")
@pin_dir_option
@output_option
def gateway_list(manifests: Optional[str], pin_dir: str, output: str) -> None:
    """The Gateways, listeners and routes of ebpflb's GatewayClass with their conditions
    (Accepted, ResolvedRefs, Programmed, and why not), and the frontends their listeners make
    with each backend's weight: as the agent on --pin-dir has them, or as an agent given
    --manifests would (objects that cannot be read are reported on stderr and left out alone;
    externalIPs and Gateway addresses count as allowed: the agent's --external-ip-allow is not
    known here)."""
    from ..gateway_view import render

    if manifests is None:
        from ..status import read_status, status_path

        status = read_status(pin_dir)
        if status is None:
            raise click.ClickException(f"no agent status at {status_path(pin_dir)}: is an agent "
                                       f"running on {pin_dir}? (or give --manifests)")
        view = status.get("gateways") or to_json_empty()
    else:
        view = _from_manifests(Path(manifests))
    emit(output, view, lambda: render(view))


def to_json_empty():
    from ..gateway import GatewayModel
    from ..gateway_view import to_json

    return to_json(GatewayModel((), (), (), ()))


def _from_manifests(path: Path):
    from ..desired import cluster_model
    from ..documents import TextError, load_documents
    from ..gateway import read_objects
    from ..gateway_view import to_json
    from ..manifests import manifest_files
    from ..model import ModelContext

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
    # The agent's own model: Services hold their frontends first, Gateways get the rest.
    model = cluster_model(services, slices, ModelContext(external_ip_allow=("0.0.0.0/0", "::/0")),
                          _changes(_merged(gw)))
    return to_json(model.gateways)


def _changes(objects):
    from ..gateway import GATEWAY, GATEWAY_CLASS, NAMESPACE, REFERENCE_GRANT

    for name, obj in objects.classes.items():
        yield GATEWAY_CLASS, ("", name), obj
    for key, obj in objects.gateways.items():
        yield GATEWAY, key, obj
    for (kind, namespace, name), obj in objects.routes.items():
        yield kind, (namespace, name), obj
    for key, obj in objects.grants.items():
        yield REFERENCE_GRANT, key, obj
    for name, obj in objects.namespaces.items():
        yield NAMESPACE, ("", name), obj


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
