"""Cut aligned utterances into word-aligned segments of a few words.

ASR/TTS fine-tuning and evaluation want short examples: a whole demo utterance (up to ten
sentences, a minute of speech) does not fit a baseline sample of a few hundred positions, and a
piece cut off before its ``<t>`` marker trains on nothing. Word times make exact cuts possible:
a segment's units run from its first word's start to its last word's end, and its word times
are re-based to the segment. Training and evaluation cut with the same function, so a model is
scored on examples shaped like the ones it was fine-tuned on.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_lst.data.jsonl_records import AlignedUtterance, parse_speech_record
from megatron_lst.validation import InputError, at_line, read_jsonl


@dataclass(frozen=True)
class SegmentConfig:
    """``words`` per segment; a shorter remainder is kept when it has at least ``min_words``."""

    words: int = 8
    min_words: int = 4

    def __post_init__(self) -> None:
        if self.words < 1:
            raise ValueError(f"words per segment must be >= 1, got {self.words}")
        if not 1 <= self.min_words <= self.words:
            raise ValueError(f"min_words must be in [1, {self.words}], got {self.min_words}")

    @classmethod
    def for_words(cls, words: int) -> "SegmentConfig":
        """``words`` per segment, a remainder kept from half that: the one rule that
        ``tools/preprocess_data.py --segment-words`` and ``tools/evaluate_asr_tts.py`` share."""
        return cls(words, max(words // 2, 1))


def segment_utterance(utterance: AlignedUtterance, config: SegmentConfig) -> list[AlignedUtterance]:
    """Consecutive groups of ``config.words`` words of one utterance, each an utterance of its own.

    Word spans are frames of the utterance's units (end exclusive); a segment keeps the units
    between its first word's start and its last word's end, so silence between its words stays
    and silence around it goes. Segment ``k`` of utterance ``id`` is ``id/k``.
    """
    segments = []
    count = len(utterance.word_texts)
    for index, first in enumerate(range(0, count, config.words)):
        last = min(first + config.words, count)
        if last - first < config.min_words:
            break
        start, end = int(utterance.word_starts[first]), int(utterance.word_ends[last - 1])
        if end <= start:
            continue  # words without any speech frames cannot be heard
        texts = list(utterance.word_texts[first:last])
        segments.append(AlignedUtterance(
            doc_id=f"{utterance.doc_id}/{index}",
            units=utterance.units[start:end].copy(),
            word_texts=texts,
            word_starts=utterance.word_starts[first:last] - start,
            word_ends=utterance.word_ends[first:last] - start,
            transcript=" ".join(texts),
        ))
    return segments


def heldout_segments(path: str, words_per_segment: int, limit: int, unit_rate: float = 25.0) -> list[dict]:
    """Word groups of each utterance ({'text', 'units'}), cut exactly as ``tools/preprocess_data.py
    --segment-words`` cuts fine-tuning data, so evaluation examples look like training examples.
    A bad line, a count below 1 or a file with no segment is an InputError naming the file, line
    and field (or the flag)."""
    if words_per_segment < 1:
        raise InputError(f"must be >= 1, got {words_per_segment}", field="--segment-words")
    if limit < 1:
        raise InputError(f"must be >= 1, got {limit}", field="--max-segments")
    config = SegmentConfig.for_words(words_per_segment)
    out = []
    for number, record in read_jsonl(path):
        with at_line(path, number):
            utterance = parse_speech_record(record, num_units=1 << 30, unit_rate=unit_rate)
        out += [{"text": segment.transcript, "units": segment.units.tolist()}
                for segment in segment_utterance(utterance, config)]
        if len(out) >= limit:
            break
    if not out:
        raise InputError(f"no segment of {words_per_segment} words: no utterance has {config.min_words} words or "
                         "more", file=path)
    return out[:limit]
