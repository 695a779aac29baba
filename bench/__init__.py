"""Benchmarks that print side-by-side ratios against what users would otherwise run.

``python -m bench`` (``make bench``) runs every ``bench_*.py`` module; see ``bench/__main__.py``.
"""
