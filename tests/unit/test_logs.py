"""Logging as every command does it (ebpflb.logs): --log-level and --log-format on the command or
before it, or from the environment, case-insensitive; one line per event in both formats, a
multi-line message and a traceback included."""
import json
import logging

import pytest
from click.testing import CliRunner

from ebpflb import logs
from ebpflb.cli import main

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def record(msg, exc=False):
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys
            exc_info = sys.exc_info()
    return logging.LogRecord("ebpflb.agent", logging.ERROR, __file__, 1, msg, (), exc_info)


def test_text_is_one_line_per_event():
    text = logs.TextFormatter().format(record("Service a/b refused:\n  spec.ports[0]: bad\n", True))
    assert "\n" not in text
    assert "ERROR ebpflb.agent: Service a/b refused: |   spec.ports[0]: bad | Traceback" in text
    assert text.endswith("ValueError: boom")


def test_json_is_one_object_per_line():
    line = logs.JsonFormatter().format(record("two\nlines", True))
    assert "\n" not in line
    doc = json.loads(line)
    assert (doc["level"], doc["logger"], doc["msg"]) == ("error", "ebpflb.agent", "two\nlines")
    assert doc["time"].endswith("Z") and "ValueError: boom" in doc["exc"]


@pytest.mark.parametrize("args,env,level,formatter", [
    (["--log-level", "DEBUG", "version"], {}, logging.DEBUG, logs.TextFormatter),
    (["version", "--log-level", "Warning"], {}, logging.WARNING, logs.TextFormatter),
    (["version", "--log-format", "JSON"], {}, logging.INFO, logs.JsonFormatter),
    (["version"], {"EBPFLB_LOG_LEVEL": "error", "EBPFLB_LOG_FORMAT": "json"}, logging.ERROR,
     logs.JsonFormatter),
    (["lab", "--log-level", "debug", "status", "--help"], {}, logging.DEBUG, logs.TextFormatter),
])
def test_log_options_on_any_command(args, env, level, formatter):
    for h in [h for h in logging.getLogger().handlers if getattr(h, "_ebpflb", False)]:
        logging.getLogger().removeHandler(h)
    result = CliRunner().invoke(main, args, env=env, prog_name="ebpflb")
    assert result.exit_code == 0, result.output
    root = logging.getLogger()
    assert root.level == level
    (ours,) = [h for h in root.handlers if getattr(h, "_ebpflb", False)]
    assert isinstance(ours.formatter, formatter)


def test_a_bad_level_names_the_option():
    result = CliRunner().invoke(main, ["version", "--log-level", "loud"], prog_name="ebpflb")
    assert result.exit_code == 2 and "'--log-level'" in result.output
