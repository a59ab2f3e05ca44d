"""Keeping netfilter's NAT alive for the flows a takeover leaves with it (the kernel edge, `nft`).

netfilter translates an established flow from its conntrack entry alone, but only while its
network namespace has NAT on the hooks (some nat chain of that family) and conntrack on the
hooks (some rule that uses conntrack). On a node, kube-proxy's rules are often what provides
both: removing them would stop the translation of every flow netfilter still carries (those
it also SNATed, and those of host-network clients), mid-connection.

So before kube-proxy's rules go, a takeover that leaves such flows adds a table of its own,
`ebpflb-takeover`, per family: a nat chain on each of the four NAT hooks, each holding one rule
that matches established flows and does nothing else. It changes no packet; it only keeps the
hooks there. `ebpflb cleanup` removes it (the flows it kept alive are then long over, or the node
goes back to kube-proxy, whose rules do the same).
"""
from __future__ import annotations

import shutil
import subprocess
from typing import Iterable, List

TABLE = "ebpflb-takeover"
_FAMILIES = {4: "ip", 6: "ip6"}
# The NAT hooks: destination NAT is applied on prerouting and output, source NAT on postrouting
# and input; a nat chain registers NAT on its own hook only.
_CHAINS = (("prerouting", "dstnat"), ("output", "-100"), ("postrouting", "srcnat"),
           ("input", "100"))


def keeper_script(families: Iterable[int]) -> str:
    """The `nft -f` transaction that adds the table for each family (idempotent)."""
    lines: List[str] = []
    for family in sorted(set(families)):
        fam = _FAMILIES[family]
        lines.append(f'add table {fam} {TABLE} {{ comment "ebpflb: keeps netfilter translating '
                     f'the flows a takeover from kube-proxy left with it" ; }}')
        for hook, priority in _CHAINS:
            lines.append(f"add chain {fam} {TABLE} {hook} {{ type nat hook {hook} priority "
                         f"{priority} ; }}")
            lines.append(f"flush chain {fam} {TABLE} {hook}")
            lines.append(f"add rule {fam} {TABLE} {hook} ct state established counter")
    return "\n".join(lines) + "\n"


def _nft(script: str) -> None:
    if shutil.which("nft") is None:
        raise RuntimeError("nft is not installed: the NAT keeper table cannot be added")
    done = subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True,
                          timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"nft -f: {done.stderr.strip() or f'exit {done.returncode}'}")


def add(families: Iterable[int]) -> None:
    families = list(families)
    if families:
        _nft(keeper_script(families))


def remove() -> List[str]:
    """Deletes the keeper tables there are; returns what was removed ("nft table ip ...")."""
    if shutil.which("nft") is None:
        return []
    listed = subprocess.run(["nft", "list", "tables"], text=True, capture_output=True,
                            timeout=60)
    removed = []
    for line in listed.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table" and parts[2] == TABLE:
            _nft(f"delete table {parts[1]} {TABLE}\n")
            removed.append(f"nft table {parts[1]} {TABLE}")
    return removed
