"""The shape of every document stream of an epoch (tokens, speech runs) from the index alone.

Packing needs only each stream's ``is_speech`` mask, and a mask is fixed by a few numbers: the
stream is ``BOS [marker run] [marker run] ... EOS`` where a run is text or speech. So instead of
reading and interleaving every document (what ``PackedLSTDataset.stream`` does for one sample),
the shapes here are computed from the indexed dataset's sequence lengths with numpy over the whole
corpus at once:

- a text-corpus document (Megatron GPT dataset) is ``BOS text EOS`` (an EOD the preprocessor
  appended is reused), ``BOS <t> text EOS`` with ``InterleaveConfig.text_document_marker``: its
  shape is its length, and its last token decides the EOD case;
- a speech-text document becomes a list of *emits* ``(modality, count)`` in stream order; the
  interleaved mode draws its spans per (seed, epoch, document) with ``choose_spans`` itself (the one
  per-document Python step, kept so that the spans are the interleaver's by construction) and
  every count follows from cumulative sums of the per-segment text and unit lengths.

An emit of zero tokens emits nothing (no marker either), and consecutive emits of one modality
share one marker and, for speech, one run: exactly ``StreamBuilder``'s rules. ``speech_mask``
rebuilds one stream's mask when packing has to cut a document; tests check every mask against
``interleave_document``.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from dataclasses import dataclass

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset, get_bin_path

from megatron_lst.data.interleave import (
    ASR,
    SPEECH,
    SPEECH_ONLY,
    TEXT,
    TEXT_ONLY,
    TTS,
    InterleaveConfig,
    choose_spans,
    document_rng,
)
from megatron_lst.data.speech_documents import SpeechTextDocuments
from megatron_lst.data.speech_layout import MODE_SILENCE_TEXT, MODE_TRANSCRIPT
from megatron_lst.tokenizer import VocabLayout

PARALLEL_MIN_DOCUMENTS = 50_000
MAX_DEFAULT_WORKERS = 16


def default_plan_workers() -> int:
    """This process's share of its CPUs, at most ``MAX_DEFAULT_WORKERS``.

    The share divides by torchrun's ``LOCAL_WORLD_SIZE``: without a cache path every rank of a node
    builds its own plans at the same time.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(cpus // ranks_here, MAX_DEFAULT_WORKERS))


def _draw_spans(order: np.ndarray, num_words: np.ndarray, first_position: int, epoch: int,
                config: InterleaveConfig) -> tuple[np.ndarray, ...]:
    """Spans of ``order``'s documents, positions counted from ``first_position`` (a pool job)."""
    positions: list[int] = []
    modalities: list[int] = []
    firsts: list[int] = []
    ends: list[int] = []
    for position, (document, words) in enumerate(zip(order.tolist(), num_words.tolist()), first_position):
        if not words:
            continue  # no spans: all units (the draws of an empty document are never used)
        for span in choose_spans(words, document_rng(config.seed, epoch, document), config):
            positions.append(position)
            modalities.append(span.modality)
            firsts.append(span.first_word)
            ends.append(span.end_word)
    return tuple(np.asarray(values, dtype=np.int64) for values in (positions, modalities, firsts, ends))


def _with_zero(values: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(values, dtype=np.int64)))


