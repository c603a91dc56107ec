"""Pure-numpy reference of every patching strategy: readable and slow, for tests and the bench.

This is the specification the C++ kernel (csrc/patching/patching.cpp) is held to. It is
written in a different order on purpose: first every token and speech span becomes raw
patches, then the ``<s>`` marker is folded and (``patch_boundary="causal"``) open patches take
the token that ends them, then the length cap splits long patches. The C++ kernel does all of
it in one pass.

Arguments follow the per-token metadata schema documented in strategies.py.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from megatron_lst.patching.config import PatchingConfig
from megatron_lst.tokenizer import VocabLayout

MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def reference_uniform(seed: int, step: int, sample_id: int) -> float:
    """The per-sequence draw in [0, 1): a hash of (seed, step, sample id), no RNG state."""
    key = _splitmix64(_splitmix64(_splitmix64(seed) ^ (step & MASK64)) ^ (sample_id & MASK64))
    return (key >> 11) * 2.0**-53


def reference_aligned_probability(config: PatchingConfig, step: int) -> float:
    """P(aligned) at a step: curriculum is 1 before tau1, linear to 0 at tau2, 0 after."""
    if config.strategy == "static":
        return 0.0
    if config.strategy == "aligned":
        return 1.0
    if config.strategy == "mixed":
        return config.mixed_aligned_probability
    if step < config.tau1:
        return 1.0
    if step >= config.tau2:
        return 0.0
    return 1.0 - (step - config.tau1) / (config.tau2 - config.tau1)


def reference_choose_aligned(config: PatchingConfig, step: int, sample_id: int) -> bool:
    if config.strategy in ("static", "aligned"):
        return config.strategy == "aligned"
    return reference_uniform(config.seed, step, sample_id) < reference_aligned_probability(config, step)


def _first(mask: np.ndarray) -> Optional[int]:
    positions = np.flatnonzero(mask)
    return int(positions[0]) if positions.size else None


def validate_sample(
    tokens: np.ndarray,
    is_speech: np.ndarray,
    segment_ids: Optional[np.ndarray],
    is_silence: Optional[np.ndarray],
    document_ids: np.ndarray,
    layout: VocabLayout,
) -> None:
    """Raise ValueError naming the first position that breaks the metadata schema."""
    if tokens.size == 0 or tokens[0] != layout.bos_id:
        raise ValueError(f"a sample must start with BOS (id {layout.bos_id})")
    checks = [
        ((tokens < 0) | (tokens >= layout.vocab_size), "token id outside the joint vocabulary"),
        (is_speech & ~layout.is_unit(tokens), "unit id out of range: is_speech set on a non-unit token"),
        (~is_speech & layout.is_unit(tokens), "speech unit id with is_speech False"),
    ]
    if segment_ids is not None:
        checks += [
            (~is_speech & (segment_ids != -1), "non-speech token with a segment id other than -1"),
            (~is_speech & is_silence, "is_silence set on a non-speech token"),
            (is_speech & (segment_ids < 0), "speech unit without a segment id"),
        ]
    for bad, message in checks:
        position = _first(bad)
        if position is not None:
            raise ValueError(f"position {position}: {message}")
    if segment_ids is None:
        return
    speech_positions = np.flatnonzero(is_speech)
    speech_segments = segment_ids[speech_positions]
    step_up = np.diff(speech_segments)
    position = _first(step_up < 0)
    if position is not None:
        raise ValueError(f"position {speech_positions[position + 1]}: segment ids decrease (overlapping spans)")
    same_segment = step_up == 0
    adjacent = (np.diff(speech_positions) == 1) & (np.diff(document_ids[speech_positions]) == 0)
    position = _first(same_segment & ~adjacent)
    if position is not None:
        raise ValueError(f"position {speech_positions[position + 1]}: segment resumes after a break")
    position = _first(same_segment & (np.diff(is_silence[speech_positions].astype(np.int8)) != 0))
    if position is not None:
        raise ValueError(f"position {speech_positions[position + 1]}: is_silence changes inside a segment")


def speech_spans(is_speech: np.ndarray, document_ids: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [begin, end) of speech units inside one document."""
    starts_run = is_speech & ~np.concatenate([[False], is_speech[:-1] & (np.diff(document_ids) == 0)])
    ends_run = is_speech & ~np.concatenate([is_speech[1:] & (np.diff(document_ids) == 0), [False]])
    return list(zip(np.flatnonzero(starts_run).tolist(), (np.flatnonzero(ends_run) + 1).tolist()))


def static_span_lengths(span_length: int, patch_size: int) -> list[int]:
    """Runs of patch_size, with a shorter remainder at the end of the span."""
    full, remainder = divmod(span_length, patch_size)
    return [patch_size] * full + ([remainder] if remainder else [])


def aligned_span_lengths(segment_ids: np.ndarray, is_silence: np.ndarray, silence_mode: str) -> list[int]:
    """One patch per segment (sil_sep), or silences merged into a neighbouring word (sil_merged)."""
    segment_starts = np.flatnonzero(np.concatenate([[True], np.diff(segment_ids) != 0]))
    segment_lengths = np.diff(np.append(segment_starts, segment_ids.size))
    segment_is_silence = is_silence[segment_starts]
    if silence_mode == "sil_sep":
        return segment_lengths.tolist()
    word_indices = np.flatnonzero(~segment_is_silence)
    if word_indices.size == 0:
        return [int(segment_lengths.sum())]
    # Patch k runs from word k (from the span start for k = 0) up to the next word.
    cut_points = np.append(np.insert(word_indices[1:], 0, 0), segment_lengths.size)
    return [int(segment_lengths[cut_points[k] : cut_points[k + 1]].sum()) for k in range(word_indices.size)]


