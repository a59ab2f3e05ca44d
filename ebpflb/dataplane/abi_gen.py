"""Generates ebpflb/abi.py, the one Python copy of the C/Python contract, from bpf/ (a build
step, run by hand after a header change; tests/unit/test_abi.py and tests/bpf/test_abi.py rerun
it and fail on any difference).

What it reads:
- the integer `#define`s of bpf/lb_structs.h (flags, scopes, modes, addresses, lengths) and
  bpf/node_fwd.h (SNAT probing), and the tunables of bpf/lb_maps.h (`#ifndef X` / `#define X`,
  which the loader overrides with -D): their values;
- every `enum` of bpf/lb_structs.h: its members in order, with their values;
- the map declarations of bpf/lb_maps.h: name, type, key and value type, size expression;
- the entry points of bpf/lb4_tc.c, bpf/lb6_tc.c and bpf/lb4_sock.c (`int NAME(struct CTX *ctx)`);
- every map's key and value layout as the compiler laid it out: size, and each field's offset
  and size (root: bcc compiles bpf/lb_maps.c into maps pinned in a scratch directory, removed
  after; `--no-structs` keeps the layouts the module has, for a run without root).

    .venv/bin/python -m ebpflb.dataplane.abi_gen            # rewrite ebpflb/abi.py
    .venv/bin/python -m ebpflb.dataplane.abi_gen --check    # exit 1 when it would change
"""
import argparse
import ast
import operator
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

PACKAGE = Path(__file__).resolve().parents[1]
# bpf/ beside the package in a checkout, ebpflb/bpf in an installed wheel (as the loader finds it).
BPF_DIR = PACKAGE.parent / "bpf" if (PACKAGE.parent / "bpf").is_dir() else PACKAGE / "bpf"
TARGET = PACKAGE / "abi.py"
DEFINE_HEADERS = ("lb_structs.h", "node_fwd.h")
TUNABLES_HEADER = "lb_maps.h"
PROGRAM_FILES = ("lb4_tc.c", "lb6_tc.c", "lb4_sock.c")

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.BitOr: operator.or_,
        ast.BitAnd: operator.and_}


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/|//[^\n]*", " ", text, flags=re.S)


