"""Reproducible benchmarks; each prints ratios against baselines measured in the same run.

Run them through ``scripts/bench`` (which prepares the environment), e.g. ``scripts/bench pairs``.
"""
