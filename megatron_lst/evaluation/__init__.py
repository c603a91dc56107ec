"""Evaluation: story-completion benchmarks (format, builders) and likelihood scoring (LST.md §6)."""
