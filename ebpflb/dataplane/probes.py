"""The facts `ebpflb doctor` judges (ebpflb.doctor), gathered from this machine: files under /proc
and /sys, and probes that try the real thing. The probes compile a two-line program with bcc, and
in a network namespace of their own (a veth pair, removed afterwards whatever happens) attach it
at TC through a clsact qdisc and at XDP in native and generic mode, with iproute2 as an operator
would."""
import os
import platform
import secrets
import shutil
import subprocess
from typing import Dict, List, Optional, Tuple

from .. import doctor
from .integrity import pin_object
from .preflight import effective_capabilities, missing_capabilities

PROBE_SOURCE = """
int probe_tc(struct __sk_buff *skb) { return 0; }
int probe_xdp(struct xdp_md *ctx) { return 2; /* XDP_PASS */ }
"""


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _run(argv: List[str]) -> Tuple[int, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return p.returncode, " ".join((p.stdout if p.returncode == 0 else p.stderr).split())


def _tool_output(argv: List[str]) -> Optional[str]:
    """A read-only tool's output, None when the tool is missing or fails."""
    if shutil.which(argv[0]) is None:
        return None
    code, out = _run(argv)
    return out if code == 0 else None


def _compile() -> Tuple[Optional[str], object]:
    """(error, the bcc module) after compiling and loading the probe programs."""
    try:
        from bcc import BPF
    except ImportError as exc:
        return f"bcc is not importable: {exc}", None
    try:
        bpf = BPF(text=PROBE_SOURCE)
        tc = bpf.load_func(b"probe_tc", BPF.SCHED_CLS)
        xdp = bpf.load_func(b"probe_xdp", BPF.XDP)
    except Exception as exc:  # noqa: BLE001 - bcc raises Exception with the compiler's words
        return " ".join(str(exc).split())[:300], None
    return None, (bpf, tc, xdp)


def _attach_probes(programs) -> Dict[str, Optional[str]]:
    """Errors (None: worked) of attaching at TC, native XDP and generic XDP on a veth in a
    namespace made for it."""
    _, tc, xdp = programs
    tag = secrets.token_hex(3)
    ns = f"ebpflb-doctor-{tag}"
    pins = {name: f"/sys/fs/bpf/ebpflb-doctor-{tag}-{name}" for name in ("tc", "xdp")}
    out: Dict[str, Optional[str]] = {"clsact": "not tried", "xdp native": "not tried",
                                     "xdp generic": "not tried"}
    try:
        code, err = _run(["ip", "netns", "add", ns])
        if code:
            out["clsact"] = f"ip netns add: {err}"
            return out
        for argv in (["link", "add", "name", "probe0", "type", "veth", "peer", "name", "probe1"],
                     ["link", "set", "dev", "probe0", "up"], ["link", "set", "dev", "probe1", "up"]):
            code, err = _run(["ip", "-n", ns, *argv])
            if code:
                out["clsact"] = f"ip {' '.join(argv)}: {err}"
                return out
        pin_object(tc.fd, pins["tc"])
        pin_object(xdp.fd, pins["xdp"])
        # nsenter, not `tc -n`: iproute2's own switch remounts /sys, hiding the pins in bpffs.
        inside = ["nsenter", f"--net=/run/netns/{ns}"]
        code, err = _run([*inside, "tc", "qdisc", "add", "dev", "probe0", "clsact"])
        if not code:
            code, err = _run([*inside, "tc", "filter", "add", "dev", "probe0", "ingress", "bpf",
                              "da", "pinned", pins["tc"]])
        out["clsact"] = f"tc: {err}" if code else None
        for mode, word in (("xdp native", "xdpdrv"), ("xdp generic", "xdpgeneric")):
            code, err = _run([*inside, "ip", "link", "set", "dev", "probe1", word, "pinned",
                              pins["xdp"]])
            out[mode] = f"ip link set {word}: {err}" if code else None
            if not code:
                _run([*inside, "ip", "link", "set", "dev", "probe1", word, "off"])
    except OSError as exc:
        for key, value in out.items():
            if value == "not tried":
                out[key] = str(exc)
    finally:
        for path in pins.values():
            if os.path.exists(path):
                os.unlink(path)
        _run(["ip", "netns", "del", ns])
    return out


def run_checks() -> List[doctor.Check]:
    from .sock_attach import cgroup2_root

    checks = [doctor.kernel(platform.release())]
    try:
        missing = missing_capabilities(effective_capabilities())
    except OSError as exc:
        missing = [f"capabilities unreadable: {exc}"]
    checks.append(doctor.capabilities(missing))
    checks.append(doctor.bpffs(_read("/proc/self/mounts") or ""))
    checks.append(doctor.btf(os.path.exists("/sys/kernel/btf/vmlinux")))
    checks.append(doctor.cgroup2(cgroup2_root()))
    error, programs = _compile()
    checks.append(doctor.probe(
        "bcc compile", error, "bcc compiled and loaded a TC and an XDP program",
        "install the kernel headers of the running kernel (linux-headers-$(uname -r)), or run "
        "scripts/setup.sh, which fetches them when the package is missing"))
    if programs is None:
        attached = {k: "not tried: nothing compiled" for k in ("clsact", "xdp native", "xdp generic")}
    else:
        attached = _attach_probes(programs)
    checks.append(doctor.probe("tc clsact", attached["clsact"],
                               "a TC program attached through a clsact qdisc",
                               "the kernel needs CONFIG_NET_CLS_BPF and CONFIG_NET_SCH_INGRESS"))
    checks.append(doctor.probe("xdp native", attached["xdp native"],
                               "native XDP attached to a veth",
                               "--node-mode tc, or --xdp-mode generic (slower); native XDP needs "
                               "a driver that supports it", doctor.WARN))
    checks.append(doctor.probe("xdp generic", attached["xdp generic"],
                               "generic XDP attached to a veth", "use --node-mode tc"))
    checks.append(doctor.ip_forward(_read("/proc/sys/net/ipv4/ip_forward")))
    checks.append(doctor.rp_filter({
        f"{which}.rp_filter": _read(f"/proc/sys/net/ipv4/conf/{which}/rp_filter")
        for which in ("all", "default")}))
    checks.append(doctor.kube_proxy(*_kube_proxy_rules()))
    return checks


def _kube_proxy_rules() -> Tuple[Optional[str], Optional[str], bool, bool]:
    """What kube_proxy() judges, read without creating anything: the legacy nat table is listed
    only when it exists (listing it would load the module and create it), nftables as it is."""
    legacy = None
    if "nat" in (_read("/proc/net/ip_tables_names") or "").split():
        tool = "iptables-legacy-save" if shutil.which("iptables-legacy-save") else "iptables-save"
        legacy = _tool_output([tool, "-t", "nat"])
    tables = _tool_output(["nft", "list", "tables"])
    kube_services = bool(tables and "table ip nat" in tables.splitlines() and _tool_output(
        ["nft", "list", "chain", "ip", "nat", "KUBE-SERVICES"]) is not None)
    tools = any(shutil.which(t) for t in ("nft", "iptables-save", "iptables-legacy-save"))
    return legacy, tables, kube_services, tools
