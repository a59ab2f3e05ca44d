"""Entering a named network namespace for the whole process (an agent for a lab node). Only the
network namespace changes: staying in the current mount namespace keeps bpffs visible, which
`ip netns exec` would hide by remounting /sys."""
import os

from pyroute2 import netns


def enter_netns(name: str) -> None:
    if not os.path.exists(os.path.join("/run/netns", name)):
        raise FileNotFoundError(f"network namespace {name} does not exist (ip netns list)")
    # flags=0: open an existing namespace; pyroute2's default would create a missing one.
    netns.setns(name, flags=0)
