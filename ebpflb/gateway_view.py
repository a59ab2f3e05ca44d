"""`ebpflb gateway list`: the Gateway API objects ebpflb's GatewayClass covers and the status it
gives them (ebpflb.gateway's model), as a JSON shape for tools and a table for people. Pure: a
function of the model. With files as the source nothing writes status back, so this is where the
conditions are read; with the Kubernetes API they are what the controller would write."""
from typing import Any, Dict, List

from .addresses import format_address
from .gateway import GatewayModel



# Until the data path serves Gateway listeners, a listener the model would program is said
# Pending (a reason the spec has for Programmed), not Programmed.
NOT_SERVED_YET = ("Pending", "ebpflb does not program Gateway listeners yet: the model's "
                  "frontend is shown below, not served")


def _conditions(conditions, served: bool = True) -> List[Dict[str, str]]:
    out = []
    for c in conditions:
        status, reason, message = c.status, c.reason, c.message
        if not served and c.type == "Programmed" and status == "True":
            status, (reason, message) = "False", NOT_SERVED_YET
        out.append({"type": c.type, "status": status, "reason": reason, "message": message})
    return out


def to_json(model: GatewayModel, served: bool = False) -> Dict[str, Any]:
    """The view's one shape: classes, gateways (with listeners), routes (with their parents),
    and the frontends the Gateways' listeners make (with each backend's weight). `served`:
    whether the data path serves those frontends (not yet: Programmed is reported False,
    Pending)."""
    return {
        "classes": [{"name": c.name, "conditions": _conditions(c.conditions)}
                    for c in model.classes],
        "gateways": [{"gateway": g.ref, "addresses": list(g.addresses),
                      "conditions": _conditions(g.conditions, served),
                      "listeners": [{"name": li.name, "attached_routes": li.attached_routes,
                                     "conditions": _conditions(li.conditions, served)}
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
