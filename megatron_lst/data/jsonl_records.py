"""Parsing and validation of one jsonl line (text or aligned speech), before any tokenisation.

Every problem is raised as ``RecordError`` with a message a user can act on; the caller adds the
file and line number. Validation is strict on purpose: a silently repaired alignment would teach
the model the wrong word-to-speech correspondence.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

SPEECH_FORMAT = "speech"
TEXT_FORMAT = "text"


class RecordError(ValueError):
    """A jsonl line that cannot become a document."""


@dataclass
class AlignedUtterance:
    """One validated speech record: units plus word spans in unit frames (end exclusive)."""

    doc_id: str
    units: np.ndarray
    word_texts: list[str]
    word_starts: np.ndarray
    word_ends: np.ndarray
    transcript: str


def load_json_object(line: str) -> dict:
    """Parse a line into a JSON object, rejecting NaN/Infinity literals that json accepts."""
    try:
        record = json.loads(line, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise RecordError(f"malformed JSON: {error.msg} at column {error.colno}") from None
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    return record


def _reject_constant(name: str) -> float:
    raise RecordError(f"{name} is not a valid number here")


def detect_format(record: dict) -> str:
    """Speech if the record carries units, text otherwise."""
    return SPEECH_FORMAT if "units" in record else TEXT_FORMAT


def text_field(record: dict, key: str) -> str:
    if key not in record:
        raise RecordError(f"missing field {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise RecordError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_units(record: dict, num_units: int) -> np.ndarray:
    if "units" not in record:
        raise RecordError("missing field 'units'")
    units = record["units"]
    if not isinstance(units, list):
        raise RecordError(f"'units' must be a list of integers, got {type(units).__name__}")
    for position, unit in enumerate(units):
        if not _is_int(unit):
            raise RecordError(f"units[{position}] is {unit!r}, not an integer")
        if not 0 <= unit < num_units:
            raise RecordError(f"units[{position}] = {unit} is outside [0, {num_units})")
    return np.asarray(units, dtype=np.int64)


def _frame(word: dict, index: int, frame_key: str, seconds_key: str, unit_rate: float) -> int:
    if frame_key in word:
        value = word[frame_key]
        if not _is_int(value):
            raise RecordError(f"words[{index}].{frame_key} is {value!r}, not an integer frame")
        return value
    if seconds_key in word:
        value = word[seconds_key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise RecordError(f"words[{index}].{seconds_key} is {value!r}, not a finite number")
        return int(round(value * unit_rate))
    raise RecordError(f"words[{index}] has neither {frame_key!r} nor {seconds_key!r}")


def parse_words(
    record: dict, num_frames: int, unit_rate: float
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Word texts and their [start, end) frames, checked to be in order and inside the units."""
    if "words" not in record:
        raise RecordError("missing field 'words'")
    words = record["words"]
    if not isinstance(words, list):
        raise RecordError(f"'words' must be a list, got {type(words).__name__}")
    texts: list[str] = []
    starts = np.empty(len(words), dtype=np.int64)
    ends = np.empty(len(words), dtype=np.int64)
    previous_end = 0
    for index, word in enumerate(words):
        if not isinstance(word, dict):
            raise RecordError(f"words[{index}] must be an object, got {type(word).__name__}")
        if not isinstance(word.get("text"), str):
            raise RecordError(f"words[{index}].text is missing or not a string")
        start = _frame(word, index, "start", "start_s", unit_rate)
        end = _frame(word, index, "end", "end_s", unit_rate)
        if start < 0 or end > num_frames or start > end:
            raise RecordError(
                f"words[{index}] span [{start}, {end}) is out of range for {num_frames} units"
            )
        if start < previous_end:
            raise RecordError(
                f"words[{index}] starts at frame {start}, before the previous word ends "
                f"({previous_end}): words out of order or overlapping"
            )
        texts.append(word["text"])
        starts[index], ends[index] = start, end
        previous_end = end
    return texts, starts, ends


def parse_speech_record(record: dict, num_units: int, unit_rate: float) -> AlignedUtterance:
    doc_id = record.get("id", "")
    if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool):
        raise RecordError(f"'id' must be a string, got {type(doc_id).__name__}")
    units = parse_units(record, num_units)
    texts, starts, ends = parse_words(record, len(units), unit_rate)
    transcript = text_field(record, "text") if "text" in record else " ".join(texts)
    return AlignedUtterance(str(doc_id), units, texts, starts, ends, transcript)
