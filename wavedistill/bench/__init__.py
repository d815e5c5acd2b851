"""Benchmarks: timing, memory, FLOP counts and the benchmark command."""
