"""Benchmarks of mmemotion: `python benchmarks/run.py [--quick]` (see benchmarks/README.md)."""
