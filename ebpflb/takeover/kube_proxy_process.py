"""Whether kube-proxy still runs on this node (the kernel edge of a takeover's first check).

A kube-proxy that still runs writes its rules back within its sync period, so a takeover waits
until it is gone. It is seen two ways: a process named kube-proxy (visible when the agent shares
the host's process namespace), or a listener on kube-proxy's health port (10256, in this
network namespace) that is not a socket of this process (the agent serves kube-proxy's
/healthz there itself, on the same port).
"""
from __future__ import annotations

import os
from typing import Optional, Set

HEALTH_PORT = 10256
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def _own_sockets() -> Set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _health_listeners() -> Set[str]:
    """The socket inodes listening on HEALTH_PORT in this network namespace."""
    inodes = set()
    for path in ("/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and \
                    int(fields[1].rsplit(":", 1)[1], 16) == HEALTH_PORT:
                inodes.add(fields[9])
    return inodes


def _process() -> Optional[int]:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "kube-proxy":
                    return int(pid)
        except OSError:
            continue
    return None


def running() -> Optional[str]:
    """How kube-proxy is seen running here, or None."""
    pid = _process()
    if pid is not None:
        return f"process {pid} is kube-proxy"
    others = _health_listeners() - _own_sockets()
    if others:
        return f"something other than this agent listens on kube-proxy's health port {HEALTH_PORT}"
    return None