@dataclass
class EpochShapes:
    """Per-document counts of one epoch, in epoch order (``order[i]`` is position i's document).

    ``num_positions`` counts static patches of the whole stream (one per non-speech token,
    ``ceil(run / p)`` per speech run), the budget ``plan_packing`` charges for a whole document.
    Emits are flat arrays sorted by position; ``emit_offsets[i]:emit_offsets[i + 1]`` are position
    i's non-empty emits.
    """

    order: np.ndarray
    num_tokens: np.ndarray
    num_positions: np.ndarray
    emit_offsets: np.ndarray | None = None
    emit_speech: np.ndarray | None = None
    emit_counts: np.ndarray | None = None
    emit_marked: np.ndarray | None = None

    def speech_mask(self, position: int) -> np.ndarray:
        """``is_speech`` of the stream at ``position`` (what ``interleave_document`` would give)."""
        length = int(self.num_tokens[position])
        mask = np.zeros(length, dtype=bool)
        if self.emit_offsets is None:
            return mask
        first, last = int(self.emit_offsets[position]), int(self.emit_offsets[position + 1])
        cursor = 1  # BOS
        for speech, count, marked in zip(self.emit_speech[first:last].tolist(), self.emit_counts[first:last].tolist(),
                                         self.emit_marked[first:last].tolist()):
            cursor += marked
            mask[cursor:cursor + count] = speech
            cursor += count
        if cursor + 1 != length:
            raise AssertionError(f"stream shape of position {position}: {cursor + 1} tokens rebuilt, {length} counted")
        return mask


