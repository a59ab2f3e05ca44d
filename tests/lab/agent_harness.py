"""The lab tests' names for the agent runner, which lives in the package because
`ebpflb lab conformance` uses it too."""
from ebpflb.lab.agent_runner import (DEFAULT_ENDPOINTS, ECHO_VIP, WEB_VIP, Endpoint,  # noqa: F401
                                     RunningAgent, ebpflb, force_cleanup, manifest, wait_until)
