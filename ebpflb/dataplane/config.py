"""Data plane settings shared by the loader, the map reader and the CLI: where maps are pinned and
how large they are. Each lab node (or test) uses its own pin directory."""
import glob
import re
from dataclasses import dataclass, field
from typing import List, Tuple
from pathlib import Path

from .. import abi

TCP = 6  # IPPROTO_TCP

DEFAULT_PIN_DIR = "/sys/fs/bpf/ebpflb"
NODEPORT_RANGE = (30000, 32767)  # Kubernetes' default --service-node-port-range
BPFFS_ROOT = "/sys/fs/bpf"


@dataclass(frozen=True)
class CtTimeouts:
    """Seconds a conntrack entry lives after its flow's last packet, by TCP state (and UDP).
    The programs and the agent's GC use the same values."""
    tcp_syn: int = abi.CT_TIMEOUT_TCP_SYN
    tcp_established: int = abi.CT_TIMEOUT_TCP_ESTABLISHED
    tcp_close: int = abi.CT_TIMEOUT_TCP_CLOSE
    udp: int = abi.CT_TIMEOUT_UDP
    # A closed flow SNATed towards another node keeps its port this long: the backend holds the
    # connection in TIME_WAIT (60 s on Linux), and a reused 4-tuple would meet PAWS there.
    tcp_time_wait: int = abi.CT_TIMEOUT_TCP_TIME_WAIT

    def lifetime(self, flags: int, proto: int) -> int:
        """Seconds a flow lives after its last packet, by the state its entries have seen: the
        programs' ct_lifetime_of (bpf/conntrack.h), used by the GC and by explain;
        tests/bpf/test_conntrack_gc.py checks the three against each other."""
        if proto != TCP:
            return self.udp
        if flags & abi.CT_F_CLOSING:
            # A closed flow whose source was rewritten keeps its port while the backend may
            # still hold the connection in TIME_WAIT.
            src_nat = flags & (abi.CT_F_SNAT | abi.CT_F_PORT_NAT)
            return self.tcp_time_wait if src_nat else self.tcp_close
        if flags & abi.CT_F_ESTABLISHED:
            return self.tcp_established
        return self.tcp_syn

    def flow_lifetime(self, flags: int, peer_flags: int, proto: int) -> int:
        """Seconds a flow lives after the last packet of either side, by the state its two
        entries make together (the agent's GC; the programs judge each entry alone, with
        lifetime()). A RST from either side, or a FIN from both, closes the flow: the closing
        lifetime. A FIN from one side only leaves it half-closed, the other side may still send
        for a while (Linux conntrack keeps such a flow a minute or two): half_closed, at least
        the time a closed flow to another node keeps its SNAT port, so the programs' port reuse
        (which sees a half-closed SNAT flow as closing) and the GC agree. Else: the most advanced
        state either side reached."""
        both = flags | peer_flags
        if proto == TCP and both & abi.CT_F_CLOSING and not both & abi.CT_F_RESET and \
                not flags & peer_flags & abi.CT_F_CLOSING:
            return self.half_closed
        return self.lifetime(both, proto)

    @property
    def half_closed(self) -> int:
        """How long a half-closed flow lives after the last packet of either side: the programs'
        CT_HALF_CLOSED_NS (bpf/conntrack.h), the longer of tcp_time_wait and tcp_close."""
        return max(self.tcp_time_wait, self.tcp_close)

    def __post_init__(self) -> None:
        for name in ("tcp_syn", "tcp_established", "tcp_close", "udp", "tcp_time_wait"):
            if not 1 <= getattr(self, name) <= 7 * 86400:
                raise ValueError(f"conntrack timeout {name} must be 1 s to 7 days, "
                                 f"got {getattr(self, name)}")


