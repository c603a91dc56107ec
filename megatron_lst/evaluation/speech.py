"""Speech versions of text benchmarks: every part synthesised by espeak-ng and turned into units.

As in the paper (docs/method.md §6) the prompt and each ending are synthesised *separately* and their units
concatenated at scoring time, so all endings of an item share one prompt audio and an ending's
units never depend on the prompt. The units come from the demo corpus's saved log-mel extractor,
so they are the units the model was trained on. A part's text is normalised first
(``demo.normalise``), as corpus text was before synthesis.

Every part also gets its word times as ``segments`` (megatron_lst/evaluation/FORMAT.md): espeak-ng reports each
word's samples, which become unit frames and word/silence segments through the same two functions
that turn the demo corpus's speech into training segments (``demo.alignment.frame_spans``, then
``data.speech_layout.segment_bounds``), so aligned scoring sees the segmentation training saw.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from megatron_lst.data.speech_layout import segment_bounds
from megatron_lst.demo.alignment import frame_spans
from megatron_lst.demo.espeak import get_espeak
from megatron_lst.demo.normalise import normalise_text
from megatron_lst.demo.units import LogMelUnitExtractor
from megatron_lst.evaluation.items import SILENCE, WORD, Item, Part, Segment


@dataclass(frozen=True)
class Voice:
    name: str = "en-us"
    rate: int = 175
    pitch: int = 50


def word_segments(words, sample_rate: int, num_units: int) -> tuple[Segment, ...]:
    """Word and silence segments tiling ``num_units`` units, from espeak's word timings in samples:
    rounded to unit frames as the demo corpus rounds them, frames covered by no word are silence."""
    spans = frame_spans(words, sample_rate, num_units)
    bounds = segment_bounds(num_units, np.asarray([s.start for s in spans], np.int64),
                            np.asarray([s.end for s in spans], np.int64))
    return tuple(Segment(int(start), int(end), SILENCE if word < 0 else WORD)
                 for start, end, word in zip(bounds.starts, bounds.ends, bounds.word_index))


class PartSynthesizer:
    """Text -> unit indices and word times, cached: distractor sentences and prompts repeat across items."""

    def __init__(self, extractor: LogMelUnitExtractor, voice: Voice = Voice()):
        self.extractor = extractor
        self.voice = voice
        self._cache: dict[str, tuple[tuple[int, ...], tuple[Segment, ...]]] = {}

    def speak(self, text: str) -> tuple[tuple[int, ...], tuple[Segment, ...]]:
        """The units of ``text`` spoken alone and the word/silence segments that tile them."""
        if text not in self._cache:
            synthesis = get_espeak().synthesize(normalise_text(text), self.voice.name, self.voice.rate,
                                                self.voice.pitch)
            units = self.extractor.transform(synthesis.waveform, synthesis.sample_rate)
            if len(units) == 0:
                raise RuntimeError(f"espeak produced no audio for {text!r}")
            segments = word_segments(synthesis.words, synthesis.sample_rate, len(units))
            self._cache[text] = (tuple(int(u) for u in units), segments)
        return self._cache[text]

    def units(self, text: str) -> tuple[int, ...]:
        return self.speak(text)[0]

    def part(self, part: Part) -> Part:
        """``part`` with its units. An empty text (the prompt of a lexical item, FORMAT.md) is no
        speech: it gets zero units rather than whatever espeak makes of nothing."""
        if part.text is None:
            raise ValueError("a part without text cannot be synthesised")
        if not part.text.strip():
            return replace(part, units=())
        units, segments = self.speak(part.text)
        return replace(part, units=units, segments=segments)


def synthesize_items(items: Iterable[Item], synthesizer: PartSynthesizer,
                     on_failure: Optional[Callable[[Item, Exception], None]] = None) -> Iterator[Item]:
    """Items with ``units`` and ``segments`` on the prompt and every ending. An item espeak cannot speak is dropped
    (and reported through ``on_failure``): a half-spoken item would block the speech directions."""
    for item in items:
        try:
            yield replace(item, prompt=synthesizer.part(item.prompt),
                          endings=tuple(synthesizer.part(ending) for ending in item.endings))
        except (RuntimeError, ValueError) as error:
            if on_failure is None:
                raise
            on_failure(item, error)


def unit_count(items: Iterable[Item]) -> int:
    return int(sum(len(item.prompt.units or ()) + sum(len(e.units or ()) for e in item.endings) for item in items))


