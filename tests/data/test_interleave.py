"""Interleaving: configured speech:text ratio, real word spans, markers at switches, modes, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_lst.data.interleave import (
    SPEECH,
    TEXT,
    InterleaveConfig,
    choose_spans,
    document_rng,
    interleave_document,
)
from megatron_lst.data.speech_documents import SpeechTextDocument
from megatron_lst.tokenizer import VocabLayout

VOCAB = VocabLayout(text_vocab_size=100, num_units=20)


def synthetic_document(rng: np.random.Generator, num_words: int) -> SpeechTextDocument:
    """Words (text id = 10 + word index % 50) separated by occasional silences."""
    silence, text_lengths, unit_lengths = [], [], []
    for word in range(num_words):
        if rng.random() < 0.3:
            silence.append(True); text_lengths.append(0); unit_lengths.append(int(rng.integers(1, 30)))
        silence.append(False); text_lengths.append(int(rng.integers(1, 3))); unit_lengths.append(int(rng.integers(0, 9)))
    text_ids = np.concatenate([np.full(n, 0) for n in text_lengths] or [np.empty(0, np.int64)]).astype(np.int64)
    text_offsets = np.concatenate(([0], np.cumsum(text_lengths))).astype(np.int64)
    word_segments = np.flatnonzero(~np.asarray(silence, bool))
    for word, segment in enumerate(word_segments):
        text_ids[text_offsets[segment]:text_offsets[segment + 1]] = 10 + word % 50
    units = rng.integers(0, 20, size=int(sum(unit_lengths)))
    return SpeechTextDocument(
        transcript_ids=np.arange(num_words) % 50 + 10, text_ids=text_ids, text_offsets=text_offsets,
        unit_ids=units, unit_offsets=np.concatenate(([0], np.cumsum(unit_lengths))).astype(np.int64),
        segment_is_silence=np.asarray(silence, bool),
    )


@pytest.mark.parametrize("ratio", [0.5, 1.0, 0.25])
def test_speech_text_word_ratio_over_10k_documents(ratio):
    """The length-biased opening keeps the ratio exact; the reference's 2-15-word opening speech span
    (the default) shifts it by a few percent when 15 words are far from ratio x the text span."""
    config = InterleaveConfig(speech_text_ratio=ratio, opening_speech_uniform=False)
    lengths = np.random.default_rng(0).integers(1, 300, size=10_000)
    words = np.zeros(2)
    for document, num_words in enumerate(lengths):
        spans = choose_spans(int(num_words), document_rng(7, 0, document), config)
        assert spans[0].first_word == 0 and spans[-1].end_word == num_words
        for before, after in zip(spans, spans[1:]):
            assert before.end_word == after.first_word and before.modality != after.modality
        for span in spans:
            words[span.modality] += span.num_words
    assert abs(words[SPEECH] / words[TEXT] / ratio - 1) < 0.02


def test_span_lengths_follow_the_reference_rules():
    config = InterleaveConfig()
    for document in range(500):
        spans = choose_spans(400, document_rng(1, 0, document), config)
        # The first cycle starts part-way through (see choose_spans); the last block is truncated.
        inner = spans[2:-1]
        for previous, span in zip(spans[1:], inner):
            if span.modality == TEXT:
                assert 5 <= span.num_words <= 30
            else:
                assert span.num_words in (previous.num_words // 2, previous.num_words // 2 + 1)


def test_text_spans_are_real_word_spans_and_markers_sit_at_switches():
    rng = np.random.default_rng(1)
    config = InterleaveConfig()
    for index in range(200):
        document = synthetic_document(rng, int(rng.integers(1, 80)))
        stream = interleave_document(document, VOCAB, config, epoch=0, document_index=index)
        tokens = stream.tokens
        assert tokens[0] == VOCAB.bos_id and tokens[-1] == VOCAB.eos_id
        body = tokens[1:-1]
        markers = np.isin(body, [VOCAB.text_marker_id, VOCAB.speech_marker_id])
        is_text = (body < VOCAB.text_vocab_size)
        kinds = np.where(stream.is_speech[1:-1], SPEECH, np.where(is_text, TEXT, -1))
        content = kinds[~markers]
        switches = np.flatnonzero(np.diff(content) != 0) + 1
        assert markers.sum() == len(switches) + (1 if len(content) else 0)
        assert markers[0] or not len(content)
        marker_positions = np.flatnonzero(markers)
        for marker, kind in zip(marker_positions, kinds[np.minimum(marker_positions + 1, len(kinds) - 1)]):
            expected = VOCAB.speech_marker_id if kind == SPEECH else VOCAB.text_marker_id
            assert body[marker] == expected
        text_words = body[is_text] - 10
        runs = np.split(text_words, np.flatnonzero(np.diff(np.flatnonzero(is_text)) > 1) + 1)
        for run in (run for run in runs if len(run)):
            unique = run[np.concatenate(([True], np.diff(run) != 0))]
            assert np.all(np.diff(unique) % 50 == 1)
        speech = stream.is_speech
        assert np.all(np.diff(stream.segment_ids[speech]) >= 0)
        assert np.all(stream.segment_ids[~speech] == -1)
        assert np.all(tokens[speech] >= VOCAB.unit_offset)


def test_spans_change_with_epoch_and_repeat_with_same_key():
    config = InterleaveConfig()
    first = [(s.modality, s.end_word) for s in choose_spans(200, document_rng(3, 0, 9), config)]
    again = [(s.modality, s.end_word) for s in choose_spans(200, document_rng(3, 0, 9), config)]
    other_epoch = [(s.modality, s.end_word) for s in choose_spans(200, document_rng(3, 1, 9), config)]
    assert first == again and first != other_epoch


def test_border_silence_is_half_trimmed():
    # Segments: silence(10) word(4) silence(6) word(4); speaking word 0 keeps 5 + 4 + 3 units.
    document = SpeechTextDocument(
        transcript_ids=np.array([10, 11]), text_ids=np.array([10, 11]), text_offsets=np.array([0, 0, 1, 1, 2]),
        unit_ids=np.arange(24) % 20, unit_offsets=np.array([0, 10, 14, 20, 24]),
        segment_is_silence=np.array([True, False, True, False]),
    )
    config = InterleaveConfig(speech_text_ratio=1.0, min_last_block_words=0, opening_speech_uniform=False)
    for index in range(500):
        stream = interleave_document(document, VOCAB, config, 0, index)
        if [(span.modality, span.num_words) for span in stream.spans] == [(SPEECH, 1), (TEXT, 1)]:
            # speech word 0 keeps the second half of the leading silence and first half of the gap
            assert stream.is_speech.sum() == 5 + 4 + 3
            assert stream.is_silence.sum() == 5 + 3
            return
    pytest.fail("no draw started with a one-word speech span")


@pytest.mark.parametrize("mode, first_marker, second_marker", [
    ("speech", "s", None), ("text", "t", None), ("asr", "s", "t"), ("tts", "t", "s")])
def test_fixed_modes(mode, first_marker, second_marker):
    document = synthetic_document(np.random.default_rng(2), 12)
    stream = interleave_document(document, VOCAB, InterleaveConfig(mode=mode), 0, 0)
    marker_ids = {"s": VOCAB.speech_marker_id, "t": VOCAB.text_marker_id}
    markers = [t for t in stream.tokens.tolist() if t in marker_ids.values()]
    assert markers == [marker_ids[m] for m in (first_marker, second_marker) if m]
    assert stream.tokens[1] == marker_ids[first_marker]
    if mode in ("speech", "asr", "tts"):
        assert stream.is_speech.sum() == len(document.unit_ids)


def test_opening_speech_span_draws_two_to_fifteen_words_when_asked():
    """The reference's 'otherwise' branch: a document that opens in speech draws 2-15 words for
    that span; a document that opens in text is spanned exactly as by default."""
    default, uniform = InterleaveConfig(), InterleaveConfig(opening_speech_uniform=True)
    openings = []
    for document in range(2000):
        plain = choose_spans(400, document_rng(3, 0, document), default)
        spans = choose_spans(400, document_rng(3, 0, document), uniform)
        if plain[0].modality == TEXT:
            assert [(s.modality, s.first_word, s.end_word) for s in spans] == \
                [(s.modality, s.first_word, s.end_word) for s in plain]
            continue
        assert spans[0].modality == SPEECH
        openings.append(spans[0].num_words)
        assert spans[1].modality == TEXT and 5 <= spans[1].num_words <= 30
    assert len(openings) > 300 and set(openings) == set(range(2, 16))  # every length of the range, no other


def test_opening_speech_range_is_checked():
    with pytest.raises(ValueError, match="min_opening_speech_words"):
        InterleaveConfig(min_opening_speech_words=9, max_opening_speech_words=3)


@pytest.mark.parametrize("marker, expected", [(False, ["B", 7, 8, "E"]), (True, ["B", "T", 7, 8, "E"])])
def test_text_corpus_documents_carry_t_only_when_asked(marker, expected):
    from megatron_lst.data.datasets import text_document_stream

    names = {VOCAB.bos_id: "B", VOCAB.eos_id: "E", VOCAB.text_marker_id: "T"}
    for ids in ([7, 8], [7, 8, VOCAB.eos_id]):  # an EOD the preprocessor appended is reused
        stream = text_document_stream(np.array(ids), VOCAB, marker)
        assert [names.get(int(t), int(t)) for t in stream.tokens] == expected
        assert not stream.is_speech.any() and (stream.segment_ids == -1).all()
    assert len(text_document_stream(np.array([], np.int64), VOCAB, marker).tokens) == 2  # BOS EOS, no marker


def test_interleaving_flags_reach_the_interleave_config():
    from megatron_lst.training.arguments import parse_args
    from megatron_lst.training.data_modes import interleave_config

    data = parse_args(["--no-opening-speech-uniform", "--no-text-document-marker", "--seed", "3"]).data
    config = interleave_config(data.data_mode, data.seed, data.opening_speech_uniform, data.text_document_marker)
    assert (config.opening_speech_uniform, config.text_document_marker, config.seed) == (False, False, 3)
    defaults = parse_args([]).data  # the reference code's rules
    assert (defaults.opening_speech_uniform, defaults.text_document_marker) == (True, True)
