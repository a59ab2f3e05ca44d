"""The benchmarks (`make bench`), and their own checks in benchmarks/tests."""
