"""Packing document streams into samples bounded by global positions and a token cap.

A sample holds whole documents in order; a document that does not fit in what is left of a
sample starts the next one (the rest is padding), and a document longer than a whole sample is cut
into full samples at patch starts, so cutting never changes how the remainder is patched.
Global positions are patches for LST (``patch_size`` p) and tokens for the baseline (p = 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class PackingConfig:
    seq_length: int
    max_tokens: int
    patch_size: int = 4

    def __post_init__(self) -> None:
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be positive, got {self.patch_size}")
        # a continued document reopens with BOS: a sample must hold it and at least one more token,
        # or cutting a long document would never advance
        if self.seq_length < 2 or self.max_tokens < 2:
            raise ValueError(f"seq_length and max_tokens must be at least 2, got {self.seq_length} and {self.max_tokens}")


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

    This is the static strategy of ``megatron_lst.patching`` with the marker not folded and the
    paper's boundaries, counted without building the patches, so it also works on document pieces
    that do not start with BOS; ``tests/data/test_packed_datasets.py`` checks it against the C++
    kernel. Folding ``<s>`` (the default for static rows) and causal boundaries only merge such
    patches, so the count is the budget every static run fits in.
    """
    return int(patch_start_mask(sample["is_speech"], patch_size).sum())


@dataclass
class PackedPlan:
    """Samples as pieces ``(document position in the epoch order, first token, end token)``.

    ``pack_documents`` also records each sample's token count (the BOS that reopens a continued
    document included) and global positions, so that batching can read them without the sample.
    """

    piece_documents: np.ndarray
    piece_starts: np.ndarray
    piece_ends: np.ndarray
    sample_offsets: np.ndarray
    positions_used: int
    positions_total: int
    sample_num_tokens: np.ndarray | None = None
    sample_num_positions: np.ndarray | None = None

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


def _next_piece(cumulative_positions: np.ndarray, patch_starts: np.ndarray, offset: int, used_positions: int,
                used_tokens: int, config: PackingConfig) -> Optional[tuple[int, int]]:
    """The piece of a document from token ``offset`` that goes into the current sample: (its end,
    the positions it takes), or None when it does not fit and the sample must be closed first.

    The whole rest of the document goes in when both budgets hold; a document that does not fit
    an empty sample is cut at a patch start (``_cut_end``). A piece that continues a cut document
    always opens a sample, with one BOS the dataset prepends (LST's first patch must be BOS
    alone): its token and position are reserved.
    """
    length = len(patch_starts)
    opening = 1 if offset else 0
    base = int(cumulative_positions[offset - 1]) if offset else 0
    positions = int(cumulative_positions[-1]) - base + opening
    if used_positions + positions <= config.seq_length and used_tokens + length - offset + opening <= config.max_tokens:
        return length, positions
    if used_tokens:
        return None
    end = _cut_end(cumulative_positions, patch_starts, offset, config, reserved=opening)
    return end, int(cumulative_positions[end - 1]) - base + opening


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
            piece = _next_piece(cumulative, starts, start, used_positions, used_tokens, config)
            if piece is None:
                close_sample()
                continue
            end, positions = piece
            opening = 1 if start else 0
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


def pack_documents(num_tokens: np.ndarray, num_positions: np.ndarray, speech_mask: Callable[[int], np.ndarray],
                   config: PackingConfig) -> PackedPlan:
    """``plan_packing``'s plan, found one sample at a time instead of one document at a time.

    ``num_tokens`` / ``num_positions`` are each document's stream length and static-patch count
    (what ``plan_packing`` derives from the mask); ``speech_mask(i)`` gives document i's mask and is
    called only for a document that must be cut (longer than an empty sample). Greedy in-order
    packing adds whole documents while both budgets hold, so the documents a sample takes are the
    longest run whose cumulative tokens and positions fit: two binary searches per sample.
    """
    num_tokens = np.asarray(num_tokens, dtype=np.int64)
    num_positions = np.asarray(num_positions, dtype=np.int64)
    cumulative_tokens = np.concatenate(([0], np.cumsum(num_tokens)))
    cumulative_positions = np.concatenate(([0], np.cumsum(num_positions)))
    seq_length, max_tokens = config.seq_length, config.max_tokens
    documents: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    sample_offsets, sample_tokens, sample_positions = [0], [], []
    pieces = used_positions = used_tokens = sample_patches = total_used = 0
    position, offset, count = 0, 0, len(num_tokens)
    cut: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None  # (position, mask, starts, cumulative)

    def close_sample() -> None:
        nonlocal used_positions, used_tokens, sample_patches
        sample_offsets.append(pieces)
        sample_tokens.append(used_tokens)
        sample_positions.append(sample_patches)
        used_positions = used_tokens = sample_patches = 0

    while position < count:
        if offset == 0:
            fits = min(
                int(np.searchsorted(cumulative_positions, cumulative_positions[position] + seq_length - used_positions, "right")),
                int(np.searchsorted(cumulative_tokens, cumulative_tokens[position] + max_tokens - used_tokens, "right")),
            ) - 1
            if fits > position:
                documents.append(np.arange(position, fits))
                starts.append(np.zeros(fits - position, dtype=np.int64))
                ends.append(num_tokens[position:fits])
                added = int(cumulative_positions[fits] - cumulative_positions[position])
                used_positions += added
                sample_patches += added
                total_used += added
                used_tokens += int(cumulative_tokens[fits] - cumulative_tokens[position])
                pieces += fits - position
                position = fits
                continue
            if used_tokens:
                close_sample()
                continue
        # the document does not fit an empty sample (or continues a cut one): plan_packing's steps
        if cut is None or cut[0] != position:
            mask = np.asarray(speech_mask(position), dtype=bool)
            if len(mask) != num_tokens[position]:
                raise ValueError(f"document at position {position}: mask of {len(mask)} tokens, "
                                 f"num_tokens says {num_tokens[position]}")
            patch_starts = patch_start_mask(mask, config.patch_size)
            cut = (position, mask, patch_starts, np.cumsum(patch_starts))
        _, mask, patch_starts, cumulative = cut
        piece = _next_piece(cumulative, patch_starts, offset, used_positions, used_tokens, config)
        if piece is None:
            close_sample()
            continue
        end, positions = piece
        length, opening = len(mask), 1 if offset else 0
        documents.append(np.array([position]))
        starts.append(np.array([offset]))
        ends.append(np.array([end]))
        pieces += 1
        used_positions += positions
        total_used += positions
        used_tokens += end - offset + opening
        # what the sample itself counts: its piece reopens with BOS, so runs restart at the cut
        sample_patches += opening + int(patch_start_mask(mask[offset:end], config.patch_size).sum())
        if end < length:
            close_sample()
            offset = end
        else:
            position, offset = position + 1, 0
    if used_tokens:
        close_sample()
    num_samples = len(sample_offsets) - 1

    def joined(chunks: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, dtype=np.int64)

    return PackedPlan(
        joined(documents), joined(starts), joined(ends), np.asarray(sample_offsets, dtype=np.int64),
        positions_used=total_used,
        positions_total=num_samples * seq_length,
        sample_num_tokens=np.asarray(sample_tokens, dtype=np.int64),
        sample_num_positions=np.asarray(sample_positions, dtype=np.int64),
    )
