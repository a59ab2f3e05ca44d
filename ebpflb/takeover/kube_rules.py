"""Which of a node's netfilter rules are kube-proxy's, and the one transaction per table that
removes exactly them (pure: text in, text out; no subprocess, no kernel).

Where it sits: `ebpflb takeover` reads the node's rule sets (netfilter_rules.read_state, the
kernel edge), asks this module what belongs to kube-proxy, shows the plan, and feeds each
RuleRemoval.script to the restore tool of its backend (netfilter_rules.remove). Every table is
removed in one `iptables-restore --noflush` (or `nft -f`) transaction, so a table is either
untouched or rid of kube-proxy; nothing else in it changes.

What counts as kube-proxy's, decided from the Kubernetes sources (kubernetes/kubernetes):
pkg/proxy/iptables/proxier.go and cleanup.go (chain constants, the jump tables, the
service-chain prefixes and CleanupLeftovers), pkg/proxy/ipvs/proxier.go and cleanup.go (the
IPVS mode's chain lists), pkg/proxy/nftables/proxier.go and cleanup.go (the table), and
pkg/kubelet/kubelet_network_linux.go (what the kubelet creates, old and current versions).

- iptables mode, nat: KUBE-SERVICES, KUBE-NODEPORTS, KUBE-POSTROUTING, KUBE-MARK-MASQ,
  KUBE-PROXY-CANARY, and every per-Service chain: KUBE-SVC-, KUBE-SVL-, KUBE-EXT-, KUBE-FW-,
  KUBE-SEP- and the older KUBE-XLB- (kube-proxy's own cleanup hunts these prefixes in nat only,
  so only nat is searched for them here).
- iptables mode, filter: KUBE-SERVICES, KUBE-EXTERNAL-SERVICES, KUBE-FORWARD, KUBE-NODEPORTS,
  KUBE-PROXY-FIREWALL, KUBE-PROXY-CANARY; mangle: KUBE-PROXY-CANARY (its rule-reload monitor
  creates the canary in all three tables).
- IPVS mode: nat KUBE-NODE-PORT and KUBE-LOAD-BALANCER (plus the shared names above); filter
  KUBE-NODE-PORT, KUBE-SOURCE-RANGES-FIREWALL, KUBE-IPVS-FILTER, KUBE-IPVS-OUT-FILTER; and
  older IPVS versions' load-balancer firewall chain KUBE-FIREWALL in the *nat* table (its
  cleanup list named it there). The ipsets the IPVS mode matches on are not netfilter rules
  and stay out of this module.
- Never kube-proxy's, whatever their name: KUBE-KUBELET-CANARY and KUBE-IPTABLES-HINT (the
  kubelet's monitor canary and backend hint), KUBE-FIREWALL in filter (the kubelet's
  martian-packet guard; kube-proxy installs an identical copy but deliberately never deletes
  it, because the kubelet and third parties rely on it), and KUBE-MARK-DROP (created and owned
  by older kubelets; kube-proxy only ever made sure it existed and never deleted it; current
  versions of either do not use it).
- KUBE-MARK-MASQ and KUBE-POSTROUTING were also created by older kubelets, and other
  components (hostport handling, some CNIs) may mark packets through KUBE-MARK-MASQ and rely on
  KUBE-POSTROUTING to masquerade them. Current kube-proxy removes both in its own cleanup, and
  so does this module, unless some rule outside kube-proxy's chains (other than kube-proxy's
  own POSTROUTING hook) still jumps into either: then the pair stays, hook included, and the
  removal lists it under `kept`, since mark and masquerade only work together.
- nftables mode: everything lives in `table ip kube-proxy` and `table ip6 kube-proxy` (its
  base chains hook netfilter directly); nothing outside those tables is touched, and its own
  cleanup deletes each table whole. So does this module.

Jumps: a rule in a chain that stays and that jumps (-j) or goes (-g) to a chain that goes is
deleted (-D) first, in the same transaction; jumps between two chains that both go disappear
with the flush. Rules inside kube-proxy's chains are counted, not listed.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

IPTABLES_LEGACY = "iptables-legacy"
IPTABLES_NFT = "iptables-nft"
NFTABLES = "nftables"
BACKENDS = (IPTABLES_LEGACY, IPTABLES_NFT, NFTABLES)

# kube-proxy's fixed chain names per iptables table (both proxy modes; see the docstring).
_KUBE_PROXY_CHAINS: Dict[str, frozenset] = {
    "nat": frozenset({
        "KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ",
        "KUBE-PROXY-CANARY", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-FIREWALL"}),
    "filter": frozenset({
        "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL", "KUBE-PROXY-CANARY", "KUBE-NODE-PORT",
        "KUBE-SOURCE-RANGES-FIREWALL", "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER"}),
    "mangle": frozenset({"KUBE-PROXY-CANARY"}),
}
# Per-Service chains of the iptables mode (hash-named, one set per Service port or endpoint).
_SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-",
                           "KUBE-XLB-")
# Mark-then-masquerade pair that other components may use too (see the docstring).
_SHARED_MASQ = ("KUBE-MARK-MASQ", "KUBE-POSTROUTING")
# kube-proxy's own hook into the pair; any other jump into it belongs to someone else.
_OWN_SHARED_HOOK = ("POSTROUTING", "KUBE-POSTROUTING")

NFT_TABLE = "kube-proxy"
_NFT_FAMILIES = {"ip": 4, "ip6": 6}

_JUMP_OPTIONS = ("-j", "--jump", "-g", "--goto")
# Options whose value is free text that could itself read "-j": skipped when finding a target.
_FREE_TEXT_OPTIONS = ("--comment",)


@dataclass(frozen=True)
class RuleRemoval:
    """kube-proxy's state in one table of one backend and family, and the transaction that
    removes it."""

    backend: str  # iptables-legacy | iptables-nft | nftables
    family: int  # 4 or 6
    table: str  # "nat", "filter", "mangle"; for nftables the table name ("kube-proxy")
    chains: Tuple[str, ...]  # kube-proxy's chains in save order; nftables: the table itself
    jumps: Tuple[str, ...]  # rules elsewhere that jump into them, as iptables-save prints them
    script: str  # input of `iptables-restore --noflush` / `nft -f -`: one transaction
    rules: int  # rules removed: the jumps plus every rule in the chains (nftables: the table's)
    kept: Tuple[str, ...] = ()  # kube-proxy-named chains left because other rules use them
    nft_chains: int = 0  # nftables: chains inside the table (the table is removed whole)
    nft_sets: int = 0  # nftables: sets and maps inside the table
    services: int = 0  # nftables: its per-Service chains (service-*); iptables: see `serving`

    @property
    def serving(self) -> bool:
        """Whether this is kube-proxy translating Services (not a canary, not leftovers): a
        per-Service chain of its iptables modes (KUBE-SVC-, KUBE-SVL-), or of its nftables mode."""
        if self.backend == NFTABLES:
            return self.services > 0
        return any(c.startswith(("KUBE-SVC-", "KUBE-SVL-")) for c in self.chains)

    def describe(self) -> str:
        """One line for the takeover report."""
        where = f"{self.backend} IPv{self.family} {self.table}"
        if self.backend == NFTABLES:
            what = (f"whole table ({_count(self.nft_chains, 'chain')}, "
                    f"{_count(self.nft_sets, 'set/map', 'sets/maps')}, "
                    f"{_count(self.rules, 'rule')})")
        else:
            what = (f"{_count(len(self.jumps), 'jump')}, {_count(len(self.chains), 'chain')} "
                    f"({_count(self.rules, 'rule')})")
        if self.kept:
            what += f"; kept {', '.join(self.kept)} (other rules jump into them)"
        return f"{where}: {what}"


def describe(removals: Iterable[RuleRemoval]) -> List[str]:
    """The report lines for a list of removals, in order."""
    return [r.describe() for r in removals]


def _count(n: int, one: str, many: Optional[str] = None) -> str:
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


# ------------------------------------------------------------------ iptables-save parsing

@dataclass(frozen=True)
class _Rule:
    line: int
    chain: str
    spec: str  # everything after "-A CHAIN " (counters stripped)
    target: Optional[str]  # the -j/-g target, None for a rule without one

    @property
    def text(self) -> str:
        return f"-A {self.chain} {self.spec}" if self.spec else f"-A {self.chain}"


@dataclass
class _Table:
    name: str
    line: int
    builtin: Dict[str, bool]  # chain -> is a built-in chain (has a policy), in save order
    rules: List[_Rule]
    committed: bool = False


def _error(line: int, message: str) -> ValueError:
    return ValueError(f"iptables-save line {line}: {message}")


def _parse_target(tokens: Sequence[str]) -> Optional[str]:
    """The chain or target a rule's tokens jump to; iptables-save prints matches before the
    target, so the first -j/-g outside a comment's text is the one."""
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in _FREE_TEXT_OPTIONS:
            i += 2
            continue
        if tok in _JUMP_OPTIONS:
            if i + 1 >= len(tokens):
                raise ValueError(f"{tok} without a target")
            return tokens[i + 1]
        i += 1
    return None


