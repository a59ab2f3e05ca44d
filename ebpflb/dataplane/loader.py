"""Compiles and loads the data plane with bcc (the kernel edge of the apply step).

`load_programs` compiles bpf/lb4_tc.c (programs plus pinned maps); `open_maps` compiles
bpf/lb_maps.c (maps only) to read or write what is programmed without loading any program.
Both reuse maps already pinned under the configured directory, so the agent, the CLI and a
restarted agent all see the same state.
"""
import logging
import os
import re
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ..flowhash import FLOW_HASH_SEED
from . import pins
from .libbpf import map_info
from .. import abi
from .config import BPFFS_ROOT, DataplaneConfig

log = logging.getLogger(__name__)

MAP_NAMES = abi.MAP_NAMES
CONTROL_MAP_NAMES = ("lb4_services", "lb4_slots", "lb4_backends", "lb4_svc_meta", "lb4_vips",
                     "lb4_src_ranges", "lb4_node_ifs", "lb4_pod_addrs", "lb6_services",
                     "lb6_backends", "lb6_vips", "lb6_src_ranges", "lb6_node_ifs", "lb6_pod_addrs")
PROGRAM_FILE = "lb4_tc.c"
SOCK_PROGRAM_FILE = "lb4_sock.c"  # compiled into the same object as PROGRAM_FILE
IPV6_PROGRAM_FILE = "lb6_tc.c"  # too: the IPv6 programs PROGRAM_FILE's entry points tail-call
MAPS_FILE = "lb_maps.c"
PROG_FROM_POD = abi.PROG_LB4_FROM_POD
PROG_TO_POD = abi.PROG_LB4_TO_POD
PROG_NODE_XDP = abi.PROG_LB4_NODE_XDP
# The same for generic XDP. Names are cut at 15 characters by the kernel (cleanup matches them).
PROG_NODE_XDP_GENERIC = abi.PROG_LB4_XDP_GENERIC
PROG_NODE_IN = abi.PROG_LB4_NODE_IN
PROG_NODE_OUT = abi.PROG_LB4_NODE_OUT
# The cgroup socket hooks (lb4_sock.c), by the bcc BPFAttachType each is loaded and attached as.
PROG_SOCK_CONNECT = abi.PROG_LB4_CONNECT
PROG_SOCK_SENDMSG = abi.PROG_LB4_SENDMSG
PROG_SOCK_RECVMSG = abi.PROG_LB4_RECVMSG
PROG_SOCK_PEER = abi.PROG_LB4_GETPEERNAME
PROG_SOCK6_CONNECT = abi.PROG_LB6_CONNECT
PROG_SOCK6_SENDMSG = abi.PROG_LB6_SENDMSG
PROG_SOCK6_RECVMSG = abi.PROG_LB6_RECVMSG
PROG_SOCK6_PEER = abi.PROG_LB6_GETPEERNAME
SOCK_HOOKS = {PROG_SOCK_CONNECT: "CGROUP_INET4_CONNECT",
              PROG_SOCK_SENDMSG: "CGROUP_UDP4_SENDMSG",
              PROG_SOCK_RECVMSG: "CGROUP_UDP4_RECVMSG",
              PROG_SOCK_PEER: "CGROUP_INET4_GETPEERNAME",
              PROG_SOCK6_CONNECT: "CGROUP_INET6_CONNECT",
              PROG_SOCK6_SENDMSG: "CGROUP_UDP6_SENDMSG",
              PROG_SOCK6_RECVMSG: "CGROUP_UDP6_RECVMSG",
              PROG_SOCK6_PEER: "CGROUP_INET6_GETPEERNAME"}


def sock_attach_types() -> Dict[str, int]:
    """Hook program name -> its enum bpf_attach_type value, from bcc's copy of the uapi enum."""
    from bcc import BPFAttachType  # the kernel edge: only imported here

    return {name: getattr(BPFAttachType, attr) for name, attr in SOCK_HOOKS.items()}


class DataplaneError(RuntimeError):
    """The data plane could not be loaded or opened; the message says what to do."""


