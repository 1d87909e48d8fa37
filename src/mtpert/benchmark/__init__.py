"""Benchmarks: score models on held-out groups and seeds."""

from mtpert.benchmark.holdout import run_holdout, seed_everything, summarize

__all__ = ["run_holdout", "seed_everything", "summarize"]
