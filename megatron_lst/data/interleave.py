"""On-the-fly interleaving of one speech-text document into a token stream (docs/method.md §4).

Words alternate between text spans (uniform 5-30 words) and speech spans (the preceding text span
times the speech:text word ratio, 1:2 by default, stochastically rounded so the ratio holds in
expectation). The document begins at a random point of a first text+speech cycle (so the first
span may be shorter than the ranges above; see ``choose_spans``). A last block under 3
words merges into the one before it. Options for the reference code's other two rules (off by
default, see ``InterleaveConfig``): a document that opens in speech draws that opening span as
2-15 words, and text-corpus documents carry a ``<t>`` after BOS. A speech span keeps the silences inside it and half of each
silence that borders it (the half next to its words). Spans are drawn from an RNG keyed by
(seed, epoch, document), so each epoch sees new spans and a resumed run sees the same ones.

Stream convention: every document is ``BOS <marker> span <marker> span ... EOS``; the first span is
always preceded by its marker, and a marker appears exactly where the modality changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import numpy as np

from megatron_lst.choices import DataMode, check_choices
from megatron_lst.data.speech_documents import SpeechTextDocument
from megatron_lst.tokenizer import VocabLayout

INTERLEAVED = "interleaved"
SPEECH_ONLY = "speech"
TEXT_ONLY = "text"
ASR = "asr"
TTS = "tts"
MODES = get_args(DataMode)

TEXT = 0
SPEECH = 1


@dataclass(frozen=True)
class InterleaveConfig:
    """How documents become token streams; every field is part of the packing plans' cache key.

    opening_speech_uniform: the reference code's "otherwise" branch (default on). A speech span
        follows a text span and takes ``speech_text_ratio`` times its words; a document that opens
        in speech has no text span before it, so that opening span is drawn uniformly from
        ``min_opening_speech_words``..``max_opening_speech_words`` (reference: 2-15). Off, it is
        the remainder of a length-biased first cycle (``choose_spans``), which keeps every word's
        chance of being speech at ``ratio / (1 + ratio)`` whatever the document length.
    text_document_marker: put ``<t>`` after BOS in text-corpus documents (``BOS <t> text EOS``),
        as the reference code marks every text run (default on); off gives ``BOS text EOS``, the
        stream megatron's GPTDataset path of text-only runs reads.
    """

    mode: DataMode = INTERLEAVED
    speech_text_ratio: float = 0.5
    min_text_words: int = 5
    max_text_words: int = 30
    min_last_block_words: int = 3
    seed: int = 1234
    opening_speech_uniform: bool = True
    min_opening_speech_words: int = 2
    max_opening_speech_words: int = 15
    text_document_marker: bool = True

    def __post_init__(self) -> None:
        check_choices(self, flag_names=False)
        if self.speech_text_ratio <= 0:
            raise ValueError("speech_text_ratio must be positive")
        if not 1 <= self.min_text_words <= self.max_text_words:
            raise ValueError("need 1 <= min_text_words <= max_text_words")
        if not 1 <= self.min_opening_speech_words <= self.max_opening_speech_words:
            raise ValueError("need 1 <= min_opening_speech_words <= max_opening_speech_words, got "
                             f"{self.min_opening_speech_words}..{self.max_opening_speech_words}")


@dataclass
class Span:
    """Words [first_word, end_word) of a document in one modality."""

    modality: int
    first_word: int
    end_word: int

    @property
    def num_words(self) -> int:
        return self.end_word - self.first_word


def document_rng(seed: int, epoch: int, document: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, document])


def _scaled_length(rng: np.random.Generator, words: float) -> int:
    """Stochastic rounding, so the mean speech span is exactly ratio x text span."""
    return max(1, int(np.floor(words + rng.random())))


def _draw_text_length(rng: np.random.Generator, config: InterleaveConfig) -> int:
    return int(rng.integers(config.min_text_words, config.max_text_words + 1))


def choose_spans(num_words: int, rng: np.random.Generator, config: InterleaveConfig) -> list[Span]:
    """Alternating text/speech spans covering all words.

    The document starts at a uniformly random word of a first (text, speech) cycle, so that every
    word position is speech with probability ratio / (1 + ratio) whatever the document length; a
    fixed start would bias short documents towards the first modality, and an unweighted first
    cycle would bias every document towards speech or text depending on the ratio.
    With ``config.opening_speech_uniform`` a document that opens in speech draws that span
    uniformly from ``min/max_opening_speech_words`` instead (the reference code's rule).
    """
    ratio = config.speech_text_ratio
    # The cycle that covers a random word is length-biased (the inspection paradox): draw it so.
    lengths = np.arange(config.min_text_words, config.max_text_words + 1)
    text_words = int(rng.choice(lengths, p=lengths / lengths.sum()))
    speech_words = _scaled_length(rng, ratio * text_words)
    offset = int(rng.integers(0, text_words + speech_words))
    if offset < text_words:
        pending = [(TEXT, text_words - offset), (SPEECH, speech_words)]
    elif config.opening_speech_uniform:
        opening = int(rng.integers(config.min_opening_speech_words, config.max_opening_speech_words + 1))
        pending = [(SPEECH, opening)]
    else:
        pending = [(SPEECH, text_words + speech_words - offset)]
    spans: list[Span] = []
    position = 0
    while position < num_words:
        if pending:
            modality, length = pending.pop(0)
        elif spans[-1].modality == SPEECH:
            modality, length = TEXT, _draw_text_length(rng, config)
            text_words = length
        else:
            modality, length = SPEECH, _scaled_length(rng, ratio * text_words)
        length = min(length, num_words - position)
        spans.append(Span(modality, position, position + length))
        position += length
    if len(spans) > 1 and spans[-1].num_words < config.min_last_block_words:
        merged = spans.pop()
        spans[-1].end_word = merged.end_word
    return spans


@dataclass
class TokenStream:
    """One document's tokens with the per-token metadata of the sample schema."""

    tokens: np.ndarray
    is_speech: np.ndarray
    segment_ids: np.ndarray
    is_silence: np.ndarray
    spans: list[Span]


class StreamBuilder:
    """Accumulates pieces of one document's stream; segment ids count emitted unit segments."""

    def __init__(self, vocab: VocabLayout):
        self.vocab = vocab
        self.pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.next_segment = 0
        self.current_modality: int | None = None
        self._special(vocab.bos_id)

    def _special(self, token: int) -> None:
        self.pieces.append((np.array([token]), np.zeros(1, bool), np.full(1, -1, np.int32), np.zeros(1, bool)))

    def _switch(self, modality: int) -> None:
        if modality != self.current_modality:
            self._special(self.vocab.speech_marker_id if modality == SPEECH else self.vocab.text_marker_id)
            self.current_modality = modality

    def text(self, text_ids: np.ndarray) -> None:
        if len(text_ids) == 0:
            return
        self._switch(TEXT)
        count = len(text_ids)
        self.pieces.append((text_ids, np.zeros(count, bool), np.full(count, -1, np.int32), np.zeros(count, bool)))

    def units(self, unit_ids: np.ndarray, silent: bool) -> None:
        if len(unit_ids) == 0:
            return
        self._switch(SPEECH)
        count = len(unit_ids)
        self.pieces.append((
            unit_ids + self.vocab.unit_offset,
            np.ones(count, bool),
            np.full(count, self.next_segment, np.int32),
            np.full(count, silent, bool),
        ))
        self.next_segment += 1

    def finish(self, spans: list[Span]) -> TokenStream:
        self.current_modality = None
        self._special(self.vocab.eos_id)
        tokens, is_speech, segment_ids, is_silence = (np.concatenate(column) for column in zip(*self.pieces))
        return TokenStream(tokens.astype(np.int64), is_speech, segment_ids, is_silence, spans)


def _segment_units(document: SpeechTextDocument, segment: int) -> np.ndarray:
    return document.unit_ids[document.unit_offsets[segment] : document.unit_offsets[segment + 1]]


def _emit_speech_span(builder: StreamBuilder, document: SpeechTextDocument, first: int, last: int) -> None:
    """Segments first..last (words at both ends) plus the inner half of each bordering silence."""
    silence = document.segment_is_silence
    if first > 0 and silence[first - 1]:
        units = _segment_units(document, first - 1)
        builder.units(units[len(units) // 2 :], silent=True)
    for segment in range(first, last + 1):
        builder.units(_segment_units(document, segment), silent=bool(silence[segment]))
    if last + 1 < document.num_segments and silence[last + 1]:
        units = _segment_units(document, last + 1)
        builder.units(units[: len(units) // 2], silent=True)


def _emit_all_units(builder: StreamBuilder, document: SpeechTextDocument) -> None:
    for segment in range(document.num_segments):
        builder.units(_segment_units(document, segment), silent=bool(document.segment_is_silence[segment]))


def interleave_document(
    document: SpeechTextDocument,
    vocab: VocabLayout,
    config: InterleaveConfig,
    epoch: int,
    document_index: int,
) -> TokenStream:
    """The stream for ``config.mode``; interleaved spans depend only on (seed, epoch, document)."""
    builder = StreamBuilder(vocab)
    if config.mode == SPEECH_ONLY:
        _emit_all_units(builder, document)
        return builder.finish([])
    if config.mode == TEXT_ONLY:
        builder.text(document.transcript_ids)
        return builder.finish([])
    if config.mode == ASR:
        _emit_all_units(builder, document)
        builder.text(document.transcript_ids)
        return builder.finish([])
    if config.mode == TTS:
        builder.text(document.transcript_ids)
        _emit_all_units(builder, document)
        return builder.finish([])
    words = document.word_segments()
    spans = choose_spans(len(words), document_rng(config.seed, epoch, document_index), config)
    if not spans:
        _emit_all_units(builder, document)
        return builder.finish([])
    for span in spans:
        first, last = int(words[span.first_word]), int(words[span.end_word - 1])
        if span.modality == TEXT:
            builder.text(document.text_ids[document.text_offsets[first] : document.text_offsets[last + 1]])
        else:
            _emit_speech_span(builder, document, first, last)
    return builder.finish(spans)
