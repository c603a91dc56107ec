"""ASR and TTS metrics (docs/method.md §6: ASR WER, TTS error rate of a recogniser on generated speech).

- ``word_error_rate``: word-level edit distance over the reference word count, after lower-casing
  and dropping punctuation (transcripts and ASR outputs differ in nothing else that matters here).
- ``unit_error_rate``: the same over unit sequences against the reference units of the sentence;
  by default runs of a repeated unit are collapsed first, so a slower or faster but otherwise
  identical rendition is not counted as errors.
- TTS round trip (tools/evaluate_asr_tts.py ``--asr-checkpoint``): the project's own ASR model
  transcribes the TTS model's units (no external recogniser can be downloaded here), and
  ``word_error_rate`` scores that against the text the TTS model was given.
- ``generation_cost``: global-model steps and wall time per second of generated speech (25 units/s):
  the LST runs its global model once per patch, the baseline once per unit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

try:
    from rapidfuzz.distance import Levenshtein as _levenshtein
except ImportError:  # optional: the pure-Python programme below gives the same distances
    _levenshtein = None

UNIT_RATE = 25.0


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1).

    rapidfuzz's C++ implementation when it is installed (about 4 ms for a 1,000-unit pair, against
    about 700 ms in Python); items are compared by value, so words and unit ids both work.
    """
    if _levenshtein is not None:
        return int(_levenshtein.distance(list(reference), list(hypothesis)))
    return python_edit_distance(reference, hypothesis)


def python_edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """The dynamic programme itself, O(len(hypothesis)) memory: the reference ``edit_distance``
    is tested against, and its fallback without rapidfuzz."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_item in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp_item in enumerate(hypothesis, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_item != hyp_item))
        previous = current
    return previous[-1]


def normalise_words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: total word edits / total reference words."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    edits = words = 0
    for reference, hypothesis in zip(references, hypotheses):
        reference_words = normalise_words(reference)
        edits += edit_distance(reference_words, normalise_words(hypothesis))
        words += len(reference_words)
    return edits / max(words, 1)


def collapse_repeats(units: Sequence[int]) -> list[int]:
    units = [int(u) for u in units]
    return [u for index, u in enumerate(units) if index == 0 or u != units[index - 1]]


def unit_error_rate(references: Sequence[Sequence[int]], hypotheses: Sequence[Sequence[int]],
                    collapse: bool = True) -> float:
    """Corpus unit error rate: total unit edits / total reference units."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    edits = total = 0
    for reference, hypothesis in zip(references, hypotheses):
        if collapse:
            reference, hypothesis = collapse_repeats(reference), collapse_repeats(hypothesis)
        edits += edit_distance(list(reference), list(hypothesis))
        total += len(reference)
    return edits / max(total, 1)


@dataclass(frozen=True)
class GenerationCost:
    speech_seconds: float
    global_steps_per_second: float
    wall_seconds_per_second: float


def generation_cost(units_per_row: Sequence[int], global_steps_per_row: Sequence[int],
                    wall_seconds: float) -> GenerationCost:
    """Cost per second of generated speech, from per-row unit and global-step counts."""
    speech_seconds = sum(units_per_row) / UNIT_RATE
    denominator = max(speech_seconds, 1e-9)
    return GenerationCost(speech_seconds, sum(global_steps_per_row) / denominator, wall_seconds / denominator)


def generation_cost_of(runs: Sequence, vocab) -> GenerationCost:
    """``generation_cost`` over ``Generation`` results (inference/generate.py)."""
    units = [int(np.sum(vocab.is_unit(row))) if row else 0 for run in runs for row in run.tokens]
    steps = [steps for run in runs for steps in run.generated_global_positions]
    return generation_cost(units, steps, sum(run.seconds for run in runs))