def shapes_from_emits(order: np.ndarray, position: np.ndarray, speech: np.ndarray, counts: np.ndarray,
                      patch_size: int) -> EpochShapes:
    """Token and position counts of streams given their emits (``position`` sorted, stream order)."""
    keep = counts > 0
    position, speech, counts = position[keep], speech[keep], counts[keep].astype(np.int64)
    num_documents = len(order)
    starts_document = np.ones(len(position), dtype=bool)
    starts_document[1:] = position[1:] != position[:-1]
    changes = np.ones(len(position), dtype=bool)
    changes[1:] = speech[1:] != speech[:-1]
    marked = starts_document | changes  # a marker wherever the modality changes, and first in a stream
    markers = np.bincount(position, weights=marked, minlength=num_documents).astype(np.int64)
    payload = np.bincount(position, weights=counts, minlength=num_documents).astype(np.int64)
    num_tokens = 2 + markers + payload  # BOS ... EOS
    # speech runs: maximal groups of speech emits with no marker between them
    group = np.cumsum(marked) - 1
    run_lengths = np.bincount(group, weights=np.where(speech, counts, 0)).astype(np.int64)
    run_positions = -(-run_lengths // patch_size)  # ceil(run / p); 0 for a text group
    group_position = position[marked]
    speech_positions = np.bincount(group_position, weights=run_positions, minlength=num_documents).astype(np.int64)
    speech_tokens = np.bincount(group_position, weights=run_lengths, minlength=num_documents).astype(np.int64)
    return EpochShapes(
        order=order,
        num_tokens=num_tokens,
        num_positions=num_tokens - speech_tokens + speech_positions,
        emit_offsets=np.searchsorted(position, np.arange(num_documents + 1)),
        emit_speech=speech,
        emit_counts=counts,
        emit_marked=marked.astype(np.int64),
    )


class TextStreamShapes:
    """Shapes of ``BOS [<t>] text EOS`` streams of a Megatron GPT indexed dataset: no per-document work.

    ``marker``: ``InterleaveConfig.text_document_marker`` (a ``<t>`` before non-empty text)."""

    def __init__(self, dataset: IndexedDataset, vocab: VocabLayout, marker: bool = False):
        lengths = np.asarray(dataset.sequence_lengths, dtype=np.int64)
        bounds = np.asarray(dataset.document_indices, dtype=np.int64)
        document_lengths = np.diff(_with_zero(lengths)[bounds])
        ends_with_eos = np.zeros(len(document_lengths), dtype=bool)
        nonempty = np.flatnonzero(document_lengths > 0)
        if len(nonempty):
            ends_with_eos[nonempty] = self._last_tokens(dataset, lengths, bounds, nonempty) == vocab.eos_id
        text_tokens = document_lengths - ends_with_eos
        self.num_tokens = text_tokens + 2 + (marker & (text_tokens > 0))

    @staticmethod
    def _last_tokens(dataset: IndexedDataset, lengths: np.ndarray, bounds: np.ndarray,
                     documents: np.ndarray) -> np.ndarray:
        """The last token of each listed (non-empty) document, gathered from the .bin in one go.

        Megatron's writer lays sequences out back to back (each pointer is the previous one plus its
        bytes); when that holds a document's last token sits just before the end of its last
        sequence. Otherwise the tokens are read one document at a time.
        """
        pointers = np.asarray(dataset.index.sequence_pointers, dtype=np.int64)
        itemsize = np.dtype(dataset.index.dtype).itemsize
        if len(pointers) and np.array_equal(pointers[1:], pointers[:-1] + lengths[:-1] * itemsize) and pointers[0] % itemsize == 0:
            last_sequence = bounds[documents + 1] - 1
            end = pointers[last_sequence] // itemsize + lengths[last_sequence]
            data = np.memmap(get_bin_path(dataset.path_prefix), dtype=dataset.index.dtype, mode="r")
            return np.asarray(data[end - 1], dtype=np.int64)
        tokens = []
        for document in documents.tolist():
            last = int(bounds[document + 1]) - 1
            while lengths[last] == 0:
                last -= 1
            tokens.append(int(dataset.get(last, offset=int(lengths[last]) - 1, length=1)[0]))
        return np.asarray(tokens, dtype=np.int64)

    def epoch(self, order: np.ndarray, epoch: int) -> EpochShapes:
        del epoch  # a text stream is the same every epoch
        num_tokens = self.num_tokens[order]
        return EpochShapes(order=order, num_tokens=num_tokens, num_positions=num_tokens.copy())


class SpeechTextStreamShapes:
    """Shapes of interleaved (or speech/text/ASR/TTS) streams of a speech-text indexed dataset."""

    def __init__(self, documents: SpeechTextDocuments, config: InterleaveConfig, patch_size: int, workers: int = 0):
        self.config = config
        self.patch_size = patch_size
        self.workers = workers
        starts = documents.document_starts
        lengths, modes = documents.sequence_lengths, documents.sequence_modes
        transcripts = starts[:-1]
        if np.any(modes[transcripts] != MODE_TRANSCRIPT):
            bad = int(np.flatnonzero(modes[transcripts] != MODE_TRANSCRIPT)[0])
            raise ValueError(f"{documents.prefix}: document {bad} does not start with a transcript")
        segments_per_document = np.diff(starts) - 1
        if np.any(segments_per_document % 2):
            bad = int(np.flatnonzero(segments_per_document % 2)[0])
            raise ValueError(f"{documents.prefix}: document {bad} has an odd number of segment sequences")
        is_segment = np.ones(len(lengths), dtype=bool)
        is_segment[transcripts] = False
        segment_sequences = np.flatnonzero(is_segment)
        text_sequences, unit_sequences = segment_sequences[0::2], segment_sequences[1::2]
        self.transcript_lengths = lengths[transcripts].astype(np.int64)
        self.unit_lengths = lengths[unit_sequences].astype(np.int64)
        self.silence = modes[text_sequences] == MODE_SILENCE_TEXT
        self.segment_offsets = _with_zero(segments_per_document // 2)
        self.text_cumulative = _with_zero(lengths[text_sequences])
        self.unit_cumulative = _with_zero(self.unit_lengths)
        self.word_segments = np.flatnonzero(~self.silence)
        self.word_offsets = np.searchsorted(self.word_segments, self.segment_offsets)
        self.document_units = np.diff(self.unit_cumulative[self.segment_offsets])

    def epoch(self, order: np.ndarray, epoch: int) -> EpochShapes:
        count = len(order)
        position = np.arange(count)
        units, transcript = self.document_units[order], self.transcript_lengths[order]
        mode = self.config.mode
        if mode == SPEECH_ONLY:
            emits = [(SPEECH, units)]
        elif mode == TEXT_ONLY:
            emits = [(TEXT, transcript)]
        elif mode == ASR:
            emits = [(SPEECH, units), (TEXT, transcript)]
        elif mode == TTS:
            emits = [(TEXT, transcript), (SPEECH, units)]
        else:
            return self._interleaved(order, epoch)
        speech = np.concatenate([np.full(count, modality == SPEECH) for modality, _ in emits])
        counts = np.concatenate([values for _, values in emits])
        positions = np.concatenate([position] * len(emits))
        by_position = np.argsort(positions, kind="stable")
        return shapes_from_emits(order, positions[by_position], speech[by_position], counts[by_position], self.patch_size)

    def draw_spans(self, order: np.ndarray, epoch: int) -> tuple[np.ndarray, ...]:
        """Every document's interleaving spans as flat arrays (position, modality, first, end word).

        This is the one per-document Python step (~50 us a document: an RNG per (seed, epoch,
        document) and ``choose_spans``); above ``PARALLEL_MIN_DOCUMENTS`` documents it is spread
        over ``workers`` forked processes. Spans do not depend on who draws them, so the result is
        the same for any number of workers.
        """
        num_words = np.diff(self.word_offsets)[order]
        workers = self.workers if self.workers > 0 else default_plan_workers()
        if workers <= 1 or len(order) < PARALLEL_MIN_DOCUMENTS or multiprocessing.current_process().daemon:
            return _draw_spans(order, num_words, 0, epoch, self.config)
        bounds = np.linspace(0, len(order), 4 * workers + 1).astype(np.int64)
        jobs = [(order[a:b], num_words[a:b], int(a), epoch, self.config) for a, b in itertools.pairwise(bounds)]
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.starmap(_draw_spans, jobs)
        return tuple(np.concatenate(column) for column in zip(*parts))

    def _interleaved(self, order: np.ndarray, epoch: int) -> EpochShapes:
        span_position, modality, first_word, end_word = self.draw_spans(order, epoch)
        document = order[span_position]
        word_base = self.word_offsets[document]
        first = self.word_segments[word_base + first_word]
        last = self.word_segments[word_base + end_word - 1]
        text_counts = self.text_cumulative[last + 1] - self.text_cumulative[first]
        unit_counts = self.unit_cumulative[last + 1] - self.unit_cumulative[first]
        segment_first, segment_end = self.segment_offsets[document], self.segment_offsets[document + 1]
        before = np.maximum(first - 1, 0)
        left = np.where((first > segment_first) & self.silence[before],
                        self.unit_lengths[before] - self.unit_lengths[before] // 2, 0)
        after = np.minimum(last + 1, len(self.silence) - 1)
        right = np.where((last + 1 < segment_end) & self.silence[after], self.unit_lengths[after] // 2, 0)
        is_speech = modality == SPEECH
        counts = np.where(is_speech, unit_counts + left + right, text_counts)
        # documents without words (no spans) emit all their units
        no_spans = np.flatnonzero(np.bincount(span_position, minlength=len(order)) == 0)
        positions = np.concatenate([span_position, no_spans])
        speech = np.concatenate([is_speech, np.ones(len(no_spans), dtype=bool)])
        counts = np.concatenate([counts, self.document_units[order[no_spans]]])
        by_position = np.argsort(positions, kind="stable")
        return shapes_from_emits(order, positions[by_position], speech[by_position], counts[by_position], self.patch_size)


def stream_shapes(dataset, vocab: VocabLayout, config: InterleaveConfig, patch_size: int, workers: int = 0):
    """The shape builder for a low-level dataset (speech-text documents or a GPT text dataset).

    ``workers``: processes that draw interleaving spans (0: ``default_plan_workers()``).
    """
    if isinstance(dataset, SpeechTextDocuments):
        return SpeechTextStreamShapes(dataset, config, patch_size, workers)
    return TextStreamShapes(dataset, vocab, config.text_document_marker)
