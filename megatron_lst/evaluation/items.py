"""Story-completion items and their jsonl file (the format is documented in FORMAT.md).

One item is a prompt and several candidate endings, each given as text, as speech units, or both.
Keeping both modalities on the same item is what lets one file serve all four directions.

A speech part may also carry its word times (``segments``): the aligned segments, words and
silences, that tile its units, the same segmentation the speech-text training data stores
(data/speech_layout.py), so an aligned LST model can be scored with the patches it trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Optional

import numpy as np

from megatron_lst.utils.atomic import atomic_file

TEXT = "text"
SPEECH = "units"
WORD = "word"
SILENCE = "sil"
SEGMENT_KINDS = (WORD, SILENCE)


class Segment(NamedTuple):
    """Units ``[start, end)`` of a part spoken as one word (``kind == "word"``) or a silence run."""

    start: int
    end: int
    kind: str

    @property
    def is_silence(self) -> bool:
        return self.kind == SILENCE


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_segments(value: object) -> tuple[Segment, ...]:
    """``[[start, end, "word"|"sil"], ...]`` from json; raises ValueError naming the bad entry."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of [start, end, kind] triples, got {type(value).__name__}")
    segments = []
    for index, entry in enumerate(value):
        if (not isinstance(entry, (list, tuple)) or len(entry) != 3 or not _is_int(entry[0])
                or not _is_int(entry[1]) or entry[2] not in SEGMENT_KINDS):
            raise ValueError(f"segment {index} is {entry!r}, not [start, end, \"word\" or \"sil\"] "
                             "with integer unit positions")
        segments.append(Segment(int(entry[0]), int(entry[1]), str(entry[2])))
    return tuple(segments)


def check_segments(segments: tuple[Segment, ...], num_units: Optional[int]) -> None:
    """Segments must tile the part's units exactly: from 0, each starting where the one before it
    ends, none empty, the last ending at the number of units. Anything else would give some units
    no patch, or two, so it is an error rather than something aligned scoring could guess around."""
    if num_units is None:
        raise ValueError("has segments but no units")
    if not segments:
        raise ValueError(f"is empty but the part has {num_units} units")
    cursor = 0
    for index, (start, end, _) in enumerate(segments):
        if start != cursor:
            where = "the part's first unit (0)" if index == 0 else f"where segment {index - 1} ends ({cursor})"
            raise ValueError(f"segment {index} [{start}, {end}) starts at {start}, not at {where}: "
                             "segments must cover the units without gaps or overlaps")
        if end <= start:
            raise ValueError(f"segment {index} [{start}, {end}) is empty or reversed")
        cursor = end
    if cursor != num_units:
        raise ValueError(f"the segments end at unit {cursor} but the part has {num_units} units")


@dataclass(frozen=True)
class Part:
    """A prompt or an ending: its text, its speech units (0-based unit indices), or both; speech
    may come with its word times (``segments``, checked by :class:`Item`)."""

    text: Optional[str] = None
    units: Optional[tuple[int, ...]] = None
    segments: Optional[tuple[Segment, ...]] = None

    def has(self, modality: str) -> bool:
        return (self.text if modality == TEXT else self.units) is not None

    @property
    def has_word_times(self) -> bool:
        return self.segments is not None

    def segment_metadata(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-unit ``(segment_ids, is_silence)``, the patching kernel's schema (patching/strategies.py),
        segment k of the part getting id k."""
        if self.segments is None or self.units is None:
            raise ValueError("the part has no word times (segments) for its units")
        from megatron_lst.patching.alignment import segment_metadata_from_spans

        spans = [(segment.start, segment.end) for segment in self.segments]
        return segment_metadata_from_spans(spans, len(self.units), [s.is_silence for s in self.segments])

    def to_dict(self) -> dict:
        row: dict = {}
        if self.text is not None:
            row["text"] = self.text
        if self.units is not None:
            row["units"] = list(self.units)
        if self.segments is not None:
            row["segments"] = [list(segment) for segment in self.segments]
        return row

    @classmethod
    def from_dict(cls, row: dict) -> "Part":
        units = row.get("units")
        segments = row.get("segments")
        try:
            parsed = None if segments is None else parse_segments(segments)
        except ValueError as error:
            raise ValueError(f"segments: {error}") from None
        return cls(text=row.get("text"), units=None if units is None else tuple(int(u) for u in units),
                   segments=parsed)


@dataclass(frozen=True)
class Item:
    """One multiple-choice question: ``endings[label]`` is the true continuation of ``prompt``."""

    id: str
    label: int
    prompt: Part
    endings: tuple[Part, ...]

    def __post_init__(self) -> None:
        if len(self.endings) < 2:
            raise ValueError(f"item {self.id}: needs at least 2 endings, got {len(self.endings)}")
        if not 0 <= self.label < len(self.endings):
            raise ValueError(f"item {self.id}: label {self.label} is not an index of its {len(self.endings)} endings")
        for name, part in self.named_parts():
            if part.segments is not None:
                try:
                    check_segments(part.segments, None if part.units is None else len(part.units))
                except ValueError as error:
                    raise ValueError(f"item {self.id}: {name}.segments: {error}") from None

    def named_parts(self) -> list[tuple[str, Part]]:
        """``("prompt", part), ("endings[0]", part), ...``: the names errors use for the fields."""
        return [("prompt", self.prompt), *((f"endings[{i}]", e) for i, e in enumerate(self.endings))]

    def has(self, prompt_modality: str, ending_modality: str) -> bool:
        """True when the prompt and every ending carry the fields a direction reads."""
        return self.prompt.has(prompt_modality) and all(e.has(ending_modality) for e in self.endings)

    def to_dict(self) -> dict:
        return {"id": self.id, "label": self.label, "prompt": self.prompt.to_dict(),
                "endings": [ending.to_dict() for ending in self.endings]}

    @classmethod
    def from_dict(cls, row: dict) -> "Item":
        item_id = str(row["id"])

        def part(name: str, value: dict) -> Part:
            try:
                return Part.from_dict(value)
            except ValueError as error:
                raise ValueError(f"item {item_id}: {name}.{error}") from None

        return cls(id=item_id, label=int(row["label"]), prompt=part("prompt", row["prompt"]),
                   endings=tuple(part(f"endings[{i}]", e) for i, e in enumerate(row["endings"])))


def read_items(path: str | Path) -> list[Item]:
    """All items of a benchmark file; a bad line is reported with its file and line number."""
    items = []
    with Path(path).open() as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                items.append(Item.from_dict(json.loads(line)))
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{path}:{line_number}: not a benchmark item ({error})") from error
    return items


def write_items(path: str | Path, items: Iterable[Item]) -> None:
    """Write ``items`` as jsonl atomically: a failure on the way leaves an existing file untouched."""
    with atomic_file(path) as handle:
        for item in items:
            handle.write(json.dumps(item.to_dict()) + "\n")
