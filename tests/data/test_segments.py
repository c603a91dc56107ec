"""data/segments.py: word-aligned cuts of an utterance, worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_lst.data.jsonl_records import AlignedUtterance
from megatron_lst.data.segments import SegmentConfig, segment_utterance


def utterance() -> AlignedUtterance:
    # frames: 0-1 silence, w0 [2,4), w1 [4,7), silence 7, w2 [8,10), w3 [10,11), w4 [12,15), silence 15-16
    return AlignedUtterance(
        doc_id="u", units=np.arange(100, 117), word_texts=["a", "b", "c", "d", "e"],
        word_starts=np.array([2, 4, 8, 10, 12]), word_ends=np.array([4, 7, 10, 11, 15]), transcript="A b c d e.")


def test_segments_keep_inner_silence_and_rebase_word_times():
    first, second = segment_utterance(utterance(), SegmentConfig(words=3, min_words=2))
    assert first.doc_id == "u/0" and first.transcript == "a b c"
    assert first.units.tolist() == list(range(102, 110))  # frames 2..9: the silence at 7 stays
    assert first.word_starts.tolist() == [0, 2, 6] and first.word_ends.tolist() == [2, 5, 8]
    assert second.doc_id == "u/1" and second.transcript == "d e"
    assert second.units.tolist() == list(range(110, 115))  # frames 10..14
    assert second.word_starts.tolist() == [0, 2] and second.word_ends.tolist() == [1, 5]


def test_short_remainder_is_dropped():
    segments = segment_utterance(utterance(), SegmentConfig(words=3, min_words=3))
    assert [s.transcript for s in segments] == ["a b c"]


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="min_words"):
        SegmentConfig(words=2, min_words=3)
    with pytest.raises(ValueError, match="words per segment"):
        SegmentConfig(words=0, min_words=0)