def _parse_rule(lineno: int, line: str, table: Optional[_Table]) -> None:
    if table is None:
        raise _error(lineno, f"rule outside a table: {line!r}")
    body = line
    if body.startswith("["):
        # `iptables-save -c` puts each rule's counters first; they are not part of the rule.
        end = body.find("]")
        if end < 0:
            raise _error(lineno, f"unterminated counters: {line!r}")
        body = body[end + 1:].lstrip()
    parts = body.split(None, 2)
    if len(parts) < 2 or parts[0] != "-A":
        raise _error(lineno, f"cannot parse {line!r}: expected '-A CHAIN ...'")
    chain, spec = parts[1], parts[2] if len(parts) > 2 else ""
    if chain not in table.builtin:
        raise _error(lineno, f"rule for chain {chain} that table {table.name} does not declare")
    try:
        tokens = shlex.split(spec)
    except ValueError as exc:
        raise _error(lineno, f"cannot split {line!r}: {exc}") from None
    try:
        target = _parse_target(tokens)
    except ValueError as exc:
        raise _error(lineno, f"{exc}: {line!r}") from None
    table.rules.append(_Rule(lineno, chain, spec, target))


def _parse_chain(lineno: int, line: str, table: Optional[_Table]) -> None:
    if table is None:
        raise _error(lineno, f"chain declared outside a table: {line!r}")
    fields = line[1:].split()
    if len(fields) not in (2, 3) or not fields[0]:
        raise _error(lineno, f"cannot parse chain declaration {line!r}")
    name, policy = fields[0], fields[1]
    if name in table.builtin:
        raise _error(lineno, f"chain {name} declared twice in table {table.name}")
    # A user-defined chain has no policy ("-"); a built-in one has ACCEPT, DROP...
    table.builtin[name] = policy != "-"


