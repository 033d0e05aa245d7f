"""Benchmark scripts that print numbers: ``python -m benchmarks.latency``, ``.throughput``."""
