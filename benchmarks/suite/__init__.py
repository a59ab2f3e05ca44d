"""Side-by-side benchmark suite (issue 8): ebpflb (TC, and socket LB with its cgroup hooks)
against kube-proxy's iptables and nftables shapes and against direct-to-pod, at 100, 1,000 and
10,000 Services, in one run, interleaved.

  modes.py   the compared modes: load a scale's configuration, switch it on and off
  run.py     the run: lab per scale, traffic, programming time, memory -> results JSON
  report.py  the sections of docs/benchmarks.md and the plots in docs/plots/

    .venv/bin/python -m benchmarks.suite   (root; `make bench` runs it)
"""
