"""Parsing and validation of one jsonl line (text or aligned speech), before any tokenisation.

Every problem is raised as ``RecordError`` with a message a user can act on; the caller adds the
file and line number. Validation is strict on purpose: a silently repaired alignment would teach
the model the wrong word-to-speech correspondence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from megatron_lst.validation import InputError, is_int, json_type, parse_json_object

SPEECH_FORMAT = "speech"
TEXT_FORMAT = "text"


class RecordError(InputError):
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


def load_json_object(line: bytes | str) -> dict:
    """Parse a line into a JSON object, strictly (megatron_lst/validation.py): UTF-8, no NaN/Infinity."""
    try:
        return parse_json_object(line)
    except InputError as error:
        raise RecordError(error.message, field=error.field) from None


def detect_format(record: dict) -> str:
    """Speech if the record carries units, text otherwise."""
    return SPEECH_FORMAT if "units" in record else TEXT_FORMAT


def text_field(record: dict, key: str) -> str:
    if key not in record:
        raise RecordError("missing field", field=key)
    value = record[key]
    if not isinstance(value, str):
        raise RecordError(f"must be a string, got {json_type(value)}", field=key)
    return value


def parse_units(record: dict, num_units: int) -> np.ndarray:
    if "units" not in record:
        raise RecordError("missing field", field="units")
    units = record["units"]
    if not isinstance(units, list):
        raise RecordError(f"must be a list of integers, got {json_type(units)}", field="units")
    for position, unit in enumerate(units):
        if not is_int(unit):
            raise RecordError(f"{unit!r} is not an integer", field=f"units[{position}]")
        if not 0 <= unit < num_units:
            raise RecordError(f"{unit} is outside [0, {num_units})", field=f"units[{position}]")
    return np.asarray(units, dtype=np.int64)


def _frame(word: dict, index: int, frame_key: str, seconds_key: str, unit_rate: float) -> int:
    if frame_key in word:
        value = word[frame_key]
        if not is_int(value):
            raise RecordError(f"{value!r} is not an integer frame", field=f"words[{index}].{frame_key}")
        return value
    if seconds_key in word:
        value = word[seconds_key]
        frames = value * unit_rate if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
        if not math.isfinite(frames):
            raise RecordError(f"{value!r} is not a finite number of seconds", field=f"words[{index}].{seconds_key}")
        return int(round(frames))
    raise RecordError(f"has neither {frame_key!r} nor {seconds_key!r}", field=f"words[{index}]")


def parse_words(
    record: dict, num_frames: int, unit_rate: float
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Word texts and their [start, end) frames, checked to be in order and inside the units."""
    if "words" not in record:
        raise RecordError("missing field", field="words")
    words = record["words"]
    if not isinstance(words, list):
        raise RecordError(f"must be a list, got {json_type(words)}", field="words")
    texts: list[str] = []
    starts = np.empty(len(words), dtype=np.int64)
    ends = np.empty(len(words), dtype=np.int64)
    previous_end = 0
    for index, word in enumerate(words):
        if not isinstance(word, dict):
            raise RecordError(f"must be an object, got {json_type(word)}", field=f"words[{index}]")
        if not isinstance(word.get("text"), str):
            raise RecordError("missing or not a string", field=f"words[{index}].text")
        start = _frame(word, index, "start", "start_s", unit_rate)
        end = _frame(word, index, "end", "end_s", unit_rate)
        if start < 0 or end > num_frames or start > end:
            raise RecordError(f"span [{start}, {end}) is out of range for {num_frames} units", field=f"words[{index}]")
        if start < previous_end:
            raise RecordError(f"starts at frame {start}, before the previous word ends ({previous_end}): "
                              "words out of order or overlapping", field=f"words[{index}]")
        texts.append(word["text"])
        starts[index], ends[index] = start, end
        previous_end = end
    return texts, starts, ends


def parse_speech_record(record: dict, num_units: int, unit_rate: float) -> AlignedUtterance:
    doc_id = record.get("id", "")
    if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool):
        raise RecordError(f"must be a string, got {json_type(doc_id)}", field="id")
    units = parse_units(record, num_units)
    texts, starts, ends = parse_words(record, len(units), unit_rate)
    transcript = text_field(record, "text") if "text" in record else " ".join(texts)
    return AlignedUtterance(str(doc_id), units, texts, starts, ends, transcript)
