"""Latency and throughput benchmarks."""