def cap_lengths(lengths: list[int], cap: Optional[int]) -> list[int]:
    """Split every patch longer than cap into pieces of cap, shorter remainder last."""
    if cap is None:
        return list(lengths)
    capped: list[int] = []
    for length in lengths:
        capped += static_span_lengths(length, cap)
    return capped


def reference_patch_lengths(
    tokens: np.ndarray,
    is_speech: np.ndarray,
    segment_ids: Optional[np.ndarray],
    is_silence: Optional[np.ndarray],
    document_ids: np.ndarray,
    config: PatchingConfig,
    layout: VocabLayout,
    aligned: bool,
) -> list[int]:
    """Patch lengths of one sample (1-D arrays of length N); they sum to N."""
    validate_sample(tokens, is_speech, segment_ids, is_silence, document_ids, layout)
    if aligned and segment_ids is None:
        raise ValueError("aligned patching needs segment_ids")
    # Raw patches as (first position, length, opens a speech span, is a static span's short last run).
    raw: list[tuple[int, int, bool, bool]] = [(int(i), 1, False, False) for i in np.flatnonzero(~is_speech)]
    for begin, end in speech_spans(is_speech, document_ids):
        if aligned:
            lengths = aligned_span_lengths(segment_ids[begin:end], is_silence[begin:end], config.silence_mode)
        else:
            lengths = static_span_lengths(end - begin, config.patch_size)
        offsets = begin + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        short_last = [not aligned and k == len(lengths) - 1 and length < config.patch_size
                      for k, length in enumerate(lengths)]
        raw += [(int(offset), length, k == 0, short_last[k])
                for k, (offset, length) in enumerate(zip(offsets, lengths))]
    raw.sort()
    # Folding, then the causal rule: a patch left open (a static span's short last run, or a
    # folded-mode <s> with no unit after it) takes the non-speech token after it, in its document,
    # as its last token. Raw patches tile the row, so "after it" is simply the next raw patch.
    causal = config.patch_boundary == "causal"
    patches: list[int] = []
    open_length = 0
    k = 0
    while k < len(raw):
        position, length, _, short_last = raw[k]
        if open_length:
            joins = not is_speech[position] and document_ids[position] == document_ids[position - 1]
            patches.append(open_length + int(joins))
            open_length = 0
            if joins:
                k += 1
                continue
        is_marker = config.folds_marker(aligned) and tokens[position] == layout.speech_marker_id
        next_opens_span = k + 1 < len(raw) and raw[k + 1][2] and raw[k + 1][0] == position + 1
        if is_marker and next_opens_span and document_ids[position] == document_ids[position + 1]:
            length, is_open = 1 + raw[k + 1][1], raw[k + 1][3]
            k += 2
        else:
            is_open = short_last or is_marker
            k += 1
        if causal and is_open:
            open_length = length
        else:
            patches.append(length)
    if open_length:
        patches.append(open_length)
    return cap_lengths(patches, config.max_patch_length)


def reference_patch_batch(
    tokens: np.ndarray,
    is_speech: np.ndarray,
    config: PatchingConfig,
    layout: VocabLayout,
    segment_ids: Optional[np.ndarray] = None,
    is_silence: Optional[np.ndarray] = None,
    document_ids: Optional[np.ndarray] = None,
    step: int = 0,
    sample_ids: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(patch_lengths, patch_starts, num_patches, aligned) for [B, N] arrays, padded as the kernel pads."""
    tokens = np.asarray(tokens, dtype=np.int64)
    batch = tokens.shape[0]
    is_speech = np.asarray(is_speech, dtype=bool)
    document_ids = np.zeros(tokens.shape, np.int32) if document_ids is None else np.asarray(document_ids)
    if segment_ids is not None:
        segment_ids = np.asarray(segment_ids)
        is_silence = np.zeros(tokens.shape, bool) if is_silence is None else np.asarray(is_silence, dtype=bool)
    sample_ids = np.arange(batch) if sample_ids is None else np.asarray(sample_ids)
    rows = []
    aligned = np.zeros(batch, dtype=bool)
    for b in range(batch):
        aligned[b] = reference_choose_aligned(config, step, int(sample_ids[b]))
        rows.append(
            reference_patch_lengths(
                tokens[b],
                is_speech[b],
                None if segment_ids is None else segment_ids[b],
                None if segment_ids is None else is_silence[b],
                document_ids[b],
                config,
                layout,
                bool(aligned[b]),
            )
        )
    width = max((len(row) for row in rows), default=0)
    patch_lengths = np.zeros((batch, width), dtype=np.int64)
    for b, row in enumerate(rows):
        patch_lengths[b, : len(row)] = row
    patch_starts = np.cumsum(patch_lengths, axis=1) - patch_lengths
    num_patches = np.array([len(row) for row in rows], dtype=np.int64)
    return patch_lengths, patch_starts, num_patches, aligned
