"""The CLI surface: every command answers --help with what it does; bad arguments are refused
with the option named. (Commands that touch the kernel are tested in the bpf and lab tiers.)"""
import pytest
from click.testing import CliRunner

from ebpflb.cli import main

pytestmark = pytest.mark.unit

COMMANDS = [[], ["agent"], ["sync"], ["service"], ["service", "list"], ["cleanup"], ["lab"],
            ["lab", "up"], ["lab", "down"], ["lab", "status"], ["lab", "add-pod"],
            ["lab", "del-pod"], ["status"], ["doctor"], ["version"], ["ct", "flush"],
            ["completion"], ["lab", "conformance"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "ebpflb")
def test_help(cmd):
    result = CliRunner().invoke(main, [*cmd, "--help"], prog_name="ebpflb")
    assert result.exit_code == 0, result.output
    assert "Usage: ebpflb" in result.output
    # The first line of the docstring is there: a command says what it does.
    assert len(result.output.split("\n\n")[1].strip()) > 10


@pytest.mark.parametrize("args,message", [
    (["agent", "--manifests", "/nonexistent"], "'--manifests'"),
    (["agent", "--manifests", ".", "--on-exit", "maybe"], "'--on-exit'"),
    (["agent", "--manifests", ".", "--ct-max", "10"], "'--ct-max'"),
    (["service", "list", "-o", "xml"], "'-o' / '--output'"),
    (["lab", "up", "--pods", "0"], "'--pods'"),
    (["agent", "--manifests", ".", "--node-mode", "bpf"], "'--node-mode'"),
    (["agent", "--manifests", ".", "--xdp-mode", "offload"], "'--xdp-mode'"),
    (["agent", "--manifests", ".", "--snat-ports", "61000"], "for --snat-ports: '61000' is not MIN-MAX"),
    (["agent", "--manifests", ".", "--snat-ports", "80-90"], "SNAT ports 80-90"),
    (["agent", "--manifests", ".", "--nodeport-addresses", "10.0.0.0/33"], "for --nodeport-addresses"),
    (["agent", "--manifests", ".", "--healthcheck-address", "eth0"], "for --healthcheck-address"),
    (["agent", "--manifests", ".", "--socket-lb", "pods"], "'--socket-lb'"),
    (["agent", "--manifests", ".", "--cgroup", "/nonexistent"], "--cgroup /nonexistent: not a directory"),
    (["agent", "--manifests", ".", "--cgroup", "/proc"], "--cgroup /proc: not a cgroup v2 directory"),
    (["cleanup", "--cgroup", "/nonexistent"], "--cgroup /nonexistent: not a directory"),
    (["status", "-o", "csv"], "'-o' / '--output'"),
    # Address errors say the form and the range.
    (["agent", "--manifests", ".", "--metrics-address", "127.0.0.1:99999"],
     "--metrics-address: '127.0.0.1:99999' is not HOST:PORT (HOST an IP address or a name, an "
     "IPv6 address in brackets as in [::1]:9402; PORT 0-65535): port '99999' is not 0-65535"),
    (["agent", "--manifests", ".", "--health-address", "::1:9403"],
     "an IPv6 address goes in brackets: [::1]:9403"),
    (["agent", "--manifests", ".", "--healthz-bind-address", "10.1.2:10256"],
     "'10.1.2' is not an IPv4 address"),
    (["agent", "--manifests", ".", "--nodeport-addresses", "primary", "--nodeport-addresses",
      "10.0.0.0/8"], "'primary' cannot be combined with CIDRs"),
])
def test_bad_arguments_name_the_option(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize("command", [["service", "list"], ["status"], ["stats"], ["ct", "list"],
                                     ["cleanup", "--yes"], ["agent", "--manifests", "."]])
def test_pin_dir_outside_bpffs_is_refused(tmp_path, command):
    """Every command refuses it as a usage error naming the option, before doing anything (status
    used to fail with a traceback)."""
    result = CliRunner().invoke(main, command + ["--pin-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--pin-dir'" in result.output
    assert "must be under /sys/fs/bpf" in result.output


def test_conformance_list_and_a_scenario_matching_nothing():
    r = CliRunner().invoke(main, ["lab", "conformance", "--list", "--scenario", "affinity"],
                           prog_name="ebpflb")
    assert r.exit_code == 0 and "session affinity" in r.output
    assert all("affinity" in line for line in r.output.strip().splitlines())
    r = CliRunner().invoke(main, ["lab", "conformance", "--scenario", "nosuch"], prog_name="ebpflb")
    assert r.exit_code == 2 and "'nosuch' matches no scenario" in r.output and "--list" in r.output


@pytest.mark.parametrize("shell,marker", [("bash", "_EBPFLB_COMPLETE=bash_complete"),
                                          ("zsh", "#compdef ebpflb"), ("fish", "complete")])
def test_completion_scripts(shell, marker):
    r = CliRunner().invoke(main, ["completion", shell], prog_name="ebpflb")
    assert r.exit_code == 0 and marker in r.output


def test_os_errors_read_without_python_forms():
    """No "[Errno 2]" in what the CLI prints for a failed system call."""
    from ebpflb.cli.common import _os_error_text

    assert _os_error_text(FileNotFoundError(2, "No such file or directory", "/etc/x")) == \
        "/etc/x: No such file or directory"
    assert "Errno" not in _os_error_text(PermissionError(13, "Permission denied"))