@dataclass(frozen=True)
class DataplaneConfig:
    pin_dir: str = DEFAULT_PIN_DIR
    max_services: int = abi.LB4_MAX_SERVICES
    max_backends: int = abi.LB4_MAX_BACKENDS
    max_slots: int = abi.LB4_MAX_SLOTS
    ct_max_entries: int = abi.CT4_MAX_ENTRIES
    # Half-open TCP flows, apart so a SYN flood cannot evict others.
    ct_syn_max_entries: int = abi.CT4_SYN_MAX_ENTRIES
    ct_timeouts: CtTimeouts = field(default_factory=CtTimeouts)
    max_src_ranges: int = abi.LB4_MAX_SRC_RANGES  # loadBalancerSourceRanges entries, all frontends
    # SNAT source ports towards backends on other nodes: below Kubernetes' default NodePort range
    # (30000-32767) and the kernel's default ephemeral range (32768-60999), so they never collide
    # with a NodePort or the node's own connections. About 29,000 ports per backend address and
    # port, each held through the backend's TIME_WAIT: ~480 new flows/s sustained per backend.
    snat_ports: Tuple[int, int] = (abi.LB4_SNAT_PORT_MIN, abi.LB4_SNAT_PORT_MAX)

    def __post_init__(self) -> None:
        pin = Path(self.pin_dir)
        if not pin.is_absolute() or BPFFS_ROOT not in (str(pin), *map(str, pin.parents)):
            raise ValueError(f"pin directory {self.pin_dir!r} must be under {BPFFS_ROOT}")
        if any(c in self.pin_dir for c in '"\\ '):
            raise ValueError(f"pin directory {self.pin_dir!r} contains a quote, backslash or space")
        for name in ("max_services", "max_backends", "max_slots", "ct_max_entries",
                     "ct_syn_max_entries"):
            value = getattr(self, name)
            if not 1 <= value <= 1 << 24:
                raise ValueError(f"{name} must be between 1 and {1 << 24}, got {value}")
        if not 1 <= self.max_src_ranges <= 1 << 20:
            raise ValueError(f"max_src_ranges must be between 1 and {1 << 20}, "
                             f"got {self.max_src_ranges}")
        low, high = self.snat_ports
        if not 1024 <= low <= high <= 65535 or high - low < 15:
            raise ValueError(f"SNAT ports {low}-{high}: need 1024 <= low, high <= 65535 and at "
                             "least 16 ports")
        if low <= NODEPORT_RANGE[1] and high >= NODEPORT_RANGE[0]:
            # A reply to a SNAT port that is also a NodePort would be taken for a new flow.
            raise ValueError(f"SNAT ports {low}-{high} overlap the NodePort range "
                             f"{NODEPORT_RANGE[0]}-{NODEPORT_RANGE[1]}")

    @property
    def map_limits(self) -> dict:
        """Capacity of each control-plane-written map, for the planner's capacity check."""
        return {
            "lb4_services": self.max_services,
            "lb4_svc_meta": self.max_services,
            "lb4_backends": self.max_backends,
            "lb4_slots": self.max_slots,
            "lb4_vips": self.max_services,
            "lb4_src_ranges": self.max_src_ranges,
            # The IPv6 twins; the ids are shared, so lb4_svc_meta (every frontend's name) and
            # lb4_slots bound both families together.
            "lb6_services": self.max_services,
            "lb6_backends": self.max_backends,
            "lb6_vips": self.max_services,
            "lb6_src_ranges": self.max_src_ranges,
        }


def lab_pin_dir(lab: str) -> str:
    """Each lab node pins its maps apart from a real agent's and from other labs' (node k > 0 of
    a multi-node lab appends "-node<k>")."""
    return f"{BPFFS_ROOT}/ebpflb-lab-{lab}"


def lab_pin_dirs(lab: str) -> List[str]:
    """The pin directories of every node of a lab: node 0's, and each "-node<k>" that exists.
    Lab names cannot end in -node<digits>, so no other lab's directory matches."""
    base = lab_pin_dir(lab)
    node_dir = re.compile(re.escape(base) + r"-node[1-9][0-9]*")
    return [base] + [p for p in sorted(glob.glob(glob.escape(base) + "-node*"))
                     if node_dir.fullmatch(p)]
