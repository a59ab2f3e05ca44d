"""Maglev consistent hashing, as the control plane sees it: the Cython build (ebpflb._maglev) when
it is importable, else the pure-Python twin (ebpflb._maglev_py). Set EBPFLB_PURE_PYTHON=1 to force
the twin (tests run both).

Sits in the pure core between the model and the plan: `maglev_table(names, m, weights)` turns a
service's backends (names as b"10.244.0.11:8080") into the M-slot selection table the plan writes
to the data plane, which picks `table[flow_hash % M]`. Both builds give identical tables.
"""
import os

from . import _maglev_py
from ._maglev_py import (DEFAULT_M, MAX_M, MAX_WEIGHT, MIN_M, SEED_OFFSET, SEED_SKIP,
                         check_inputs)

_impl = _maglev_py
IMPLEMENTATION = "python"
if os.environ.get("EBPFLB_PURE_PYTHON") != "1":
    try:
        from . import _maglev as _impl  # type: ignore[no-redef]
        IMPLEMENTATION = "cython"
    except ImportError:
        _impl = _maglev_py

murmur3_32 = _impl.murmur3_32
is_prime = _impl.is_prime
validate_m = _impl.validate_m
maglev_table = _impl.maglev_table

__all__ = ["DEFAULT_M", "MIN_M", "MAX_M", "MAX_WEIGHT", "SEED_OFFSET", "SEED_SKIP",
           "IMPLEMENTATION", "murmur3_32", "is_prime", "validate_m", "check_inputs",
           "maglev_table"]
