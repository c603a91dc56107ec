"""Packed LST samples from speech-text or text-only indexed datasets, as megatron-core datasets.

``PackedLSTDataset`` is one ``MegatronDataset`` class for both kinds of corpus, so a single
``BlendedMegatronDatasetBuilder`` call blends them by weight (``blending.py``). A dataset prefix
with speech-text metadata (``{prefix}.json``) is interleaved on the fly; any other prefix is read
as a Megatron GPT text dataset and each document becomes ``BOS text EOS`` with no marker.

Sample ``idx`` is a pure function of (config, idx): epoch e shuffles the document order with an
RNG keyed by (seed, e), interleaves each document with (seed, e, document), and packs greedily.
Resuming from consumed samples k therefore replays exactly the samples an uninterrupted run sees.
The packing plans of all epochs are built once per dataset and cached on disk (``plan_cache.py``),
so neither a worker's start-up nor its time per sample grows with the corpus.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from megatron.core.datasets.blended_megatron_dataset_config import (
    BlendedMegatronDatasetConfig,
)
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.megatron_dataset import MegatronDataset

from megatron_lst.data import plan_cache
from megatron_lst.data.bpe_documents import BPESpeechTextDocuments
from megatron_lst.data.interleave import (
    InterleaveConfig,
    StreamBuilder,
    TokenStream,
    interleave_document,
)
from megatron_lst.data.packing import (
    PackedPlan,
    PackingConfig,
    count_global_positions,
    pack_documents,
)
from megatron_lst.data.speech_documents import (
    SpeechTextDocuments,
    is_speech_text_dataset,
)
from megatron_lst.data.stream_shapes import stream_shapes
from megatron_lst.data.unit_bpe import UnitBPE, file_sha256
from megatron_lst.tokenizer import VocabLayout

logger = logging.getLogger(__name__)

SAMPLE_FIELDS = ("tokens", "is_speech", "segment_ids", "is_silence", "document_ids")


@dataclass(kw_only=True)
class LSTDatasetConfig(BlendedMegatronDatasetConfig):
    """megatron-core's dataset config plus the vocabulary, interleaving and packing choices.

    ``sequence_length`` is the number of global positions per sample (patches for LST).
    ``plan_workers``: processes that draw a large speech-text corpus's interleaving spans when the
    packing plans are built (0: this rank's share of the CPUs, at most 16); it never changes the plans.
    """

    vocab: VocabLayout
    interleave: InterleaveConfig = field(default_factory=InterleaveConfig)
    max_tokens: int = 0
    patch_size: int = 4
    plan_workers: int = 0
    unit_bpe: str | None = None  # a unit BPE .model: speech segments are read as its pieces (bpe_documents.py)

    @property
    def stream_identifiers(self) -> dict:
        """What shapes a document's stream besides the corpus; part of the datasets' cache key."""
        identifiers = {"interleave": dataclasses.asdict(self.interleave), "vocab": dataclasses.asdict(self.vocab)}
        if self.unit_bpe:  # another BPE of the same size gives other streams: key on its content
            identifiers["unit_bpe_sha256"] = file_sha256(self.unit_bpe)
        return identifiers

    @property
    def packing(self) -> PackingConfig:
        max_tokens = self.max_tokens or self.sequence_length * self.patch_size
        return PackingConfig(self.sequence_length, max_tokens, self.patch_size)


def text_document_stream(text_ids: np.ndarray, vocab: VocabLayout, marker: bool = False) -> TokenStream:
    """``BOS text EOS`` for a text-corpus document (an EOD the preprocessor appended is reused);
    ``BOS <t> text EOS`` with ``marker`` (``InterleaveConfig.text_document_marker``; an empty
    document stays ``BOS EOS``, as the interleaver marks only runs it emits)."""
    builder = StreamBuilder(vocab)
    ids = np.asarray(text_ids, dtype=np.int64)
    if len(ids) and ids[-1] == vocab.eos_id:
        ids = ids[:-1]
    if marker:
        builder.text(ids)
        return builder.finish([])
    builder.pieces.append((ids, np.zeros(len(ids), bool), np.full(len(ids), -1, np.int32), np.zeros(len(ids), bool)))
    return builder.finish([])


class PackedLSTDataset(MegatronDataset):
    """Fixed-capacity samples of interleaved speech-text (or text-only) documents.

    The packing plans of every epoch that ``num_samples`` reaches are built once, at construction
    (as megatron-core's ``GPTDataset`` builds its indices), from the documents' stream shapes
    (``stream_shapes.py``, no document is read) and, with ``config.path_to_cache``, saved as .npy
    arrays that later constructions and DataLoader workers memory-map instead of rebuilding
    (``plan_cache.py``). With torch.distributed initialised only global rank 0 builds and writes;
    the other ranks load what it wrote, after the barrier ``BlendedMegatronDatasetBuilder`` puts
    between rank 0's build and theirs. Reading a sample touches only its own pieces.
    """

    def __init__(self, dataset, dataset_path, indices, num_samples, index_split, config: LSTDatasetConfig):
        super().__init__(dataset, dataset_path, indices, num_samples, index_split, config)
        self.vocab = config.vocab
        self.packing = config.packing
        self.is_speech_text = isinstance(dataset, SpeechTextDocuments)
        if len(indices) == 0:
            raise ValueError(f"{dataset_path}: no documents in the {index_split.name} split")
        self.plan_build_seconds: float | None = None  # None when the plans came from the cache
        self._plan_folder = plan_cache.cache_folder(config.path_to_cache, self) if config.path_to_cache else None
        self._plans = self._load_or_build_plans() if self._plan_folder else self._build_plans()
        self._length = num_samples if num_samples is not None else self._plans.num_samples

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: LSTDatasetConfig):
        if is_speech_text_dataset(dataset_path):
            if config.unit_bpe:
                return BPESpeechTextDocuments(dataset_path, UnitBPE(config.unit_bpe), mmap=config.mmap_bin_files)
            return SpeechTextDocuments(dataset_path, mmap=config.mmap_bin_files)
        return IndexedDataset(dataset_path, multimodal=False, mmap=config.mmap_bin_files)

    @staticmethod
    def numel_low_level_dataset(low_level_dataset) -> int:
        if isinstance(low_level_dataset, SpeechTextDocuments):
            return len(low_level_dataset)
        return len(low_level_dataset.document_indices) - 1

    @staticmethod
    def _key_config_attributes() -> list[str]:
        return ["random_seed", "sequence_length", "split", "split_matrix", "max_tokens", "patch_size",
                "stream_identifiers"]

    def __len__(self) -> int:
        return self._length

    def __getstate__(self) -> dict:
        """Cached plans travel as their folder (workers memory-map it), not as pickled arrays."""
        state = self.__dict__.copy()
        if self._plan_folder:
            state["_plans"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._plans is None:
            self._plans = plan_cache.open_arrays(self._plan_folder)

    # ------------------------------------------------------------------ plans
    def document_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.config.random_seed, epoch])
        return rng.permutation(np.asarray(self.indices, dtype=np.int64))

    def stream(self, document: int, epoch: int) -> TokenStream:
        if self.is_speech_text:
            return interleave_document(self.dataset[document], self.vocab, self.config.interleave, epoch, document)
        first, last = self.dataset.document_indices[document], self.dataset.document_indices[document + 1]
        ids = np.concatenate([self.dataset[int(i)] for i in range(first, last)] or [np.empty(0, np.int64)])
        return text_document_stream(ids, self.vocab, self.config.interleave.text_document_marker)

    def _fingerprint(self) -> dict:
        """What identifies the corpus in the cache's manifest (the hash keys only its path)."""
        lengths = np.asarray(self.dataset.sequence_lengths)
        return {"documents": int(self.numel_low_level_dataset(self.dataset)), "sequences": len(lengths),
                "tokens": int(lengths.sum(dtype=np.int64))}

    def _build_plans(self) -> plan_cache.PlanArrays:
        """Plans for epochs 0, 1, ... until they hold ``num_samples`` samples (one epoch for None)."""
        start = time.perf_counter()
        shapes = stream_shapes(self.dataset, self.vocab, self.config.interleave, self.packing.patch_size,
                               self.config.plan_workers)
        plans: list[PackedPlan] = []
        total = 0
        while not plans if self.num_samples is None else total < self.num_samples:
            epoch = len(plans)
            order = self.document_order(epoch)
            epoch_shapes = shapes.epoch(order, epoch)
            plan = pack_documents(epoch_shapes.num_tokens, epoch_shapes.num_positions, epoch_shapes.speech_mask,
                                  self.packing)
            plan.piece_documents = order[plan.piece_documents]
            plans.append(plan)
            total += len(plan)
        arrays = _concatenate_plans(plans)
        self.plan_build_seconds = time.perf_counter() - start
        logger.info("%s (%s): packing plans of %d epochs, %d samples built in %.2f s", self.dataset_path,
                    self.index_split.name, len(plans), total, self.plan_build_seconds)
        return arrays

    def _load_or_build_plans(self) -> plan_cache.PlanArrays:
        folder, fingerprint = self._plan_folder, self._fingerprint()
        try:
            return plan_cache.load(folder, fingerprint)
        except plan_cache.PlanCacheError as error:
            problem = error
        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            raise RuntimeError(
                f"{problem}. Global rank 0 builds the packing plans and the other ranks load them: build the "
                "datasets with BlendedMegatronDatasetBuilder (build_lst_datasets), which constructs them on rank 0 "
                "before the others, with a path_to_cache (--data-cache-path) that every rank can read"
            )
        if isinstance(problem, plan_cache.PlanCacheDamaged):
            logger.warning("%s; rebuilding the packing plans", problem)
        plan_cache.save(folder, self._build_plans(), self.unique_description, fingerprint)
        return plan_cache.load(folder, fingerprint, verify_checksums=False)

    # ------------------------------------------------------------------ samples
    @property
    def epoch_sizes(self) -> np.ndarray:
        """Samples per built epoch."""
        return np.diff(np.asarray(self._plans.epoch_sample_offsets))

    def mean_tokens_per_sample(self, epoch: int = 0) -> float:
        """Mean token count of epoch ``epoch``'s samples, from the plan (no sample is read)."""
        first, last = (int(v) for v in np.asarray(self._plans.epoch_sample_offsets)[epoch:epoch + 2])
        counts = np.asarray(self._plans.sample_num_tokens[first:last], dtype=np.float64)
        return float(counts.mean()) if len(counts) else 0.0

    def _check_index(self, idx: int) -> int:
        idx = int(idx)
        if not 0 <= idx < min(self._length, self._plans.num_samples):
            raise IndexError(f"{self.dataset_path}: sample {idx} out of range [0, {self._length})")
        return idx

    def locate(self, idx: int) -> tuple[int, int]:
        """(epoch, sample within epoch) of global sample ``idx``."""
        idx = self._check_index(idx)
        offsets = self._plans.epoch_sample_offsets
        epoch = int(np.searchsorted(offsets, idx, side="right")) - 1
        return epoch, idx - int(offsets[epoch])

    def num_tokens(self, idx: int) -> int:
        """``len(self[idx]["tokens"])`` from the plan, without reading the sample."""
        return int(self._plans.sample_num_tokens[self._check_index(idx)])

    def num_positions(self, idx: int) -> int:
        """``self[idx]["num_positions"]`` (static patches) from the plan, without reading the sample."""
        return int(self._plans.sample_num_positions[self._check_index(idx)])

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        epoch, _ = self.locate(idx)
        idx = int(idx)
        plans = self._plans
        first, last = int(plans.sample_offsets[idx]), int(plans.sample_offsets[idx + 1])
        pieces = zip(plans.piece_documents[first:last].tolist(), plans.piece_starts[first:last].tolist(),
                     plans.piece_ends[first:last].tolist())
        columns: dict[str, list[np.ndarray]] = {name: [] for name in SAMPLE_FIELDS}
        next_segment = 0
        for document_number, (document, start, end) in enumerate(pieces):
            stream = self.stream(document, epoch)
            segment_ids = stream.segment_ids[start:end].copy()
            speech = segment_ids >= 0
            if speech.any():
                segment_ids[speech] += next_segment - segment_ids[speech].min()
                next_segment = int(segment_ids[speech].max()) + 1
            opening = 1 if start else 0  # a continued document reopens with BOS (see plan_packing)
            pieces_of = {"tokens": stream.tokens[start:end], "is_speech": stream.is_speech[start:end],
                         "segment_ids": segment_ids, "is_silence": stream.is_silence[start:end]}
            opener = {"tokens": self.vocab.bos_id, "is_speech": False, "segment_ids": -1, "is_silence": False}
            for name, values in pieces_of.items():
                columns[name].append(np.concatenate([np.full(opening, opener[name], values.dtype), values]))
            columns["document_ids"].append(np.full(end - start + opening, document_number, np.int32))
        sample = {name: np.concatenate(parts) for name, parts in columns.items()}
        sample["num_positions"] = np.int64(count_global_positions(sample, self.packing.patch_size))
        return sample

    def padding_fraction(self, epoch: int = 0) -> float:
        """Share of epoch ``epoch``'s global positions that are padding."""
        size = int(self.epoch_sizes[epoch])
        used = int(self._plans.epoch_positions_used[epoch])
        return 1.0 - used / (size * self.packing.seq_length) if size else 0.0


def _smallest_int(values: np.ndarray) -> np.ndarray:
    """int32 when every value fits (halves the cache), else int64."""
    values = np.asarray(values, dtype=np.int64)
    fits = not len(values) or (values.min() >= np.iinfo(np.int32).min and values.max() <= np.iinfo(np.int32).max)
    return values.astype(np.int32) if fits else values


def _concatenate_plans(plans: list[PackedPlan]) -> plan_cache.PlanArrays:
    """One epoch after the other; sample offsets shifted to index the concatenated pieces."""
    piece_bases = np.cumsum([0] + [len(plan.piece_documents) for plan in plans])
    sample_offsets = [plan.sample_offsets[:-1] + base for plan, base in zip(plans, piece_bases)]
    return plan_cache.PlanArrays(
        piece_documents=_smallest_int(np.concatenate([p.piece_documents for p in plans] or [np.zeros(0)])),
        piece_starts=_smallest_int(np.concatenate([p.piece_starts for p in plans] or [np.zeros(0)])),
        piece_ends=_smallest_int(np.concatenate([p.piece_ends for p in plans] or [np.zeros(0)])),
        sample_offsets=np.concatenate(sample_offsets + [piece_bases[-1:]]).astype(np.int64),
        sample_num_tokens=_smallest_int(np.concatenate([p.sample_num_tokens for p in plans] or [np.zeros(0)])),
        sample_num_positions=_smallest_int(np.concatenate([p.sample_num_positions for p in plans] or [np.zeros(0)])),
        epoch_sample_offsets=np.cumsum([0] + [len(plan) for plan in plans]).astype(np.int64),
        epoch_positions_used=np.asarray([plan.positions_used for plan in plans], dtype=np.int64),
    )
