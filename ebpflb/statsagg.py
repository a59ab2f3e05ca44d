"""Per-CPU counter aggregation, as `ebpflb stats` and the Prometheus endpoint use it: the Cython
build when it is importable, else the pure-Python twin. Set EBPFLB_PURE_PYTHON=1 to force the twin
(tests run both).

The data plane counts per CPU (no atomics on the packet path); reading such a map gives one flat
buffer of native-endian uint64, for each key, for each possible CPU, n_fields counters.
  sum_per_cpu(values, n_keys, n_cpus, n_fields) -> array('Q') of per-key totals (mod 2**64)
  rates(prev, cur, seconds) -> per-second rates; a counter that went backwards restarts from 0
  nonzero_keys(summed, n_fields) -> keys with any non-zero counter (skip empty array slots)
"""
import os

from . import _statsagg_py

if os.environ.get("EBPFLB_PURE_PYTHON") == "1":
    sum_per_cpu = _statsagg_py.sum_per_cpu
    rates = _statsagg_py.rates
    nonzero_keys = _statsagg_py.nonzero_keys
    IMPLEMENTATION = "python"
else:
    try:
        from ._statsagg import nonzero_keys, rates, sum_per_cpu  # type: ignore[no-redef]
        IMPLEMENTATION = "cython"
    except ImportError:
        sum_per_cpu = _statsagg_py.sum_per_cpu
        rates = _statsagg_py.rates
        nonzero_keys = _statsagg_py.nonzero_keys
        IMPLEMENTATION = "python"

__all__ = ["sum_per_cpu", "rates", "nonzero_keys", "IMPLEMENTATION"]