def bpf_source_dir() -> Path:
    """bpf/ next to the package in a source checkout, or ebpflb/bpf inside an installed wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "bpf", here / "bpf"):
        if (candidate / PROGRAM_FILE).is_file():
            return candidate
    raise DataplaneError(f"BPF sources ({PROGRAM_FILE}) not found next to {here}")


def ensure_bpffs(config: DataplaneConfig) -> None:
    """Mounts bpffs when absent and creates the pin directory, readable by root only."""
    if not os.path.ismount(BPFFS_ROOT):
        log.info("mounting bpffs at %s", BPFFS_ROOT)
        result = subprocess.run(["mount", "-t", "bpf", "bpf", BPFFS_ROOT],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise DataplaneError(f"cannot mount bpffs at {BPFFS_ROOT}: {result.stderr.strip()}")
    os.makedirs(config.pin_dir, mode=0o700, exist_ok=True)
    os.chmod(config.pin_dir, 0o700)


def pinned(config: DataplaneConfig) -> bool:
    """True when the maps of a data plane are pinned in the configured directory."""
    return not missing_pins(config)


def missing_pins(config: DataplaneConfig) -> List[str]:
    return [name for name in MAP_NAMES if not os.path.exists(os.path.join(config.pin_dir, name))]


def _cflags(config: DataplaneConfig, src: Path) -> List[str]:
    return [
        f"-I{src}",
        f'-DEBPFLB_PIN_DIR="{config.pin_dir}"',
        f"-DLB4_MAX_SERVICES={config.max_services}",
        f"-DLB4_MAX_BACKENDS={config.max_backends}",
        f"-DLB4_MAX_SLOTS={config.max_slots}",
        f"-DCT4_MAX_ENTRIES={config.ct_max_entries}",
        f"-DCT4_SYN_MAX_ENTRIES={config.ct_syn_max_entries}",
        f"-DCT_TIMEOUT_TCP_SYN={config.ct_timeouts.tcp_syn}",
        f"-DCT_TIMEOUT_TCP_ESTABLISHED={config.ct_timeouts.tcp_established}",
        f"-DCT_TIMEOUT_TCP_CLOSE={config.ct_timeouts.tcp_close}",
        f"-DCT_TIMEOUT_UDP={config.ct_timeouts.udp}",
        f"-DCT_TIMEOUT_TCP_TIME_WAIT={config.ct_timeouts.tcp_time_wait}",
        f"-DLB4_MAX_SRC_RANGES={config.max_src_ranges}",
        f"-DLB4_SNAT_PORT_MIN={config.snat_ports[0]}",
        f"-DLB4_SNAT_PORT_MAX={config.snat_ports[1]}",
        f"-DFLOW_HASH_SEED={FLOW_HASH_SEED:#x}U",
        "-Wno-unused-function",
    ]


TEMPLATE_SUFFIX = ".tmpl.h"
_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def inline_sources(src: Path, *filenames: str) -> str:
    """The program as one text: the files one after the other, every `#include "x.h"` of bpf/
    replaced by the file itself (once), with #line directives so compiler errors still name the
    real file and line.

    bcc rewrites map method calls (`ct4.lookup(&k)`) only in the main file it compiles, so the
    headers that hold conntrack, selection or fragment code could not touch a map if they were
    included the ordinary way. Inlining them keeps the code split by concern.

    A `*.tmpl.h` is inlined every time it is included: a template (code written once for both IP
    families) and the family headers that give it its types and names (family4.tmpl.h,
    family6.tmpl.h, family_end.tmpl.h), which each round of templates includes again."""
    seen: set = set()

    def expand(path: Path) -> List[str]:
        if path in seen:
            return []
        if not path.name.endswith(TEMPLATE_SUFFIX):
            seen.add(path)
        out = [f'#line 1 "{path}"']
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            m = _LOCAL_INCLUDE.match(line)
            if m and (src / m.group(1)).is_file():
                out.extend(expand(src / m.group(1)))
                out.append(f'#line {number + 1} "{path}"')
            else:
                out.append(line)
        return out

    return "\n".join(line for filename in filenames for line in expand(src / filename)) + "\n"


def _files(filename: str) -> Tuple[str, ...]:
    if filename == PROGRAM_FILE:
        return (PROGRAM_FILE, IPV6_PROGRAM_FILE, SOCK_PROGRAM_FILE)
    return (filename,)


def _compile_once(config: DataplaneConfig, filename: str, extra_cflags: Sequence[str]) -> Any:
    try:
        from bcc import BPF  # the kernel edge: only imported here
    except ImportError as exc:
        raise DataplaneError("bcc is not importable: run `make setup` (Debian python3-bpfcc)") from exc
    src = bpf_source_dir()
    try:
        return BPF(text=inline_sources(src, *_files(filename)).encode(),
                   cflags=_cflags(config, src) + list(extra_cflags))
    except Exception as exc:  # bcc raises bare Exception on compile or load failure
        raise DataplaneError(f"compiling {filename} failed: {exc}") from exc


def _compile(config: DataplaneConfig, filename: str, extra_cflags: Sequence[str] = (),
             migrate: bool = False) -> Any:
    """Compiles with the pinned maps reused, after checking each pin has the layout and size the
    code expects. A mismatch is migrated (migrate=True: the agent) or refused."""
    ensure_bpffs(config)
    bpf = _compile_once(config, filename, extra_cflags)
    mismatches = pins.check(bpf, list(MAP_NAMES), sizes=migrate)
    if mismatches:
        if not migrate:
            raise DataplaneError(
                f"pinned maps in {config.pin_dir} do not match this version of ebpflb ("
                + "; ".join(map(str, mismatches)) + "); start the agent to migrate them, or run "
                "`ebpflb cleanup`")
        bpf = _recreate(config, filename, extra_cflags, bpf, sorted({m.name for m in mismatches}),
                        mismatches)
    _restrict_pins(config)
    return bpf


def _recreate(config: DataplaneConfig, filename: str, extra_cflags: Sequence[str], bpf: Any,
              names: List[str], mismatches: List["pins.Mismatch"]) -> Any:
    for m in mismatches:
        log.warning("pinned map %s/%s", config.pin_dir, m)
    bpf.cleanup()
    old_fds = pins.set_aside(config.pin_dir, names)
    try:
        bpf = _compile_once(config, filename, extra_cflags)
        for name, fd in old_fds.items():
            # A conntrack value that grew is carried over zero-extended (pins.copy_hash_entries).
            same_layout = not any(m.name == name and ("key size" in m.what or "type" in m.what)
                                  for m in mismatches)
            if name in ("ct4", "ct4_syn", "ct6", "ct6_syn") and same_layout:
                table = bpf[name.encode()]
                try:
                    copied = pins.copy_hash_entries(fd, table, map_info(table.map_fd).max_entries)
                except ValueError as exc:
                    log.warning("map %s recreated empty: %s", name, exc)
                    continue
                log.warning("map %s recreated with its new size; %d conntrack entries carried over",
                            name, copied)
            else:
                log.warning("map %s recreated empty (%s)", name,
                            "the agent reprograms it from its source" if name in CONTROL_MAP_NAMES
                            else "its previous contents cannot be carried over")
    finally:
        for fd in old_fds.values():
            os.close(fd)
    return bpf


def _restrict_pins(config: DataplaneConfig) -> None:
    for name in MAP_NAMES:
        path = os.path.join(config.pin_dir, name)
        if os.path.exists(path) and stat.S_IMODE(os.stat(path).st_mode) != 0o600:
            os.chmod(path, 0o600)


@dataclass
class LoadedPrograms:
    bpf: Any
    from_pod: Any
    to_pod: Any
    node_xdp: Any = None  # node devices: XDP ingress (XDP mode)
    node_in: Any = None  # node devices: TC ingress (both modes; behind XDP in XDP mode)
    node_out: Any = None  # node devices: TC egress (both modes)
    node_xdp_generic: Any = None  # node_xdp for generic XDP (local flows left to TC)
    sock: Dict[str, Any] = field(default_factory=dict)  # cgroup socket hooks: name -> function
    ipv6: Dict[str, Any] = field(default_factory=dict)  # lb6_tc.c, tail-called: name -> function

    def xdp_fns(self) -> Dict[str, Any]:
        """The XDP program for each XDP mode."""
        return {"native": self.node_xdp, "generic": self.node_xdp_generic}


def load_programs(config: DataplaneConfig, extra_cflags: Sequence[str] = (),
                  socket_hooks: bool = True) -> LoadedPrograms:
    """Compiles the programs and loads them into the kernel (maps pinned or reused): the TC and
    XDP ones, and the cgroup socket hooks unless `socket_hooks` is False (--socket-lb off: they
    need Linux 5.18, where the rest runs on older kernels). extra_cflags overrides tunables,
    e.g. -DLB_COUNTERS=0 for a benchmark."""
    from bcc import BPF

    bpf = _compile(config, PROGRAM_FILE, extra_cflags, migrate=True)
    try:
        from_pod = bpf.load_func(PROG_FROM_POD.encode(), BPF.SCHED_CLS)
        to_pod = bpf.load_func(PROG_TO_POD.encode(), BPF.SCHED_CLS)
        node_in = bpf.load_func(PROG_NODE_IN.encode(), BPF.SCHED_CLS)
        node_out = bpf.load_func(PROG_NODE_OUT.encode(), BPF.SCHED_CLS)
        node_xdp = bpf.load_func(PROG_NODE_XDP.encode(), BPF.XDP)
        node_xdp_generic = bpf.load_func(PROG_NODE_XDP_GENERIC.encode(), BPF.XDP)
        ipv6 = _load_ipv6_programs(bpf)
    except Exception as exc:  # bcc raises bare Exception with the verifier log
        raise DataplaneError(f"loading {PROGRAM_FILE} failed: {exc}") from exc
    sock = {}
    if socket_hooks:
        try:
            sock = {name: bpf.load_func(name.encode(), BPF.CGROUP_SOCK_ADDR,
                                        attach_type=attach_type)
                    for name, attach_type in sock_attach_types().items()}
        except Exception as exc:  # noqa: BLE001 - bcc raises bare Exception
            raise DataplaneError(
                f"loading the socket hooks of {SOCK_PROGRAM_FILE} failed ({exc}); they need "
                f"Linux 5.18 or newer with cgroup v2 BPF (this is {os.uname().release}): run "
                "with --socket-lb off") from exc
    log.info("loaded %s, %s, %s, %s, %s, %s and %s (maps pinned in %s)", PROG_FROM_POD,
             PROG_TO_POD, PROG_NODE_XDP, PROG_NODE_XDP_GENERIC, PROG_NODE_IN, PROG_NODE_OUT,
             ", ".join(sock), config.pin_dir)
    return LoadedPrograms(bpf, from_pod, to_pod, node_xdp, node_in, node_out, node_xdp_generic,
                          sock, ipv6)


# The IPv6 programs, by their index in lb6_progs (enum lb6_prog): the TC entry points tail-call
# them for every IPv6 packet.
PROG_LB6_FROM_POD = abi.PROG_LB6_FROM_POD
PROG_LB6_TO_POD = abi.PROG_LB6_TO_POD
PROG_LB6_NODE_IN = abi.PROG_LB6_NODE_IN
PROG_LB6_NODE_OUT = abi.PROG_LB6_NODE_OUT
PROG_LB6_NODE_XDP = abi.PROG_LB6_NODE_XDP
PROG_LB6_XDP_GENERIC = abi.PROG_LB6_XDP_GENERIC
IPV6_PROG_ARRAY = "lb6_progs"  # pinned (bpf/lb_maps.h): the attached programs outlive the agent
IPV6_PROGRAMS = {abi.LB6_PROG_FROM_POD: PROG_LB6_FROM_POD, abi.LB6_PROG_TO_POD: PROG_LB6_TO_POD,
                 abi.LB6_PROG_NODE_IN: PROG_LB6_NODE_IN, abi.LB6_PROG_NODE_OUT: PROG_LB6_NODE_OUT}
# The XDP entry points' IPv6 programs: an array of their own (one program type per array).
IPV6_XDP_PROG_ARRAY = "lb6_xdp_progs"
IPV6_XDP_PROGRAMS = {abi.LB6_XDP_NATIVE: PROG_LB6_NODE_XDP,
                     abi.LB6_XDP_GENERIC: PROG_LB6_XDP_GENERIC}


def _load_ipv6_programs(bpf: Any) -> Dict[str, Any]:
    """Loads the IPv6 programs and puts them in lb6_progs and lb6_xdp_progs, where the TC and XDP
    entry points find them. The arrays are pinned: a reload replaces their entries (the entry
    points still attached then tail-call the new programs, which use the same maps)."""
    import ctypes

    from bcc import BPF

    out = {}
    for array, programs, prog_type in ((IPV6_PROG_ARRAY, IPV6_PROGRAMS, BPF.SCHED_CLS),
                                       (IPV6_XDP_PROG_ARRAY, IPV6_XDP_PROGRAMS, BPF.XDP)):
        table = bpf[array.encode()]
        for index, name in programs.items():
            fn = bpf.load_func(name.encode(), prog_type)
            table[ctypes.c_int(index)] = ctypes.c_int(fn.fd)
            out[name] = fn
    return out


def open_maps(config: DataplaneConfig, create: bool = False) -> Any:
    """Opens the pinned maps without loading programs. Refuses to create them unless asked, so a
    read-only command never leaves pins behind."""
    missing = missing_pins(config)
    if not create and missing:
        if len(missing) < len(MAP_NAMES):
            raise DataplaneError(
                f"the data plane pinned in {config.pin_dir} lacks {', '.join(missing)}: it was "
                "made by an older ebpflb; restart the agent to add them")
        raise DataplaneError(f"no ebpflb data plane pinned in {config.pin_dir} "
                             "(is the agent running? see `ebpflb agent --help`)")
    return _compile(config, MAPS_FILE)
