"""The kernel edge of the netfilter part of `ebpflb takeover`: read the node's rule sets with the
save tools, and apply the removals that kube_rules computed with the restore tools.

Where it sits: kube_rules (pure) decides what is kube-proxy's; this module only runs
`iptables-legacy-save`, `ip6tables-legacy-save`, `iptables-nft-save`, `ip6tables-nft-save` and
`nft -j list ruleset`, and feeds one RuleRemoval.script at a time to `iptables-…-restore
--noflush` or `nft -f -`. Those tools apply a table (iptables) or a whole input (nft) in one
kernel transaction, so a failed removal changes nothing; the error carries the tool's stderr.

A tool that is not installed, or a backend that holds no tables, reads as "nothing of
kube-proxy's there"; any other failure is an error naming the command. Commands run in the
caller's network namespace, or inside `netns` through `ip netns exec` when one is named.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .kube_rules import (IPTABLES_LEGACY, IPTABLES_NFT, NFTABLES, RuleRemoval, iptables_removals,
                         nft_removals)

log = logging.getLogger(__name__)

# (backend, family) -> (save tool, restore tool)
_IPTABLES_TOOLS: Dict[Tuple[str, int], Tuple[str, str]] = {
    (IPTABLES_LEGACY, 4): ("iptables-legacy-save", "iptables-legacy-restore"),
    (IPTABLES_LEGACY, 6): ("ip6tables-legacy-save", "ip6tables-legacy-restore"),
    (IPTABLES_NFT, 4): ("iptables-nft-save", "iptables-nft-restore"),
    (IPTABLES_NFT, 6): ("ip6tables-nft-save", "ip6tables-nft-restore"),
}
NFT = "nft"
# iptables-nft is slow on kube-proxy-sized rule sets (minutes at 10k Services): a generous
# bound, so a stuck tool still ends with an error instead of hanging the takeover.
DEFAULT_TIMEOUT = 900.0
# The legacy tools take the xtables lock; wait for it rather than fail if kube-proxy or the
# kubelet is writing at that moment.
_LOCK_WAIT = ["-w", "10"]


class NetfilterError(RuntimeError):
    """A save or restore tool failed; carries the command line and its stderr."""

    def __init__(self, argv: Sequence[str], message: str, stderr: str = "") -> None:
        self.argv = list(argv)
        self.stderr = stderr
        detail = f": {stderr.strip()}" if stderr.strip() else ""
        super().__init__(f"command {' '.join(self.argv)!r} {message}{detail}")


@dataclass(frozen=True)
class NetfilterState:
    """kube-proxy's rules on a node, as removals in the order to apply them, and which save
    tools were run or missing (a missing tool reads as an empty backend)."""

    removals: Tuple[RuleRemoval, ...]
    tools_run: Tuple[str, ...]
    tools_missing: Tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.removals

    def by_backend(self) -> Dict[str, List[RuleRemoval]]:
        out: Dict[str, List[RuleRemoval]] = {}
        for removal in self.removals:
            out.setdefault(removal.backend, []).append(removal)
        return out


def _argv(argv: Sequence[str], netns: Optional[str]) -> List[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def _run(argv: Sequence[str], netns: Optional[str], stdin: Optional[str] = None,
         timeout: float = DEFAULT_TIMEOUT) -> str:
    full = _argv(argv, netns)
    try:
        proc = subprocess.run(full, input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise NetfilterError(full, f"could not start: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise NetfilterError(full, f"timed out after {timeout:g}s") from exc
    if proc.returncode != 0:
        raise NetfilterError(full, f"failed with exit code {proc.returncode}", proc.stderr)
    return proc.stdout


def _present(tool: str) -> bool:
    # The namespace shares this process's file system, so a tool found here runs there too.
    return shutil.which(tool) is not None


def _read_iptables(backend: str, family: int, netns: Optional[str],
                   timeout: float) -> List[RuleRemoval]:
    save, _ = _IPTABLES_TOOLS[(backend, family)]
    text = _run([save], netns, timeout=timeout)
    try:
        return iptables_removals(text, backend, family)
    except ValueError as exc:
        raise NetfilterError([save], f"printed output that does not parse ({exc})") from exc


def _read_nft(netns: Optional[str], timeout: float) -> List[RuleRemoval]:
    argv = [NFT, "-j", "list", "ruleset"]
    text = _run(argv, netns, timeout=timeout)
    try:
        # An empty rule set prints only metainfo; a very old nft may print nothing at all.
        return nft_removals(json.loads(text)) if text.strip() else []
    except ValueError as exc:
        raise NetfilterError(argv, f"printed output that does not parse ({exc})") from exc


def read_state(netns: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT) -> NetfilterState:
    """kube-proxy's rules in every backend and family on this node (or in `netns`)."""
    removals: List[RuleRemoval] = []
    run: List[str] = []
    missing: List[str] = []
    for (backend, family), (save, _) in _IPTABLES_TOOLS.items():
        if not _present(save):
            missing.append(save)
            continue
        run.append(save)
        removals += _read_iptables(backend, family, netns, timeout)
    if _present(NFT):
        run.append(NFT)
        removals += _read_nft(netns, timeout)
    else:
        missing.append(NFT)
    where = f"netns {netns}" if netns else "this namespace"
    log.info("netfilter (%s): %d table(s) with kube-proxy rules; read with %s%s", where,
             len(removals), ", ".join(run) or "nothing",
             f"; not installed: {', '.join(missing)}" if missing else "")
    return NetfilterState(tuple(removals), tuple(run), tuple(missing))


def restore_argv(removal: RuleRemoval) -> List[str]:
    """The command that applies `removal.script` (read from stdin) in one transaction."""
    if removal.backend == NFTABLES:
        return [NFT, "-f", "-"]
    key = (removal.backend, removal.family)
    if key not in _IPTABLES_TOOLS:
        raise ValueError(f"removal: unknown backend/family {removal.backend}/{removal.family}")
    restore = _IPTABLES_TOOLS[key][1]
    # --noflush: only the listed chains change; without it restore would empty the table.
    return [restore, "--noflush", *_LOCK_WAIT]


def remove(removal: RuleRemoval, netns: Optional[str] = None,
           timeout: float = DEFAULT_TIMEOUT) -> None:
    """Apply one removal; NetfilterError with the tool's stderr if it fails (the tool applies
    all of it or none of it, so a failure leaves the table as it was, e.g. when kube-proxy
    changed it after read_state: read again and retry)."""
    argv = restore_argv(removal)
    _run(argv, netns, stdin=removal.script, timeout=timeout)
    log.info("netfilter%s: removed %s", f" (netns {netns})" if netns else "", removal.describe())
