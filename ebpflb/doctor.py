"""`ebpflb doctor`: what this node's kernel and system give ebpflb, one verdict per need with what
to do about a failure. The verdicts are pure functions of facts (kernel release, mounts, sysctls,
probe errors) that ebpflb.dataplane.probes gathers, so each rule is tested with made-up facts and
the whole command against the real machine."""
import re
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

OK, WARN, FAIL = "ok", "warn", "fail"

# Kernel releases below which a part of ebpflb cannot run: the TC and XDP programs use
# bpf_fib_lookup's and the conntrack maps' 5.10 features; the socket hooks set connect()'s error
# with bpf_set_retval (5.18).
KERNEL_MIN = (5, 10)
KERNEL_SOCKET_LB = (5, 18)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str  # what was found
    fix: str = ""  # what to do, for warn and fail

    def as_dict(self) -> dict:
        return asdict(self)


def _release(release: str) -> Optional[Tuple[int, int]]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else None


def kernel(release: str) -> Check:
    version = _release(release)
    if version is None:
        return Check("kernel", WARN, f"release {release!r} not understood",
                     f"ebpflb needs Linux {KERNEL_MIN[0]}.{KERNEL_MIN[1]} or newer")
    if version < KERNEL_MIN:
        return Check("kernel", FAIL, f"Linux {release}",
                     f"upgrade to Linux {KERNEL_MIN[0]}.{KERNEL_MIN[1]} or newer")
    if version < KERNEL_SOCKET_LB:
        return Check("kernel", WARN, f"Linux {release}: connect-time balancing needs "
                     f"{KERNEL_SOCKET_LB[0]}.{KERNEL_SOCKET_LB[1]}",
                     "run the agent with --socket-lb off (host-network clients are then not "
                     "balanced), or upgrade the kernel")
    return Check("kernel", OK, f"Linux {release}")


def capabilities(missing: Sequence[str]) -> Check:
    if missing:
        return Check("capabilities", FAIL, "missing " + "; ".join(missing),
                     "run as root, or grant the capabilities (deploy/daemonset.yaml lists them)")
    return Check("capabilities", OK, "CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN")


def bpffs(mounts: str, root: str = "/sys/fs/bpf") -> Check:
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] == root and fields[2] == "bpf":
            return Check("bpffs", OK, f"mounted at {root}")
    return Check("bpffs", WARN, f"no bpf file system at {root}",
                 f"the agent mounts one itself, but pins then live only as long as its mount "
                 f"namespace: mount it on the host (mount -t bpf bpf {root})")


def btf(present: bool) -> Check:
    if present:
        return Check("btf", OK, "/sys/kernel/btf/vmlinux")
    return Check("btf", WARN, "no kernel BTF (/sys/kernel/btf/vmlinux)",
                 "not needed by ebpflb (bcc compiles against the kernel headers); bpftool then "
                 "shows maps without their field names")


def cgroup2(root: Optional[str]) -> Check:
    if root:
        return Check("cgroup v2", OK, f"mounted at {root}")
    return Check("cgroup v2", FAIL, "no cgroup v2 hierarchy mounted",
                 "mount one (mount -t cgroup2 none /sys/fs/cgroup), or run the agent with "
                 "--socket-lb off")


def probe(name: str, error: Optional[str], ok_detail: str, fix: str,
          status_if_failed: str = FAIL) -> Check:
    """A verdict from trying the thing itself (compiling, attaching)."""
    if error is None:
        return Check(name, OK, ok_detail)
    return Check(name, status_if_failed, error, fix)


def ip_forward(value: Optional[str]) -> Check:
    if value == "1":
        return Check("ip_forward", OK, "net.ipv4.ip_forward = 1")
    return Check("ip_forward", FAIL, f"net.ipv4.ip_forward = {value if value is not None else '?'}",
                 "pods and backends on other nodes are reached by forwarding: "
                 "sysctl -w net.ipv4.ip_forward=1")


def rp_filter(values: Dict[str, Optional[str]]) -> Check:
    """Strict (1) and loose (2) both work: replies are translated on the client's side, so
    they arrive from the address they were sent to."""
    shown = ", ".join(f"{k} = {v if v is not None else '?'}" for k, v in sorted(values.items()))
    unknown = [k for k, v in values.items() if v not in ("0", "1", "2")]
    if unknown:
        return Check("rp_filter", WARN, shown, "unreadable or unexpected values")
    return Check("rp_filter", OK, shown)


def kube_proxy(iptables_nat: Optional[str], nft_tables: Optional[str],
               nft_kube_services: bool = False, tools: bool = True) -> Check:
    """kube-proxy's rules on the node (iptables mode: the KUBE-SERVICES chain, in a legacy
    iptables nat table or iptables-nft's "ip nat"; nftables mode: its own tables): both would
    answer Service traffic. `tools`: whether nft or iptables could be run at all."""
    if not tools:
        return Check("kube-proxy", WARN, "not checked: neither nft nor iptables-save is installed",
                     "install nftables (and iptables for the legacy backend), or look on the host")
    found: List[str] = []
    if iptables_nat and re.search(r"^:KUBE-SERVICES\s", iptables_nat, re.M):
        found.append("iptables chain KUBE-SERVICES")
    if nft_kube_services:
        found.append("chain KUBE-SERVICES in nftables table ip nat")
    if nft_tables:
        found += [f"nftables table {t}" for t in re.findall(r"^table (\S+ kube-proxy)$",
                                                           nft_tables, re.M)]
    if found:
        return Check("kube-proxy", WARN, "kube-proxy's rules are present: " + ", ".join(found),
                     "kube-proxy and ebpflb would both handle Service traffic: remove kube-proxy "
                     "and its rules (kube-proxy --cleanup) before relying on ebpflb "
                     "(docs/kubernetes.md)")
    return Check("kube-proxy", OK, "no kube-proxy rules")


def verdict(checks: Sequence[Check]) -> int:
    """The exit status: 1 when anything failed, else 0 (warnings do not fail)."""
    return 1 if any(c.status == FAIL for c in checks) else 0


def render(checks: Sequence[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status.upper():4}  {c.name.ljust(width)}  {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"{'':4}  {'':{width}}  -> {c.fix}")
    failed = sum(1 for c in checks if c.status == FAIL)
    warned = sum(1 for c in checks if c.status == WARN)
    lines.append(f"{len(checks)} checks: {failed} failed, {warned} warnings")
    return "\n".join(lines)
