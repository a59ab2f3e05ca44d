"""The `ebpflb` command line. Thin by design: each command parses its options, calls a library
function for the data and prints it through common.emit (a table for people, JSON or YAML for
tools); the work lives in the modules it calls.

This package holds the root group `main` (the console script `ebpflb = ebpflb.cli:main`, and
`python -m ebpflb.cli`, see __main__.py) and one module per command group:
- common.py: what several commands share: options, opening the pins, checks, output (emit);
- agent_cmd.py: `agent` and `sync`;
- service_cmd.py: `service list` and `service get`;
- stats_cmd.py: `stats`;
- ct_cmd.py: `ct list` and `ct flush`;
- explain_cmd.py: `explain`;
- cleanup_cmd.py: `cleanup`;
- takeover_cmd.py: `takeover`;
- gateway_cmd.py: `gateway list`;
- status_cmd.py: `status`, `doctor`, `version` and `completion`;
- lab_cmd.py: `lab up`, `down`, `status`, `conformance`, `add-pod` and `del-pod`.
The modules are named *_cmd so that `ebpflb.cli.agent`, `ebpflb.cli.status`... stay the commands
and none reads like ebpflb.agent or ebpflb.status. Heavy modules (bcc, pyroute2, kubernetes) are
imported inside the commands, so `ebpflb --help` stays fast."""
import click

from .. import __version__
from .agent_cmd import agent, sync
from .cleanup_cmd import cleanup
from .common import _add_log_options
from .ct_cmd import ct
from .explain_cmd import explain
from .gateway_cmd import gateway
from .lab_cmd import lab
from .service_cmd import service
from .stats_cmd import stats
from .takeover_cmd import takeover
from .status_cmd import completion, doctor, status, version

__all__ = ["main", "agent", "sync", "service", "stats", "ct", "explain", "cleanup", "takeover",
           "gateway", "status", "doctor", "completion", "version", "lab"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ebpflb")
def main() -> None:
    """ebpflb: an eBPF load balancer for Kubernetes Services (a kube-proxy replacement)."""
    from .. import logs

    logs.setup()


for _command in (agent, sync, service, stats, ct, explain, cleanup, takeover, gateway, status,
                 doctor, completion, version, lab):
    main.add_command(_command)
_add_log_options(main)  # --log-level and --log-format on the group and on every command
