"""What every benchmark shares: the machine description printed with its figures, median and
spread of samples, and writing its own section of docs/benchmarks.md (other sections untouched)."""
import os
import platform
import statistics
import struct
from pathlib import Path
from typing import Dict, Sequence

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
RESULTS = Path(__file__).resolve().parent / "results"


def machine(**extra: object) -> Dict[str, object]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        **extra,
    }


def summary(samples: Sequence[float]) -> Dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "n": len(samples)}


def write_section(title: str, text: str) -> None:
    """Replaces the section headed `title` ("## ...") in docs/benchmarks.md, or appends it. The
    file is read right before it is written: other benchmarks write their own sections."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    current = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    start = current.find(title + "\n")
    if start < 0:
        new = current.rstrip("\n") + "\n\n" + text
    else:
        end = current.find("\n## ", start + len(title))
        tail = current[end + 1:] if end >= 0 else ""
        new = current[:start] + text + ("\n" + tail if tail else "")
    DOC.write_text(new.rstrip("\n") + "\n")


def inet_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`, for the packets the benchmarks build."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
