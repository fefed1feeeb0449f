"""Throughput and memory benchmarks for xpnet (not a test): run ``python benchmarks/bench.py --help``."""
