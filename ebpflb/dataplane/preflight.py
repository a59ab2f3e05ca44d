"""Checks before the agent touches anything: the capabilities it needs, so a missing one is a
clear message at start instead of an EPERM deep inside bcc or netlink."""
from typing import Dict, List

# The capabilities the agent uses, and what for.
REQUIRED: Dict[str, tuple] = {
    "CAP_BPF": (39, "load programs and create maps"),
    "CAP_NET_ADMIN": (12, "attach TC programs (clsact qdiscs and filters)"),
    "CAP_SYS_ADMIN": (21, "pin maps in bpffs, mount bpffs, enter a network namespace"),
}


def effective_capabilities(status_path: str = "/proc/self/status") -> int:
    with open(status_path) as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    raise OSError(f"no CapEff line in {status_path}")


def missing_capabilities(effective: int) -> List[str]:
    return [f"{name} ({why})" for name, (bit, why) in REQUIRED.items() if not effective >> bit & 1]