def _parse_iptables_save(save_text: str) -> List[_Table]:
    """Tables of `iptables-save` output, every one complete (declared and committed)."""
    tables: List[_Table] = []
    table: Optional[_Table] = None
    lineno = 0
    for lineno, raw in enumerate(save_text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            if table is not None:
                raise _error(lineno, f"table {line[1:]} starts before table {table.name} "
                                     f"(line {table.line}) was committed")
            name = line[1:].strip()
            if not name or any(t.name == name for t in tables):
                raise _error(lineno, f"bad or repeated table header {line!r}")
            table = _Table(name, lineno, {}, [])
            tables.append(table)
        elif line == "COMMIT":
            if table is None:
                raise _error(lineno, "COMMIT outside a table")
            table.committed = True
            table = None
        elif line.startswith(":"):
            _parse_chain(lineno, line, table)
        else:
            _parse_rule(lineno, line, table)
    if table is not None:
        raise _error(lineno, f"table {table.name} (line {table.line}) has no COMMIT: "
                             "truncated save?")
    return tables


# ------------------------------------------------------------------ ownership

def is_kube_proxy_chain(table: str, chain: str) -> bool:
    """Whether `chain` in iptables table `table` is one kube-proxy creates and owns."""
    if chain in _KUBE_PROXY_CHAINS.get(table, ()):
        return True
    return table == "nat" and chain.startswith(_SERVICE_CHAIN_PREFIXES)


def _shared_used_elsewhere(table: _Table, going: set) -> bool:
    """Whether a rule outside kube-proxy's chains, other than kube-proxy's own POSTROUTING hook,
    jumps into the shared mark/masquerade pair."""
    for rule in table.rules:
        if rule.chain in going or rule.target not in _SHARED_MASQ:
            continue
        if (rule.chain, rule.target) != _OWN_SHARED_HOOK:
            return True
    return False


def _table_removal(table: _Table, backend: str, family: int) -> Optional[RuleRemoval]:
    going = {c for c, builtin in table.builtin.items()
             if not builtin and is_kube_proxy_chain(table.name, c)}
    kept: Tuple[str, ...] = ()
    if table.name == "nat" and going & set(_SHARED_MASQ) and _shared_used_elsewhere(table, going):
        kept = tuple(c for c in table.builtin if c in _SHARED_MASQ and c in going)
        going -= set(_SHARED_MASQ)
    if not going:
        return None
    chains = tuple(c for c in table.builtin if c in going)  # save order
    jumps = [r for r in table.rules if r.chain not in going and r.target in going]
    flushed = sum(1 for r in table.rules if r.chain in going)
    return RuleRemoval(backend=backend, family=family, table=table.name, chains=chains,
                       jumps=tuple(r.text for r in jumps),
                       script=_iptables_script(table.name, jumps, chains),
                       rules=len(jumps) + flushed, kept=kept)


def _iptables_script(table: str, jumps: Sequence[_Rule], chains: Sequence[str]) -> str:
    # Unhook first (a referenced chain cannot be deleted), then empty every chain (which also
    # drops the jumps among them), then delete them: all in one COMMIT, so all or nothing.
    lines = [f"*{table}"]
    lines += [f"-D {r.chain} {r.spec}".rstrip() for r in jumps]
    lines += [f"-F {c}" for c in chains]
    lines += [f"-X {c}" for c in chains]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _check_backend(backend: str, family: int, allowed: Sequence[str]) -> None:
    if backend not in allowed:
        raise ValueError(f"backend: expected one of {', '.join(allowed)}, got {backend!r}")
    if family not in (4, 6):
        raise ValueError(f"family: expected 4 or 6, got {family!r}")


def iptables_removals(save_text: str, backend: str, family: int) -> List[RuleRemoval]:
    """One removal per table of `iptables-save` output (all tables) that holds kube-proxy
    state, in save order; a table without any gives none. ValueError, naming the line, for
    output that is truncated or does not parse."""
    _check_backend(backend, family, (IPTABLES_LEGACY, IPTABLES_NFT))
    out = []
    for table in _parse_iptables_save(save_text):
        removal = _table_removal(table, backend, family)
        if removal is not None:
            out.append(removal)
    return out


# ------------------------------------------------------------------ nftables

def _nft_objects(ruleset: dict) -> List[Tuple[str, dict]]:
    if not isinstance(ruleset, dict) or not isinstance(ruleset.get("nftables"), list):
        raise ValueError("nft ruleset: expected a JSON object with an 'nftables' list "
                         "(the output of `nft -j list ruleset`)")
    out = []
    for i, item in enumerate(ruleset["nftables"]):
        if not isinstance(item, dict) or len(item) != 1:
            raise ValueError(f"nft ruleset: nftables[{i}]: expected an object with one key")
        (kind, body), = item.items()
        if not isinstance(body, dict):
            raise ValueError(f"nft ruleset: nftables[{i}].{kind}: expected an object")
        out.append((kind, body))
    return out


def nft_removals(ruleset: dict) -> List[RuleRemoval]:
    """One removal per kube-proxy table (`ip kube-proxy`, `ip6 kube-proxy`) in the parsed
    output of `nft -j list ruleset`; tables of other names or families are never touched."""
    objects = _nft_objects(ruleset)
    out = []
    for kind, body in objects:
        family = _NFT_FAMILIES.get(body.get("family"))  # type: ignore[arg-type]
        if kind != "table" or family is None or body.get("name") != NFT_TABLE:
            continue
        mine = [(k, b) for k, b in objects
                if b.get("family") == body["family"] and b.get("table") == NFT_TABLE]
        kinds = [k for k, _ in mine]
        out.append(RuleRemoval(
            backend=NFTABLES, family=family, table=NFT_TABLE, chains=(NFT_TABLE,), jumps=(),
            script=f"delete table {body['family']} {NFT_TABLE}\n",
            rules=kinds.count("rule"), nft_chains=kinds.count("chain"),
            nft_sets=kinds.count("set") + kinds.count("map"),
            services=sum(1 for k, b in mine
                         if k == "chain" and str(b.get("name", "")).startswith("service-"))))
    return out
