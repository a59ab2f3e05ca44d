"""`ebpflb gateway list`: the Gateway API objects ebpflb's GatewayClass covers and the status it
gives them (ebpflb.gateway's model), as a JSON shape for tools and a table for people. Pure: a
function of the model. With files as the source nothing writes status back, so this is where the
conditions are read; with the Kubernetes API they are what the controller writes. The agent keeps
this view of its own model in its status file; computed from files, it is what an agent given
those files programs."""
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional

from .addresses import format_address
from .gateway import REASON_PENDING, GatewayModel


def _conditions(conditions, unprogrammed: Optional[str] = None) -> List[Dict[str, str]]:
    """`unprogrammed`: why a Gateway the model would program is not in the maps (yet): its
    Programmed condition says so (Pending, a reason the spec has for it)."""
    out = []
    for c in conditions:
        status, reason, message = c.status, c.reason, c.message
        if unprogrammed is not None and c.type == "Programmed" and status == "True":
            status, reason, message = "False", REASON_PENDING, unprogrammed
        out.append({"type": c.type, "status": status, "reason": reason, "message": message})
    return out


def to_json(model: GatewayModel,
            unprogrammed: Mapping[str, str] = MappingProxyType({})) -> Dict[str, Any]:
    """The view's one shape: classes, gateways (with listeners), routes (with their parents),
    and the frontends the Gateways' listeners make (with each backend's weight).
    `unprogrammed`: Gateways ("namespace/name") whose frontends are not in the maps, and why
    (the agent's plan for them was refused, or is still to come)."""
    return {
        "classes": [{"name": c.name, "conditions": _conditions(c.conditions)}
                    for c in model.classes],
        "gateways": [{"gateway": g.ref, "addresses": list(g.addresses),
                      "conditions": _conditions(g.conditions, unprogrammed.get(g.ref)),
                      "listeners": [{"name": li.name, "attached_routes": li.attached_routes,
                                     "conditions": _conditions(li.conditions,
                                                               unprogrammed.get(g.ref))}
                                    for li in g.listeners]}
                     for g in model.gateways],
        "routes": [{"route": f"{r.kind} {r.namespace}/{r.name}",
                    "parents": [{"gateway": p.gateway, "listeners": list(p.listeners),
                                 "conditions": _conditions(p.conditions)} for p in r.parents],
                    "ignored": list(r.ignored)}
                   for r in model.routes],
        "frontends": [{"frontend": f"{format_address(f.address, f.port)}/"
                                   f"{f.protocol}",
                       "gateway": f.gateway, "listener": f.listener, "route": f.route,
                       "reject_weight": f.reject_weight,
                       "backends": [{"backend": format_address(b.backend.ip, b.backend.port),
                                     "weight": b.weight} for b in f.backends]}
                      for f in model.frontends],
    }


def _brief(conditions: List[Dict[str, str]]) -> str:
    return ", ".join(f"{c['type']}={c['status']}" + ("" if c["status"] == "True"
                                                      else f" ({c['reason']})")
                     for c in conditions)


def render(view: Dict[str, Any]) -> str:
    lines: List[str] = []
    for c in view["classes"]:
        lines.append(f"GatewayClass {c['name']}: {_brief(c['conditions'])}")
    for g in view["gateways"]:
        lines.append(f"Gateway {g['gateway']} {', '.join(g['addresses']) or '(no address)'}: "
                     f"{_brief(g['conditions'])}")
        for li in g["listeners"]:
            lines.append(f"  listener {li['name']}: {li['attached_routes']} routes, "
                         f"{_brief(li['conditions'])}")
    for r in view["routes"]:
        lines.append(f"{r['route']}:")
        for p in r["parents"]:
            lines.append(f"  parent {p['gateway']} ({', '.join(p['listeners']) or 'no listener'}):"
                         f" {_brief(p['conditions'])}")
        for why in r["ignored"]:
            lines.append(f"  not ours: {why}")
    for f in view["frontends"]:
        backends = ", ".join(f"{b['backend']} x{b['weight']}" for b in f["backends"]) or "none"
        if f["reject_weight"]:
            backends += f", rejected x{f['reject_weight']}"
        lines.append(f"frontend {f['frontend']} ({f['gateway']} {f['listener']}, "
                     f"{f['route'] or 'no route'}): {backends}")
    return "\n".join(lines) if lines else "no Gateway API objects of ebpflb's GatewayClass"
