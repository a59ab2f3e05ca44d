"""Entering a named network namespace for the whole process (an agent for a lab node), or for
one thread (setns_thread). Only the network namespace changes: staying in the current mount
namespace keeps bpffs visible, which `ip netns exec` would hide by remounting /sys."""
import ctypes
import os

from pyroute2 import netns

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns_thread(fd: int, what: str) -> None:
    """Moves the calling thread (setns acts per thread) into the network namespace `fd`."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns into {what} failed: {os.strerror(err)}")


def enter_netns(name: str) -> None:
    if not os.path.exists(os.path.join("/run/netns", name)):
        raise FileNotFoundError(f"network namespace {name} does not exist (ip netns list)")
    # flags=0: open an existing namespace; pyroute2's default would create a missing one.
    netns.setns(name, flags=0)
