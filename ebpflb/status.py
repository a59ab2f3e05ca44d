"""The agent's status file: what the maps cannot say. Skipped Services are by definition not in
the maps, so `ebpflb service list --all` reads them here; the last error and sync counts help a
user see why a change did not land. One file per pin directory, written atomically."""
import json
import os
from typing import Any, Dict, Optional

STATUS_DIR = "/run/ebpflb/status"


def status_path(pin_dir: str) -> str:
    return os.path.join(STATUS_DIR, pin_dir.strip("/").replace("/", "_") + ".json")


def write_status(pin_dir: str, status: Dict[str, Any]) -> None:
    path = status_path(pin_dir)
    os.makedirs(STATUS_DIR, mode=0o755, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(status, f, indent=2)
    os.replace(tmp, path)


def read_status(pin_dir: str) -> Optional[Dict[str, Any]]:
    try:
        with open(status_path(pin_dir)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def remove_status(pin_dir: str) -> bool:
    """Removes the status file of a pin directory; True when there was one."""
    try:
        os.unlink(status_path(pin_dir))
    except FileNotFoundError:
        return False
    return True
