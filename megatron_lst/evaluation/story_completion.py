"""Run a story-completion benchmark over the requested directions and report accuracies.

Directions whose fields are missing from the benchmark are skipped with the reason, so one call
works on a text-only file (T->T only) and on a synthesised one (all four directions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from megatron_lst.evaluation.items import Item
from megatron_lst.evaluation.patching_choice import PatchingChoice
from megatron_lst.evaluation.scoring import (DIRECTIONS, SCORES, DirectionResult,
                                             SequenceBuilder, TokenScorer, score_direction, skip_reason)


@dataclass
class BenchmarkReport:
    results: list[DirectionResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    # how the model was patched (tools/evaluate.py --patching); every direction of one report shares it
    patching: Optional[PatchingChoice] = None

    def to_dict(self) -> dict:
        results = {r.direction.label: r.to_dict() for r in self.results}
        if self.patching is None:
            return {"results": results, "skipped": self.skipped}
        for entry in results.values():
            entry["patching"] = self.patching.patching
        return {"patching": self.patching.to_dict(), "results": results, "skipped": self.skipped}


def evaluate_items(items: Sequence[Item], builder: SequenceBuilder, scorer: TokenScorer,
                   directions: Sequence[str] = ("ss", "tt", "st", "ts"),
                   batch_size: int = 16, progress: bool = False) -> BenchmarkReport:
    """Every requested direction the items support. An item whose ending outgrows the model's
    length is skipped and counted in its direction rather than truncated (a cut ending is a
    different ending); a direction is skipped as a whole only when none of its items fits."""
    report = BenchmarkReport()
    for name in directions:
        if name not in DIRECTIONS:
            raise ValueError(f"unknown direction {name!r}: choose from {sorted(DIRECTIONS)}")
        direction = DIRECTIONS[name]
        reason = skip_reason(items, direction)
        if reason is not None:
            report.skipped[direction.label] = reason
            continue
        result = score_direction(items, direction, builder, scorer, batch_size, progress)
        if result.scored == 0:
            report.skipped[direction.label] = (f"none of the {len(items)} items fits in {builder.max_length} "
                                               f"{builder.length_unit} (raise --max-length)")
        else:
            report.results.append(result)
    return report


def format_report(report: BenchmarkReport) -> str:
    """A plain-text table: accuracy in % with its 95% Wilson interval, one row per direction."""
    patched = report.patching is not None
    headers = ["direction", "items", "skipped"] + (["patching"] if patched else []) + [f"{name} acc% [95% CI]" for name in SCORES]
    rows = []
    for result in report.results:
        cells = [result.direction.label, str(result.scored), str(len(result.skipped))]
        if patched:
            cells.append(report.patching.patching)
        for name in SCORES:
            accuracy = result.accuracy[name]
            low, high = accuracy.interval
            cells.append(f"{100 * accuracy.value:5.1f} [{100 * low:4.1f}, {100 * high:4.1f}]")
        rows.append(cells)
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in [headers, *rows]]
    lines.extend(f"{label} skipped: {reason}" for label, reason in report.skipped.items())
    lines.extend(f"{result.direction.label}: {len(result.skipped)} items do not fit the model's length and were "
                 f"skipped, e.g. {result.skipped[0]} (raise --max-length)" for result in report.results if result.skipped)
    if patched:
        lines.append(f"patching: {report.patching.patching} ({report.patching.reason})")
    lines.append("scores: sum/mean = ending log-prob summed/per speech unit or text token (higher wins); "
                 "seq_nll = mean NLL of the whole sequence (lower wins)")
    return "\n".join(lines)
