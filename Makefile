# The two commands a newcomer runs (as root on Debian 12): `make demo` and `make test`.
# Each does the whole set-up first (scripts/setup.sh, idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest

.PHONY: setup demo test test-unit test-bpf test-lab bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

# Two workers, a test file each at a time: lab tests wait on traffic and agents more than they
# compute, and every test names its namespaces, pins and cgroups uniquely.
# benchmarks/tests: the benchmarks' own checks (tests/ never imports benchmarks/).
test: setup
	$(PYTEST) -n 2 --dist loadfile -m "unit or bpf or lab or kube" tests benchmarks/tests

test-unit: setup
	$(PYTEST) -m unit tests benchmarks/tests

test-bpf: setup
	$(PYTEST) -m bpf tests

test-lab: setup
	$(PYTEST) -m lab tests

# Benchmarks write benchmarks/results/*.json and their sections of docs/benchmarks.md.
bench: setup
	$(VENV)/bin/pip install -q -r requirements-bench.txt
	$(PY) -m benchmarks.datapath
	$(PY) -m benchmarks.sock_connect
	$(PY) -m benchmarks.programming
	$(PY) -m benchmarks.maglev
	$(PY) -m benchmarks.statsagg
	$(PY) -m benchmarks.control_plane
	$(PY) -m benchmarks.suite
	$(PY) -m benchmarks.nodeport

clean:
	rm -rf build *.egg-info ebpflb/*.so ext/*.c .pytest_cache
