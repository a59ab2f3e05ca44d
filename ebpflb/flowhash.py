"""The flow hash, as the control plane sees it: the Cython build when it is importable, else the
pure-Python twin. Set EBPFLB_PURE_PYTHON=1 to force the twin (tests run both).

The data plane (bpf/flow_hash.h) computes the same value with FLOW_HASH_SEED, which the loader
passes from here, so the control plane can predict every backend choice.
"""
import os

from . import _flowhash_py

FLOW_HASH_SEED = 0x5EED1B0B

if os.environ.get("EBPFLB_PURE_PYTHON") == "1":
    flow_hash = _flowhash_py.flow_hash
    IMPLEMENTATION = "python"
else:
    try:
        from ._flowhash import flow_hash  # type: ignore[no-redef]
        IMPLEMENTATION = "cython"
    except ImportError:
        flow_hash = _flowhash_py.flow_hash
        IMPLEMENTATION = "python"

sock_hash = _flowhash_py.sock_hash

__all__ = ["flow_hash", "sock_hash", "FLOW_HASH_SEED", "IMPLEMENTATION"]
