"""The per-line work of tools/preprocess_data.py, run inside worker processes.

A worker receives a chunk of (line number, line) pairs and returns, per line, either the arrays
the indexed builder appends or the error message for that line. Keeping results in input order
makes the output identical for any number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from megatron_lst.data.jsonl_records import (
    SPEECH_FORMAT,
    AlignedUtterance,
    RecordError,
    load_json_object,
    parse_speech_record,
    text_field,
)
from megatron_lst.data.segments import SegmentConfig, segment_utterance
from megatron_lst.data.speech_layout import EncodedDocument, encode_document
from megatron_lst.data.unit_bpe import UnitBPE
from megatron_lst.tokenizer import JointTokenizer


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything a worker needs to encode a line; picklable so it can cross processes."""

    input_format: str
    tokenizer_model: str
    json_keys: tuple[str, ...] = ("text",)
    append_eod: bool = False
    num_units: int = 501
    unit_rate: float = 25.0
    unit_bpe_model: str | None = None
    segment: SegmentConfig | None = None  # cut each utterance into word groups (ASR/TTS fine-tuning)
    # text format detected from the file (not forced by --format text): a later record with units is
    # a mixed file, an error rather than a speech record whose units are silently dropped
    reject_units: bool = False


@dataclass
class LineResult:
    line_number: int
    error: str | None = None
    text_words: int = 0
    text_ids: dict[str, np.ndarray] = field(default_factory=dict)
    speech: list[EncodedDocument] = field(default_factory=list)  # one per utterance or segment


class LineEncoder:
    """Holds the loaded tokenizers; one per worker process."""

    def __init__(self, config: PreprocessConfig):
        self.config = config
        self.tokenizer = JointTokenizer.from_file(config.tokenizer_model, num_units=config.num_units)
        self.unit_bpe = UnitBPE(config.unit_bpe_model) if config.unit_bpe_model else None

    def encode_line(self, line_number: int, line: bytes | str) -> LineResult:
        try:
            record = load_json_object(line)
            if self.config.input_format == SPEECH_FORMAT:
                return LineResult(line_number, speech=self._encode_speech(record))
            if self.config.reject_units and "units" in record:
                raise RecordError("a speech record in a file detected as text (its first record has no 'units'); "
                                  "put speech and text in separate files, or pass --format text to keep only "
                                  "the text fields", field="units")
            text_ids = self._encode_text(record)
            words = len(str(record[self.config.json_keys[0]]).split())
            return LineResult(line_number, text_ids=text_ids, text_words=words)
        except RecordError as error:
            return LineResult(line_number, error=str(error))

    def _encode_text(self, record: dict) -> dict[str, np.ndarray]:
        encoded = {}
        for key in self.config.json_keys:
            ids = self.tokenizer.encode_text(text_field(record, key))
            if self.config.append_eod:
                ids.append(self.tokenizer.eos_id)
            encoded[key] = np.asarray(ids, dtype=np.int64)
        return encoded

    def _encode_speech(self, record: dict) -> list[EncodedDocument]:
        utterance = parse_speech_record(record, self.config.num_units, self.config.unit_rate)
        if self.config.segment is None:
            return [self._encode_utterance(utterance)]
        return [self._encode_utterance(segment) for segment in segment_utterance(utterance, self.config.segment)]

    def _encode_utterance(self, utterance: AlignedUtterance) -> EncodedDocument:
        word_ids = [self.tokenizer.encode_text(text) if text else [] for text in utterance.word_texts]
        transcript_ids = self.tokenizer.encode_text(utterance.transcript)
        return encode_document(utterance, word_ids, transcript_ids, self.unit_bpe)


_WORKER_ENCODER: LineEncoder | None = None


def init_worker(config: PreprocessConfig) -> None:
    """Pool initializer: load the tokenizers once per process."""
    global _WORKER_ENCODER
    _WORKER_ENCODER = LineEncoder(config)


def encode_chunk(chunk: list[tuple[int, str]]) -> list[LineResult]:
    assert _WORKER_ENCODER is not None, "init_worker was not called in this process"
    return [_WORKER_ENCODER.encode_line(number, line) for number, line in chunk]
