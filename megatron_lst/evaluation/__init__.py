"""Evaluation: story-completion benchmarks (format, builders) and likelihood scoring (docs/method.md §6)."""
