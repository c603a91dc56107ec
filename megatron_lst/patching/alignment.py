"""Per-token segment metadata from alignment spans, with clear errors for bad alignments.

Forced alignment gives, per word or silence run, a span of speech-unit positions. The patching
kernel wants per-token ``segment_ids`` / ``is_silence`` (schema in strategies.py); this module
converts, and it is where overlapping, out-of-range and zero-length spans are caught.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def segment_metadata_from_spans(
    spans: Sequence[Sequence[int]] | np.ndarray,
    seq_len: int,
    silence: Optional[Sequence[bool] | np.ndarray] = None,
    first_segment_id: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(segment_ids int32 [seq_len], is_silence bool [seq_len]) from spans [K, 2] of [start, end).

    Spans are token positions in the sample, in order; span k gets segment id
    ``first_segment_id + k`` (pass a running offset when packing several documents so that ids
    stay unique in the sample). Positions outside every span get -1. ``silence[k]`` marks span k
    as a silence run. Raises ValueError for a zero-length span, a span outside [0, seq_len),
    or spans that overlap or are out of order.
    """
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2) if len(spans) else np.zeros((0, 2), np.int64)
    silence = np.zeros(len(spans), bool) if silence is None else np.asarray(silence, dtype=bool)
    if silence.shape != (len(spans),):
        raise ValueError(f"silence has shape {silence.shape}, expected ({len(spans)},), one flag per span")
    starts, ends = spans[:, 0], spans[:, 1]
    problems = [
        (ends <= starts, "is a zero-length (or reversed) word"),
        ((starts < 0) | (ends > seq_len), f"exceeds the sequence of {seq_len} tokens"),
        (np.append(False, starts[1:] < ends[:-1]), "overlaps the span before it (or is out of order)"),
    ]
    for bad, message in problems:
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(f"alignment span {k} [{starts[k]}, {ends[k]}) {message}")
    segment_ids = np.full(seq_len, -1, dtype=np.int32)
    is_silence = np.zeros(seq_len, dtype=bool)
    for k, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
        segment_ids[start:end] = first_segment_id + k
        is_silence[start:end] = silence[k]
    return segment_ids, is_silence
