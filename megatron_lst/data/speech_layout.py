"""How a speech-text document is laid out in one multimodal Megatron indexed dataset.

A document is a transcript followed by its aligned segments in time order. Each segment is a word
or a silence run (frames covered by no word) and is stored as two sequences:

    sequence 0                  transcript text ids            mode TRANSCRIPT
    sequence 1 + 2k             text ids of segment k          mode WORD_TEXT (empty: SILENCE_TEXT)
    sequence 2 + 2k             unit ids of segment k          mode UNITS

Ids are stored raw (text ids in [0, T), unit ids in [0, U)); the joint-vocabulary offsets are applied
when reading, so one file serves any layout of specials. Every segment has both sequences (possibly
empty), which lets the reader recover segment boundaries from the lengths alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from megatron_lst.data.jsonl_records import AlignedUtterance

MODE_WORD_TEXT = 0
MODE_UNITS = 1
MODE_SILENCE_TEXT = 2
MODE_TRANSCRIPT = 3

SPEECH_DATASET_KEY = "speech"
METADATA_FORMAT = "megatron-lst-speech-text"
METADATA_VERSION = 1


def speech_dataset_prefix(output_prefix: str) -> str:
    """``{prefix}_speech_document``, parallel to Megatron-LM's ``{prefix}_text_document``."""
    return f"{output_prefix}_{SPEECH_DATASET_KEY}_document"


def metadata_path(dataset_prefix: str) -> str:
    return dataset_prefix + ".json"


@dataclass
class SegmentBounds:
    """Time-ordered segments covering every frame: ``word_index`` is -1 for silence."""

    starts: np.ndarray
    ends: np.ndarray
    word_index: np.ndarray


def segment_bounds(num_frames: int, word_starts: np.ndarray, word_ends: np.ndarray) -> SegmentBounds:
    """Insert a silence segment for every non-empty gap before, between and after the words."""
    starts: list[int] = []
    ends: list[int] = []
    word_index: list[int] = []
    cursor = 0
    for index, (start, end) in enumerate(zip(word_starts.tolist(), word_ends.tolist())):
        if start > cursor:
            starts.append(cursor)
            ends.append(start)
            word_index.append(-1)
        starts.append(start)
        ends.append(end)
        word_index.append(index)
        cursor = end
    if num_frames > cursor:
        starts.append(cursor)
        ends.append(num_frames)
        word_index.append(-1)
    return SegmentBounds(
        np.asarray(starts, dtype=np.int64),
        np.asarray(ends, dtype=np.int64),
        np.asarray(word_index, dtype=np.int64),
    )


UnitEncoder = Callable[[np.ndarray], np.ndarray]


@dataclass
class EncodedDocument:
    """What the builder appends for one document, plus counts for the run summary."""

    ids: np.ndarray
    lengths: np.ndarray
    modes: np.ndarray
    num_words: int
    num_units: int
    num_silence_frames: int
    num_text_tokens: int


def encode_document(
    utterance: AlignedUtterance,
    word_text_ids: Sequence[Sequence[int]],
    transcript_ids: Sequence[int],
    unit_encoder: UnitEncoder | None = None,
) -> EncodedDocument:
    """Lay one utterance out as sequences; ``unit_encoder`` maps a segment's units (e.g. BPE)."""
    bounds = segment_bounds(len(utterance.units), utterance.word_starts, utterance.word_ends)
    pieces: list[np.ndarray] = [np.asarray(transcript_ids, dtype=np.int64)]
    modes = [MODE_TRANSCRIPT]
    silence_frames = 0
    for start, end, word in zip(bounds.starts.tolist(), bounds.ends.tolist(), bounds.word_index.tolist()):
        if word >= 0:
            pieces.append(np.asarray(word_text_ids[word], dtype=np.int64))
            modes.append(MODE_WORD_TEXT)
        else:
            pieces.append(np.empty(0, dtype=np.int64))
            modes.append(MODE_SILENCE_TEXT)
            silence_frames += end - start
        units = utterance.units[start:end]
        pieces.append(unit_encoder(units) if unit_encoder is not None else units)
        modes.append(MODE_UNITS)
    return EncodedDocument(
        ids=np.concatenate(pieces),
        lengths=np.asarray([len(piece) for piece in pieces], dtype=np.int64),
        modes=np.asarray(modes, dtype=np.int8),
        num_words=len(utterance.word_texts),
        num_units=len(utterance.units),
        num_silence_frames=silence_frames,
        num_text_tokens=sum(len(ids) for ids in word_text_ids),
    )
