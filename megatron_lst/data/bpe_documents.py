"""Speech-text documents whose unit segments are read back as unit BPE pieces.

The BPE SpeechLLM baseline trains on the same raw-unit indexed datasets as LST and the plain
baseline; its speech is compressed here, where documents are read, so no second copy of the corpus
is needed. Each aligned segment (word or silence run) is encoded on its own, as
``tools/preprocess_data.py --unit-bpe`` does, so span switches and the silence halves the
interleaver trims stay at segment boundaries, and everything downstream (interleaving, stream
shapes, packing) works unchanged on piece ids in place of unit ids.

Packing plans are built from sequence lengths without reading documents (``stream_shapes.py``), so
the encoded length of every segment is computed once, when the dataset is opened, and presented as
``sequence_lengths``; ``__getitem__`` re-encodes one document (the BPE is deterministic) and checks
it against them.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from megatron_lst.data.speech_documents import SpeechTextDocument, SpeechTextDocuments
from megatron_lst.data.speech_layout import metadata_path
from megatron_lst.data.unit_bpe import UnitBPE

logger = logging.getLogger(__name__)


class BPESpeechTextDocuments(SpeechTextDocuments):
    """``SpeechTextDocuments`` with every segment's units replaced by its BPE pieces."""

    def __init__(self, prefix: str, unit_bpe: UnitBPE, mmap: bool = True):
        super().__init__(prefix, mmap=mmap)
        self.unit_bpe = unit_bpe
        check_raw_units(prefix, self.metadata, unit_bpe)
        start = time.perf_counter()
        self.sequence_lengths = self._encoded_lengths()
        logger.info("%s: unit BPE lengths of %d documents in %.2f s", prefix, len(self), time.perf_counter() - start)

    def _encoded_lengths(self) -> np.ndarray:
        lengths = np.asarray(self.dataset.sequence_lengths, dtype=np.int64).copy()
        for index in range(len(self)):
            first = int(self.document_starts[index])
            pieces = self._encode(super().__getitem__(index))
            lengths[first + 2 : int(self.document_starts[index + 1]) : 2] = [len(p) for p in pieces]
        return lengths

    def _encode(self, document: SpeechTextDocument) -> list[np.ndarray]:
        offsets = document.unit_offsets
        return self.unit_bpe.encode_many([document.unit_ids[offsets[k]:offsets[k + 1]]
                                          for k in range(document.num_segments)])

    def __getitem__(self, index: int) -> SpeechTextDocument:
        document = super().__getitem__(index)
        pieces = self._encode(document)
        lengths = np.asarray([len(p) for p in pieces], dtype=np.int64)
        _, expected, _ = self.segment_lengths(index)
        if not np.array_equal(lengths, expected):
            raise RuntimeError(f"{self.prefix}: document {index} encodes to other piece counts than when the "
                               f"dataset was opened ({self.unit_bpe.model_path} changed?)")
        return dataclasses.replace(
            document,
            unit_ids=np.concatenate(pieces) if pieces else np.empty(0, np.int64),
            unit_offsets=np.concatenate(([0], np.cumsum(lengths))),
        )


def check_raw_units(prefix: str, metadata: dict, unit_bpe: UnitBPE) -> None:
    """Refuse corpora the BPE cannot (or must not) encode, naming the metadata file and field."""
    where = metadata_path(prefix)
    if metadata.get("unit_bpe"):
        raise ValueError(f"{where}: unit_bpe = {metadata['unit_bpe']!r}: this corpus was already BPE-encoded by "
                         "tools/preprocess_data.py --unit-bpe; --model bpe-baseline encodes raw-unit corpora itself, "
                         "preprocess without --unit-bpe")
    data_units = metadata.get("num_units")
    if unit_bpe.num_units is not None and data_units != unit_bpe.num_units:
        raise ValueError(f"{where}: num_units = {data_units} but the unit BPE {unit_bpe.model_path} was trained on "
                         f"num_units = {unit_bpe.num_units}: a BPE encodes only the codebook it was trained on")
    if unit_bpe.num_units is None and data_units is not None and unit_bpe.alphabet_size() > data_units:
        raise ValueError(f"{where}: num_units = {data_units} but the unit BPE {unit_bpe.model_path} has pieces for "
                         f"units up to {unit_bpe.alphabet_size() - 1}: it was trained on another codebook")
