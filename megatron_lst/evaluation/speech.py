"""Speech versions of text benchmarks: every part synthesised by espeak-ng and turned into units.

As in the paper (docs/method.md §6) the prompt and each ending are synthesised *separately* and their units
concatenated at scoring time, so all endings of an item share one prompt audio and an ending's
units never depend on the prompt. The units come from the demo corpus's saved log-mel extractor,
so they are the units the model was trained on. A part's text is normalised first
(``demo.normalise``), as corpus text was before synthesis.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator, Optional

from megatron_lst.demo.espeak import get_espeak
from megatron_lst.demo.normalise import normalise_text
from megatron_lst.demo.units import LogMelUnitExtractor
from megatron_lst.evaluation.items import Item, Part


@dataclass(frozen=True)
class Voice:
    name: str = "en-us"
    rate: int = 175
    pitch: int = 50


class PartSynthesizer:
    """Text -> unit indices, cached: distractor sentences and prompts repeat across items."""

    def __init__(self, extractor: LogMelUnitExtractor, voice: Voice = Voice()):
        self.extractor = extractor
        self.voice = voice
        self._cache: dict[str, tuple[int, ...]] = {}

    def units(self, text: str) -> tuple[int, ...]:
        if text not in self._cache:
            synthesis = get_espeak().synthesize(normalise_text(text), self.voice.name, self.voice.rate,
                                                self.voice.pitch)
            units = self.extractor.transform(synthesis.waveform, synthesis.sample_rate)
            if len(units) == 0:
                raise RuntimeError(f"espeak produced no audio for {text!r}")
            self._cache[text] = tuple(int(u) for u in units)
        return self._cache[text]

    def part(self, part: Part) -> Part:
        """``part`` with its units. An empty text (the prompt of a lexical item, FORMAT.md) is no
        speech: it gets zero units rather than whatever espeak makes of nothing."""
        if part.text is None:
            raise ValueError("a part without text cannot be synthesised")
        if not part.text.strip():
            return replace(part, units=())
        return replace(part, units=self.units(part.text))


def synthesize_items(items: Iterable[Item], synthesizer: PartSynthesizer,
                     on_failure: Optional[Callable[[Item, Exception], None]] = None) -> Iterator[Item]:
    """Items with ``units`` on the prompt and every ending. An item espeak cannot speak is dropped
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


