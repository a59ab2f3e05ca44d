"""Removing everything ebpflb attached or pinned: our XDP programs and TC filters (and clsact
qdiscs nothing else uses) in the current network namespace, then the pinned maps and their
directory."""
import logging
import os
from typing import List, Optional

from pyroute2 import IPRoute

from .attach import detach_all
from .config import DataplaneConfig
from .loader import MAP_NAMES

log = logging.getLogger(__name__)


def remove_pins(config: DataplaneConfig) -> List[str]:
    """The pinned maps, their directory, and the agent's status file that goes with them."""
    from ..status import remove_status, status_path

    removed = [status_path(config.pin_dir)] if remove_status(config.pin_dir) else []
    for name in MAP_NAMES:
        path = os.path.join(config.pin_dir, name)
        if os.path.exists(path):
            os.unlink(path)
            removed.append(path)
    if os.path.isdir(config.pin_dir):
        try:
            os.rmdir(config.pin_dir)
            removed.append(config.pin_dir)
        except OSError as exc:
            log.warning("pin directory %s not removed: %s", config.pin_dir, exc)
    return removed


def remove_dataplane(config: DataplaneConfig, ipr: Optional[IPRoute] = None) -> List[str]:
    """Detaches our programs from every device of this network namespace and unpins the maps.
    Returns what was removed, for the user to read."""
    own = ipr is None
    ipr = ipr or IPRoute()
    try:
        from .node_attach import detach_xdp_all

        xdp = detach_xdp_all(ipr)
        devices = sorted(set(detach_all(ipr)) | set(xdp))
    finally:
        if own:
            ipr.close()
    return [f"programs on {d}" for d in devices] + remove_pins(config)
