"""Reading speech-text documents back from the indexed dataset written by preprocess_data.py.

The reader is megatron-core's own ``IndexedDataset`` (multimodal); this module only reshapes one
document's sequences (speech_layout.py) into flat arrays with per-segment offsets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_lst.data.speech_layout import (
    METADATA_FORMAT,
    MODE_SILENCE_TEXT,
    MODE_TRANSCRIPT,
    MODE_UNITS,
    MODE_WORD_TEXT,
    metadata_path,
)


@dataclass
class SpeechTextDocument:
    """One document: raw text ids and raw unit ids per aligned segment (word or silence)."""

    transcript_ids: np.ndarray
    text_ids: np.ndarray
    text_offsets: np.ndarray
    unit_ids: np.ndarray
    unit_offsets: np.ndarray
    segment_is_silence: np.ndarray

    @property
    def num_segments(self) -> int:
        return len(self.segment_is_silence)

    def word_segments(self) -> np.ndarray:
        """Segment indices of the words, in time order."""
        return np.flatnonzero(~self.segment_is_silence)


def is_speech_text_dataset(prefix: str) -> bool:
    path = Path(metadata_path(prefix))
    if not path.is_file():
        return False
    return json.loads(path.read_text(encoding="utf-8")).get("format") == METADATA_FORMAT


class SpeechTextDocuments:
    """Random access to the documents of ``{prefix}.bin/.idx`` plus its ``.json`` metadata."""

    def __init__(self, prefix: str, mmap: bool = True):
        self.prefix = prefix
        self.metadata = json.loads(Path(metadata_path(prefix)).read_text(encoding="utf-8"))
        if self.metadata.get("format") != METADATA_FORMAT:
            raise ValueError(f"{prefix}: not a speech-text dataset (metadata format {self.metadata.get('format')!r})")
        self.dataset = IndexedDataset(prefix, multimodal=True, mmap=mmap)
        self.document_starts = np.asarray(self.dataset.document_indices, dtype=np.int64)
        self.sequence_lengths = np.asarray(self.dataset.sequence_lengths, dtype=np.int64)
        self.sequence_modes = np.asarray(self.dataset.index.sequence_modes, dtype=np.int8)

    def __len__(self) -> int:
        return len(self.document_starts) - 1

    def segment_lengths(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Text lengths, unit lengths and silence flags per segment, from the index alone."""
        first, last = self.document_starts[index], self.document_starts[index + 1]
        pairs = self.sequence_lengths[first + 1 : last].reshape(-1, 2)
        silence = self.sequence_modes[first + 1 : last : 2] == MODE_SILENCE_TEXT
        return pairs[:, 0], pairs[:, 1], silence

    def __getitem__(self, index: int) -> SpeechTextDocument:
        first, last = int(self.document_starts[index]), int(self.document_starts[index + 1])
        if self.sequence_modes[first] != MODE_TRANSCRIPT:
            raise ValueError(f"{self.prefix}: document {index} does not start with a transcript")
        # the stored lengths, not ``self.sequence_lengths``: a subclass may present re-encoded ones
        lengths = np.asarray(self.dataset.sequence_lengths[first:last], dtype=np.int64)
        flat, _ = self.dataset.get(first, 0, int(lengths.sum()))
        flat = flat.astype(np.int64)  # copy: the mmap view dies with the dataset
        transcript_length = int(lengths[0])
        pairs = lengths[1:].reshape(-1, 2)
        text_lengths, unit_lengths = pairs[:, 0], pairs[:, 1]
        silence = self.sequence_modes[first + 1 : last : 2] == MODE_SILENCE_TEXT
        element_modes = np.repeat(self.sequence_modes[first:last], lengths)
        text_ids = flat[(element_modes == MODE_WORD_TEXT) | (element_modes == MODE_SILENCE_TEXT)]
        unit_ids = flat[element_modes == MODE_UNITS]
        return SpeechTextDocument(
            transcript_ids=flat[:transcript_length],
            text_ids=text_ids,
            text_offsets=np.concatenate(([0], np.cumsum(text_lengths))),
            unit_ids=unit_ids,
            unit_offsets=np.concatenate(([0], np.cumsum(unit_lengths))),
            segment_is_silence=silence,
        )
