"""Benchmarks: scripts that print tables and write JSON under benchmarks/results/. Not tests."""
