"""Packing document streams into samples bounded by global positions and a token cap.

A sample holds whole documents in order; a document that does not fit in what is left of a
sample starts the next one (the rest is padding), and a document longer than a whole sample is cut
into full samples at patch starts, so cutting never changes how the remainder is patched.
Global positions are patches for LST (``patch_size`` p) and tokens for the baseline (p = 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np


@dataclass(frozen=True)
class PackingConfig:
    seq_length: int
    max_tokens: int
    patch_size: int = 4

    def __post_init__(self) -> None:
        if self.seq_length < 1 or self.max_tokens < 1 or self.patch_size < 1:
            raise ValueError("seq_length, max_tokens and patch_size must be positive")


def patch_start_mask(is_speech: np.ndarray, patch_size: int) -> np.ndarray:
    """True where static patching opens a patch: every non-speech token, every p-th unit of a run."""
    is_speech = np.asarray(is_speech, dtype=bool)
    if is_speech.size == 0:
        return is_speech.copy()
    index = np.arange(is_speech.size)
    run_starts = np.flatnonzero(is_speech & ~np.concatenate(([False], is_speech[:-1])))
    run_start_of_token = np.zeros(is_speech.size, dtype=np.int64)
    run_start_of_token[run_starts] = run_starts
    run_start_of_token = np.maximum.accumulate(run_start_of_token)
    return ~is_speech | ((index - run_start_of_token) % patch_size == 0)


def count_global_positions(sample: Mapping[str, np.ndarray], patch_size: int) -> int:
    """Global positions of a sample under static patching: ceil(run/p) per speech run, 1 per other token.

    This is the static strategy of ``megatron_lst.patching`` (marker not folded) counted without
    building the patches, so it also works on document pieces that do not start with BOS;
    ``tests/data/test_packed_datasets.py`` checks it against the C++ kernel.
    """
    return int(patch_start_mask(sample["is_speech"], patch_size).sum())


@dataclass
class PackedPlan:
    """Samples as pieces ``(document position in the epoch order, first token, end token)``."""

    piece_documents: np.ndarray
    piece_starts: np.ndarray
    piece_ends: np.ndarray
    sample_offsets: np.ndarray
    positions_used: int
    positions_total: int

    def __len__(self) -> int:
        return len(self.sample_offsets) - 1

    def pieces(self, sample: int) -> list[tuple[int, int, int]]:
        first, last = self.sample_offsets[sample], self.sample_offsets[sample + 1]
        return list(zip(self.piece_documents[first:last].tolist(), self.piece_starts[first:last].tolist(),
                        self.piece_ends[first:last].tolist()))

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.positions_used / self.positions_total if self.positions_total else 0.0


def _cut_end(cumulative_positions: np.ndarray, starts: np.ndarray, start: int, config: PackingConfig,
             reserved: int = 0) -> int:
    """Largest end after ``start`` that fits an empty sample (less ``reserved`` slots) on a patch start."""
    base = cumulative_positions[start - 1] if start else 0
    end = min(start + config.max_tokens - reserved,
              int(np.searchsorted(cumulative_positions, base + config.seq_length - reserved, side="right")))
    while end < len(starts) and not starts[end] and end > start + 1:
        end -= 1
    return end


def plan_packing(is_speech_per_document: Iterable[np.ndarray], config: PackingConfig) -> PackedPlan:
    """Greedy in-order packing of the documents whose speech masks are given."""
    documents: list[int] = []
    piece_starts: list[int] = []
    piece_ends: list[int] = []
    sample_offsets = [0]
    used_positions = used_tokens = total_used = 0

    def close_sample() -> None:
        nonlocal used_positions, used_tokens
        sample_offsets.append(len(documents))
        used_positions = used_tokens = 0

    for position, is_speech in enumerate(is_speech_per_document):
        starts = patch_start_mask(is_speech, config.patch_size)
        cumulative = np.cumsum(starts)
        start, length = 0, len(starts)
        while start < length:
            # a piece that continues a cut document always opens a sample, with one BOS the
            # dataset prepends (LST's first patch must be BOS alone): reserve its token and position
            opening = 1 if start else 0
            positions = int(cumulative[-1] - (cumulative[start - 1] if start else 0)) + opening
            if used_positions + positions <= config.seq_length and used_tokens + length - start + opening <= config.max_tokens:
                end = length
            elif used_tokens:
                close_sample()
                continue
            else:
                end = _cut_end(cumulative, starts, start, config, reserved=opening)
                positions = int(cumulative[end - 1] - (cumulative[start - 1] if start else 0)) + opening
            documents.append(position)
            piece_starts.append(start)
            piece_ends.append(end)
            used_positions += positions
            used_tokens += end - start + opening
            total_used += positions
            start = end
            if end < length:
                close_sample()
    if used_tokens:
        close_sample()
    num_samples = len(sample_offsets) - 1
    return PackedPlan(
        np.asarray(documents, dtype=np.int64),
        np.asarray(piece_starts, dtype=np.int64),
        np.asarray(piece_ends, dtype=np.int64),
        np.asarray(sample_offsets, dtype=np.int64),
        positions_used=total_used,
        positions_total=num_samples * config.seq_length,
    )
