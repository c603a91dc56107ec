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
from typing import Any, Iterable, Iterator, NamedTuple, Optional

import numpy as np

from megatron_lst.utils.atomic import atomic_file
from megatron_lst.validation import InputError, at_line, is_int, json_type, read_jsonl, require_field, require_int

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


def parse_segments(value: object) -> tuple[Segment, ...]:
    """``[[start, end, "word"|"sil"], ...]`` from json; raises ValueError naming the bad entry."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of [start, end, kind] triples, got {type(value).__name__}")
    segments = []
    for index, entry in enumerate(value):
        if (not isinstance(entry, (list, tuple)) or len(entry) != 3 or not is_int(entry[0])
                or not is_int(entry[1]) or entry[2] not in SEGMENT_KINDS):
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
    def from_dict(cls, row: Any, num_units: Optional[int] = None) -> "Part":
        """A part read strictly: ``text`` a string, ``units`` a list of integers in ``[0, num_units)``
        (never a string of digits or floats), ``segments`` triples; an InputError names the field."""
        if not isinstance(row, dict):
            raise InputError(f"must be an object with 'text' and/or 'units', got {json_type(row)}")
        text = row.get("text")
        if text is not None and not isinstance(text, str):
            raise InputError(f"must be a string, got {json_type(text)}", field="text")
        units = row.get("units")
        if units is not None:
            if not isinstance(units, list):
                raise InputError(f"must be a list of unit indices, got {json_type(units)}", field="units")
            for index, unit in enumerate(units):
                require_int(unit, f"units[{index}]", 0, num_units)
        segments = row.get("segments")
        try:
            parsed = None if segments is None else parse_segments(segments)
        except ValueError as error:
            raise InputError(str(error), field="segments") from None
        return cls(text=text, units=None if units is None else tuple(units), segments=parsed)

    def is_empty(self) -> bool:
        """No text (or only spaces) and no units: nothing a model could score."""
        return not (self.text or "").strip() and not self.units


def item_problems(prompt: Part, endings: tuple[Part, ...], label: int) -> Iterator[tuple[str, str]]:
    """``(field, message)`` of everything wrong with an item's shape: the one set of rules both
    :class:`Item` (built in code) and :func:`read_items` (read from a file) apply."""
    if len(endings) < 2:
        yield "endings", f"needs at least 2 endings, got {len(endings)}"
    elif not 0 <= label < len(endings):
        yield "label", f"{label} is not an index of its {len(endings)} endings"
    for index, ending in enumerate(endings):
        if ending.is_empty():
            yield f"endings[{index}]", "is empty: an ending needs non-blank text or at least one unit"
        elif ending.text is not None and not ending.text.strip():
            yield f"endings[{index}].text", "is blank"
        elif ending.units is not None and not ending.units:
            yield f"endings[{index}].units", "is empty"
    for name, part in [("prompt", prompt), *((f"endings[{i}]", e) for i, e in enumerate(endings))]:
        if part.segments is not None:
            try:
                check_segments(part.segments, None if part.units is None else len(part.units))
            except ValueError as error:
                yield f"{name}.segments", str(error)


@dataclass(frozen=True)
class Item:
    """One multiple-choice question: ``endings[label]`` is the true continuation of ``prompt``."""

    id: str
    label: int
    prompt: Part
    endings: tuple[Part, ...]

    def __post_init__(self) -> None:
        for field, message in item_problems(self.prompt, self.endings, self.label):
            raise ValueError(f"item {self.id}: {field}: {message}")

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
    def from_dict(cls, row: dict, num_units: Optional[int] = None) -> "Item":
        """An item read strictly; every problem is an InputError naming its field (``label`` must be
        a JSON integer: ``1.7``, ``"1"`` and ``true`` are refused, not rounded or coerced)."""
        item_id = require_field(row, "id")
        if not isinstance(item_id, str) and not is_int(item_id):
            raise InputError(f"must be a string, got {json_type(item_id)}", field="id")
        label = require_int(require_field(row, "label"), "label")
        endings_row = require_field(row, "endings")
        if not isinstance(endings_row, list):
            raise InputError(f"must be a list of parts, got {json_type(endings_row)}", field="endings")
        with at_line(None, field_prefix="prompt"):
            prompt = Part.from_dict(require_field(row, "prompt"), num_units)
        endings = []
        for index, ending in enumerate(endings_row):
            with at_line(None, field_prefix=f"endings[{index}]"):
                endings.append(Part.from_dict(ending, num_units))
        for field, message in item_problems(prompt, tuple(endings), label):
            raise InputError(message, field=field)
        return cls(id=str(item_id), label=label, prompt=prompt, endings=tuple(endings))


def read_items(path: str | Path, num_units: Optional[int] = None) -> list[Item]:
    """All items of a benchmark file; any problem (malformed JSON, a field of the wrong type, a unit
    outside ``[0, num_units)`` when given, an id used twice) is an InputError naming the file, line
    and field. A file without items is an error too: its accuracies would be of nothing."""
    items = []
    first_line: dict[str, int] = {}
    for line_number, row in read_jsonl(path):
        with at_line(path, line_number):
            item = Item.from_dict(row, num_units)
            if item.id in first_line:
                raise InputError(f"{item.id!r} is already the id of line {first_line[item.id]}", field="id")
        first_line[item.id] = line_number
        items.append(item)
    if not items:
        raise InputError("no items: the benchmark file holds no record", file=path)
    return items


def write_items(path: str | Path, items: Iterable[Item]) -> None:
    """Write ``items`` as jsonl atomically: a failure on the way leaves an existing file untouched."""
    with atomic_file(path) as handle:
        for item in items:
            handle.write(json.dumps(item.to_dict()) + "\n")
