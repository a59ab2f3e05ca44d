"""How every ebpflb command logs (an edge beside the pipeline): one line per event, as text or
JSON, at a level given by `--log-level` (on the command or before it) or `EBPFLB_LOG_LEVEL`.
A message that spans lines (a refused object with one line per field) or carries a traceback
stays one line, so log collectors keep each event whole."""
import json
import logging
import sys
import time
from typing import Optional

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
LEVEL_ENV = "EBPFLB_LOG_LEVEL"
FORMAT_ENV = "EBPFLB_LOG_FORMAT"


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, continuation lines joined with " | "."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return " | ".join(line for line in super().format(record).splitlines() if line.strip())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, msg, and exc when there
    is a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup(level: Optional[str] = None, fmt: Optional[str] = None) -> None:
    """(Re)configures the root logger; None keeps what was set before (or the default)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_ebpflb", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._ebpflb = True  # type: ignore[attr-defined]
        handler.setFormatter(TextFormatter())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    if level is not None:
        root.setLevel(getattr(logging, level.upper()))
    if fmt is not None:
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
