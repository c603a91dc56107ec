"""Word timings in samples -> word spans in 25 Hz unit frames.

The aligned-speech format wants, per word, ``start``/``end`` unit-frame indices (end exclusive),
in order, non-overlapping and non-empty; frames covered by no word are silence. Rounding sample
times to the 40 ms grid can make a very short word collapse or two words overlap, so this module
rounds each border to the nearest frame and then repairs the sequence with the smallest moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from megatron_lst.demo.espeak import WordTiming
from megatron_lst.demo.units import FRAME_RATE


@dataclass(frozen=True)
class WordSpan:
    """One word and the unit frames ``[start, end)`` in which it is spoken."""

    text: str
    start: int
    end: int

    def to_json(self) -> dict:
        return {"text": self.text, "start": self.start, "end": self.end}


def frame_spans(words: Sequence[WordTiming], sample_rate: int, num_frames: int,
                frame_rate: int = FRAME_RATE) -> list[WordSpan]:
    """Unit-frame spans of ``words`` (times in samples at ``sample_rate``).

    Each border is rounded to the nearest frame; then every word gets at least one frame, words
    never overlap and nothing passes ``num_frames``. Raises ``ValueError`` when there are more words
    than frames.
    """
    if len(words) > num_frames:
        raise ValueError(f"{len(words)} words cannot fit in {num_frames} frames")
    starts = [round(word.start * frame_rate / sample_rate) for word in words]
    ends = [round(word.end * frame_rate / sample_rate) for word in words]
    previous_end = 0
    for index in range(len(words)):
        starts[index] = max(starts[index], previous_end)
        ends[index] = max(ends[index], starts[index] + 1)
        previous_end = ends[index]
    limit = num_frames
    for index in reversed(range(len(words))):
        ends[index] = min(ends[index], limit)
        starts[index] = min(starts[index], ends[index] - 1)
        limit = starts[index]
    return [WordSpan(word.text, start, end) for word, start, end in zip(words, starts, ends)]
