"""The lab: a Kubernetes-like topology of one or more nodes in network namespaces, for real traffic.

Where it sits: an edge of ebpflb, beside the data plane; `ebpflb lab up/down/status` and the
`lab` test tier use it. topology.py is pure (names, addresses), nsops.py is the kernel and process
plumbing, lab.py builds and removes labs, podserver.py is the workload inside each pod.

The public names are re-exported lazily: `python -m ebpflb.lab.podserver` imports this package
once per pod and must not pay for pyroute2.
"""
from typing import Any

_EXPORTS = {
    "DEFAULT_LAB": "topology", "PodSpec": "topology", "default_pods": "topology",
    "node_netns": "topology", "pod_netns": "topology", "host_ifname": "topology",
    "node_address": "topology", "ext_netns": "topology", "underlay_netns": "topology",
    "EXT_NETNS": "topology", "EXT_ADDRESS": "topology", "MAX_NODES": "topology",
    "HTTP_PORT": "topology", "UDP_ECHO_PORT": "topology", "POD_GATEWAY": "topology",
    "Lab": "lab", "lab_up": "lab", "lab_down": "lab", "lab_status": "lab", "get_lab": "lab",
    "add_pod": "lab", "del_pod": "lab", "run_in_pod": "lab", "run_on_node": "lab", "run_in_ext": "lab", "in_netns": "lab",
    "LabError": "lab", "LabConfigError": "lab", "LabExistsError": "lab", "LabNotFoundError": "lab",
}

__all__ = sorted(_EXPORTS)


def __getattr__(attr: str) -> Any:
    module = _EXPORTS.get(attr)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
