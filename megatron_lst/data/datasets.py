"""Packed LST samples from speech-text or text-only indexed datasets, as megatron-core datasets.

``PackedLSTDataset`` is one ``MegatronDataset`` class for both kinds of corpus, so a single
``BlendedMegatronDatasetBuilder`` call blends them by weight (``blending.py``). A dataset prefix
with speech-text metadata (``{prefix}.json``) is interleaved on the fly; any other prefix is read
as a Megatron GPT text dataset and each document becomes ``BOS text EOS`` with no marker.

Sample ``idx`` is a pure function of (config, idx): epoch e shuffles the document order with an
RNG keyed by (seed, e), interleaves each document with (seed, e, document), and packs greedily.
Resuming from consumed samples k therefore replays exactly the samples an uninterrupted run sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from megatron.core.datasets.blended_megatron_dataset_config import BlendedMegatronDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.megatron_dataset import MegatronDataset

from megatron_lst.data.interleave import InterleaveConfig, StreamBuilder, TokenStream, interleave_document
from megatron_lst.data.packing import PackedPlan, PackingConfig, count_global_positions, plan_packing
from megatron_lst.data.speech_documents import SpeechTextDocuments, is_speech_text_dataset
from megatron_lst.tokenizer import VocabLayout

SAMPLE_FIELDS = ("tokens", "is_speech", "segment_ids", "is_silence", "document_ids")


@dataclass(kw_only=True)
class LSTDatasetConfig(BlendedMegatronDatasetConfig):
    """megatron-core's dataset config plus the vocabulary, interleaving and packing choices.

    ``sequence_length`` is the number of global positions per sample (patches for LST).
    """

    vocab: VocabLayout
    interleave: InterleaveConfig = field(default_factory=InterleaveConfig)
    max_tokens: int = 0
    patch_size: int = 4

    @property
    def packing(self) -> PackingConfig:
        max_tokens = self.max_tokens or self.sequence_length * self.patch_size
        return PackingConfig(self.sequence_length, max_tokens, self.patch_size)


def text_document_stream(text_ids: np.ndarray, vocab: VocabLayout) -> TokenStream:
    """``BOS text EOS`` for a text-corpus document (an EOD the preprocessor appended is reused)."""
    builder = StreamBuilder(vocab)
    ids = np.asarray(text_ids, dtype=np.int64)
    if len(ids) and ids[-1] == vocab.eos_id:
        ids = ids[:-1]
    builder.pieces.append((ids, np.zeros(len(ids), bool), np.full(len(ids), -1, np.int32), np.zeros(len(ids), bool)))
    return builder.finish([])


class PackedLSTDataset(MegatronDataset):
    """Fixed-capacity samples of interleaved speech-text (or text-only) documents."""

    def __init__(self, dataset, dataset_path, indices, num_samples, index_split, config: LSTDatasetConfig):
        super().__init__(dataset, dataset_path, indices, num_samples, index_split, config)
        self.vocab = config.vocab
        self.packing = config.packing
        self.is_speech_text = isinstance(dataset, SpeechTextDocuments)
        self._plans: dict[int, PackedPlan] = {}
        self._epoch_sizes: list[int] = []
        if len(indices) == 0:
            raise ValueError(f"{dataset_path}: no documents in the {index_split.name} split")
        self._length = num_samples if num_samples is not None else len(self.plan(0))

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: LSTDatasetConfig):
        if is_speech_text_dataset(dataset_path):
            return SpeechTextDocuments(dataset_path, mmap=config.mmap_bin_files)
        return IndexedDataset(dataset_path, multimodal=False, mmap=config.mmap_bin_files)

    @staticmethod
    def numel_low_level_dataset(low_level_dataset) -> int:
        if isinstance(low_level_dataset, SpeechTextDocuments):
            return len(low_level_dataset)
        return len(low_level_dataset.document_indices) - 1

    @staticmethod
    def _key_config_attributes() -> list[str]:
        return ["random_seed", "sequence_length", "split", "split_matrix", "max_tokens", "patch_size"]

    def __len__(self) -> int:
        return self._length

    def document_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.config.random_seed, epoch])
        return rng.permutation(np.asarray(self.indices, dtype=np.int64))

    def stream(self, document: int, epoch: int) -> TokenStream:
        if self.is_speech_text:
            return interleave_document(self.dataset[document], self.vocab, self.config.interleave, epoch, document)
        first, last = self.dataset.document_indices[document], self.dataset.document_indices[document + 1]
        ids = np.concatenate([self.dataset[int(i)] for i in range(first, last)] or [np.empty(0, np.int64)])
        return text_document_stream(ids, self.vocab)

    def plan(self, epoch: int) -> PackedPlan:
        if epoch not in self._plans:
            order = self.document_order(epoch)
            self._plans[epoch] = plan_packing((self.stream(int(d), epoch).is_speech for d in order), self.packing)
            for stale in [e for e in self._plans if e < epoch - 1]:
                del self._plans[stale]
        return self._plans[epoch]

    def locate(self, idx: int) -> tuple[int, int]:
        """(epoch, sample within epoch) of global sample ``idx``."""
        epoch = 0
        while True:
            if epoch == len(self._epoch_sizes):
                self._epoch_sizes.append(len(self.plan(epoch)))
            if idx < self._epoch_sizes[epoch]:
                return epoch, idx
            idx -= self._epoch_sizes[epoch]
            epoch += 1

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        epoch, local = self.locate(int(idx))
        plan = self.plan(epoch)
        order = self.document_order(epoch)
        columns: dict[str, list[np.ndarray]] = {name: [] for name in SAMPLE_FIELDS}
        next_segment = 0
        for document_number, (position, start, end) in enumerate(plan.pieces(local)):
            stream = self.stream(int(order[position]), epoch)
            segment_ids = stream.segment_ids[start:end].copy()
            speech = segment_ids >= 0
            if speech.any():
                segment_ids[speech] += next_segment - segment_ids[speech].min()
                next_segment = int(segment_ids[speech].max()) + 1
            opening = 1 if start else 0  # a continued document reopens with BOS (see plan_packing)
            pieces = {"tokens": stream.tokens[start:end], "is_speech": stream.is_speech[start:end],
                      "segment_ids": segment_ids, "is_silence": stream.is_silence[start:end]}
            opener = {"tokens": self.vocab.bos_id, "is_speech": False, "segment_ids": -1, "is_silence": False}
            for name, values in pieces.items():
                columns[name].append(np.concatenate([np.full(opening, opener[name], values.dtype), values]))
            columns["document_ids"].append(np.full(end - start + opening, document_number, np.int32))
        sample = {name: np.concatenate(parts) for name, parts in columns.items()}
        sample["num_positions"] = np.int64(count_global_positions(sample, self.packing.patch_size))
        return sample

    def padding_fraction(self, epoch: int = 0) -> float:
        return self.plan(epoch).padding_fraction


