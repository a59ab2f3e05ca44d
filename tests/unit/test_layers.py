"""The package's layers, read from its import statements (every one, also those inside
functions): the pure core needs no kernel and no cluster, the kernel edge (dataplane/) never
reaches up into the views people read, and the lab stays apart from the product."""
import ast
from pathlib import Path
from typing import Dict, Set

import pytest

import ebpflb

pytestmark = pytest.mark.unit

PACKAGE = Path(ebpflb.__file__).parent
# The pure core: models, planning, predictions and views; tested without a kernel.
PURE = ("abi", "apply", "backend_rules", "changes", "convert", "desired", "documents", "draining",
        "errors", "explain", "explain_socket", "fields", "flowhash", "maglev", "maps",
        "manifest_set", "manifests", "model", "output", "plan", "planner", "policy", "records",
        "reconcile", "service_view", "stats", "statsagg", "status_view", "store", "syncer",
        "gateway", "gateway_status", "gateway_view", "takeover.flows", "takeover.handback",
        "takeover.kube_rules")
# What the kernel edge may not import: the views and everything above them.
ABOVE_DATAPLANE = ("stats", "service_view", "explain_socket", "status_view", "gateway_view",
                   "output", "views",
                   "cli", "metrics", "agent", "lab")
OUTSIDE = ("bcc", "pyroute2", "kubernetes")


def imports_of(path: Path) -> Set[str]:
    """Absolute names of what a module imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)
    return out


def modules() -> Dict[str, Set[str]]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): imports_of(p)
            for p in PACKAGE.rglob("*.py")}


def _hits(names: Set[str], forbidden) -> Set[str]:
    return {n for n in names for f in forbidden if n == f or n.startswith(f + ".")}


def test_the_pure_core_needs_no_kernel_and_no_cluster():
    mods = modules()
    forbidden = OUTSIDE + tuple(f"ebpflb.{p}" for p in ("dataplane", "sources", "lab", "cli",
                                                         "views", "agent", "metrics"))
    # The data plane's settings are plain values (sizes, timeouts): the core may read them.
    allowed = {"ebpflb.dataplane.config"}
    bad = {m: {h for h in _hits(mods[f"ebpflb.{m}"], forbidden)
               if h not in allowed and not any(h.startswith(a + ".") for a in allowed)}
           for m in PURE}
    assert not {m: h for m, h in bad.items() if h}


def reach(mods: Dict[str, Set[str]], start: str) -> Set[str]:
    """Every ebpflb module `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for name in mods.get(todo.pop(), ()):
            for cand in (name, name.rsplit(".", 1)[0]):  # `from x import y`: y may be a name
                if cand in mods and cand not in seen:
                    seen.add(cand)
                    todo.append(cand)
    return seen


def test_the_kernel_edge_never_reaches_up_into_the_views():
    """Not directly, and not through another module either."""
    mods = modules()
    bad = {m: _hits(reach(mods, m), tuple(f"ebpflb.{a}" for a in ABOVE_DATAPLANE))
           for m in mods if m.startswith("ebpflb.dataplane.")}
    assert not {m: h for m, h in bad.items() if h}


def test_the_lab_stays_apart_from_the_product():
    """Only the lab itself and the `ebpflb lab` commands import it: the agent, the data plane
    and the rest of the CLI run without it."""
    users = {m for m, names in modules().items()
             if _hits(names, ("ebpflb.lab",)) and not m.startswith("ebpflb.lab")}
    assert users == {"ebpflb.cli.lab_cmd"}


def test_only_the_writing_commands_open_a_writer():
    """Read-only commands hold a map reader (no upsert, delete or zero); `ebpflb sync` is the one
    command that writes the control-plane maps."""
    from ebpflb.dataplane.bcc_maps import BccMapReader, BccMapWriter

    assert not any(hasattr(BccMapReader, m) for m in ("upsert", "delete", "zero"))
    assert all(hasattr(BccMapWriter, m) for m in ("upsert", "delete", "zero"))
    writers = {p.name for p in (PACKAGE / "cli").glob("*.py")
               if "_writer(" in p.read_text() and p.name != "common.py"}
    assert writers == {"agent_cmd.py"}
