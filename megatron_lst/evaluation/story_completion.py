"""Run a story-completion benchmark over the requested directions and report accuracies.

Directions whose fields are missing from the benchmark are skipped with the reason, so one call
works on a text-only file (T->T only) and on a synthesised one (all four directions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from megatron_lst.evaluation.items import Item
from megatron_lst.evaluation.scoring import (DIRECTIONS, SCORES, DirectionResult, EndingTooLong,
                                             SequenceBuilder, TokenScorer, score_direction, skip_reason)


@dataclass
class BenchmarkReport:
    results: list[DirectionResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"results": {r.direction.label: r.to_dict() for r in self.results},
                "skipped": self.skipped}


def evaluate_items(items: Sequence[Item], builder: SequenceBuilder, scorer: TokenScorer,
                   directions: Sequence[str] = ("ss", "tt", "st", "ts"),
                   batch_size: int = 16) -> BenchmarkReport:
    """Every requested direction the items support; one whose endings outgrow the model's length
    is skipped with the reason rather than truncated (a cut ending is a different ending)."""
    report = BenchmarkReport()
    for name in directions:
        if name not in DIRECTIONS:
            raise ValueError(f"unknown direction {name!r}: choose from {sorted(DIRECTIONS)}")
        direction = DIRECTIONS[name]
        reason = skip_reason(items, direction)
        if reason is not None:
            report.skipped[direction.label] = reason
            continue
        try:
            report.results.append(score_direction(items, direction, builder, scorer, batch_size))
        except EndingTooLong as error:
            report.skipped[direction.label] = f"{error} (raise --max-length)"
    return report


def format_report(report: BenchmarkReport) -> str:
    """A plain-text table: accuracy in % with its 95% Wilson interval, one row per direction."""
    headers = ["direction", "items"] + [f"{name} acc% [95% CI]" for name in SCORES]
    rows = []
    for result in report.results:
        cells = [result.direction.label, str(next(iter(result.accuracy.values())).total)]
        for name in SCORES:
            accuracy = result.accuracy[name]
            low, high = accuracy.interval
            cells.append(f"{100 * accuracy.value:5.1f} [{100 * low:4.1f}, {100 * high:4.1f}]")
        rows.append(cells)
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in [headers, *rows]]
    lines.extend(f"{label} skipped: {reason}" for label, reason in report.skipped.items())
    lines.append("scores: sum/mean = ending log-prob summed/averaged (higher wins); "
                 "seq_nll = mean NLL of the whole sequence (lower wins)")
    return "\n".join(lines)