def evaluate(expr: str, known: Dict[str, int]) -> int:
    """A C integer constant expression of literals, names already known, + - * << >> | & and
    parentheses (suffixes U/L dropped)."""
    text = re.sub(r"\b(0x[0-9a-fA-F]+|\d+)[uUlL]+\b", r"\1", expr.strip())

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in known:
            return known[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        raise ValueError(f"not an integer constant expression: {expr!r}")

    return walk(ast.parse(text, mode="eval"))


HEX_WRITTEN: set = set()  # names whose value the header writes in hex: abi.py does too


def defines(text: str, known: Dict[str, int]) -> Dict[str, int]:
    """Integer #defines in order (include guards and string or function-like macros skipped)."""
    out: Dict[str, int] = {}
    for name, value in re.findall(r"^#define\s+([A-Z][A-Z0-9_]*)[ \t]+([^\n]+)$",
                                  _strip_comments(text), re.M):
        try:
            out[name] = evaluate(value, {**known, **out})
        except (ValueError, SyntaxError):
            continue
        if value.strip().lower().startswith("0x"):
            HEX_WRITTEN.add(name)
    return out


def tunables(text: str) -> Dict[str, int]:
    """The `#ifndef X` / `#define X value` defaults the loader may override."""
    body = _strip_comments(text)
    return {name: evaluate(value, {}) for name, value in
            re.findall(r"^#ifndef\s+(\w+)\s*\n#define\s+\1\s+(\S[^\n]*)$", body, re.M)
            if re.fullmatch(r"\s*(0x[0-9a-fA-F]+|\d+)\s*", value)}


def enums(text: str, known: Dict[str, int]) -> Dict[str, List[Tuple[str, int]]]:
    """Every enum: its members in declaration order with their values."""
    out: Dict[str, List[Tuple[str, int]]] = {}
    for name, body in re.findall(r"\benum\s+(\w+)\s*\{(.*?)\};", _strip_comments(text), re.S):
        members: List[Tuple[str, int]] = []
        scope = dict(known)
        value = -1
        for item in (i.strip() for i in body.split(",")):
            if not item:
                continue
            member, _, expr = (part.strip() for part in item.partition("="))
            value = evaluate(expr, scope) if expr else value + 1
            scope[member] = value
            members.append((member, value))
        out[name] = members
    return out


def maps(text: str) -> List[Tuple[str, str, str, str, str]]:
    """(name, map type, key type, value type, size expression) of each pinned map, in order."""
    body = _strip_comments(text)
    out = []
    for args in re.findall(r"BPF_TABLE_PINNED\((.*?)\);", body, re.S):
        parts = [p.strip() for p in re.sub(r"\s+", " ", args).split(",")]
        out.append((parts[3], parts[0].strip('"'), parts[1], parts[2], parts[4]))
    return out


def programs(texts: List[str]) -> List[Tuple[str, str]]:
    """(entry point, context struct) in file order."""
    out = []
    for text in texts:
        out += re.findall(r"^int\s+(\w+)\s*\(\s*struct\s+(\w+)\s*\*", text, re.M)
    return out


Layout = Tuple[int, Tuple[Tuple[str, int, int], ...]]  # size, ((field, offset, size), ...)


def structs(pin_root: str = "/sys/fs/bpf") -> Dict[str, Layout]:
    """Each map's key and value type as bcc compiled it: {type: (size, ((field, offset, size),
    ...))}; scalars have no fields. Needs root: the maps are created, pinned in a scratch
    directory, and removed."""
    import ctypes

    from .config import DataplaneConfig
    from .loader import open_maps

    config = DataplaneConfig(pin_dir=f"{pin_root}/ebpflb-abi-{uuid.uuid4().hex[:8]}",
                             max_slots=1024, ct_max_entries=1024, ct_syn_max_entries=1024)
    try:
        bpf = open_maps(config, create=True)
        found: Dict[str, Layout] = {}
        for name, _, key_type, value_type, _ in maps((BPF_DIR / TUNABLES_HEADER).read_text()):
            table = bpf[name.encode()]
            for ctype, declared in ((table.Key, key_type), (table.Leaf, value_type)):
                if issubclass(ctype, ctypes.Array):  # a per-CPU value: one element per CPU
                    ctype = ctype._type_
                fields = tuple((f, getattr(ctype, f).offset, getattr(ctype, f).size)
                               for f, *_ in getattr(ctype, "_fields_", ()))
                found[declared] = (ctypes.sizeof(ctype), fields)
        return dict(sorted(found.items()))
    finally:
        shutil.rmtree(config.pin_dir, ignore_errors=True)


def render(with_structs: Optional[Dict[str, Any]] = None) -> str:
    """The text of ebpflb/abi.py. Without `with_structs`, the STRUCTS of the current file are
    kept (reading them needs root and a kernel)."""
    known: Dict[str, int] = {}
    tun = tunables((BPF_DIR / TUNABLES_HEADER).read_text())
    known.update(tun)
    defs: Dict[str, int] = {}
    for header in DEFINE_HEADERS:
        defs.update(defines((BPF_DIR / header).read_text(), {**known, **defs}))
    all_enums = enums((BPF_DIR / "lb_structs.h").read_text(), {**known, **defs})
    table = maps((BPF_DIR / TUNABLES_HEADER).read_text())
    progs = programs([(BPF_DIR / f).read_text() for f in PROGRAM_FILES])
    if with_structs is None:
        with_structs = current_structs()

    lines = [
        '"""The C/Python contract, generated from bpf/ by ebpflb/dataplane/abi_gen.py: do not edit;',
        "run `.venv/bin/python -m ebpflb.dataplane.abi_gen` after changing a header. Every name,",
        "flag, enum, default, map, program and struct layout that Python shares with the programs",
        'is here, once (pure core: no imports)."""',
        "",
        "# ---- integer #defines of " + ", ".join(DEFINE_HEADERS),
    ]
    lines += [f"{n} = {hex(v) if n in HEX_WRITTEN else v}" for n, v in defs.items()]
    lines += ["", f"# ---- tunables of {TUNABLES_HEADER} (the loader overrides them with -D)"]
    lines += [f"{n} = {v}" for n, v in tun.items()]
    lines += _tuple("TUNABLES", list(tun))
    for enum_name, members in all_enums.items():
        lines += ["", f"# ---- enum {enum_name}"]
        lines += [f"{m} = {v}" for m, v in members]
        lines += _tuple(f"ENUM_{enum_name.upper()}", [m for m, _ in members])
    lines += ["", f"# ---- maps of {TUNABLES_HEADER}: name -> (type, key type, value type, size)",
              "MAPS = {"]
    for n, t, k, v, s in table:
        one = f"    {n!r}: ({t!r}, {k!r}, {v!r}, {s!r}),"
        if len(one) > 99:  # the value type and size on a line of their own
            one = f"    {n!r}: ({t!r}, {k!r},\n{' ' * (len(n) + 9)}{v!r}, {s!r}),"
        lines.append(one)
    lines += ["}", "MAP_NAMES = tuple(MAPS)", "",
              "# ---- entry points of " + ", ".join(PROGRAM_FILES) + ": name -> context struct",
              "PROGRAMS = {"]
    lines += [f"    {n!r}: {c!r}," for n, c in progs]
    lines += ["}"]
    lines += [f"PROG_{n.upper()} = {n!r}" for n, _ in progs]
    lines += ["",
              "# ---- map key and value layouts as compiled: type -> (size, ((field, offset, "
              "size), ...))",
              "STRUCTS = {"]
    for name, (size, fields) in sorted(with_structs.items()):
        lines.append(f"    {name!r}: ({size}, (")
        lines += [f"        ({f!r}, {o}, {s})," for f, o, s in fields]
        lines.append("    )),")
    lines += ["}", ""]
    return "\n".join(lines)


def _tuple(name: str, items: List[str]) -> List[str]:
    """`NAME = (...)`, wrapped under 100 columns."""
    out, line = [f"{name} = ("], "    "
    for item in items:
        word = f"{item!r}, "
        if len(line) + len(word) > 99:
            out.append(line.rstrip())
            line = "    "
        line += word
    out += [line.rstrip(), ")"]
    return out


def current_structs() -> Dict[str, Any]:
    if not TARGET.exists():
        return {}
    scope: Dict[str, Any] = {}
    exec(compile(TARGET.read_text(), str(TARGET), "exec"), scope)  # noqa: S102 - our own file
    return scope.get("STRUCTS", {})


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when abi.py would change")
    parser.add_argument("--no-structs", action="store_true",
                        help="keep the STRUCTS of the current file (no root needed)")
    args = parser.parse_args(argv)
    text = render(None if args.no_structs else structs())
    if args.check:
        same = TARGET.exists() and TARGET.read_text() == text
        print(f"{TARGET}: {'up to date' if same else 'out of date: run abi_gen'}")
        return 0 if same else 1
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
