"""Benchmarks of bridge against plain RQ: ``python benchmarks/run.py --help``."""
