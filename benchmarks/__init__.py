"""Benchmarks of celltype; each module runs as ``python -m benchmarks.<name>``."""
