"""espeak-ng through ctypes: real synthesis, word timings that cover every word in order."""

import numpy as np
import pytest

from megatron_lst.demo.espeak import (
    _EVENT_PHONEME,
    _EVENT_WORD,
    _RawEvent,
    espeak_available,
    get_espeak,
    group_word_timings,
)
from megatron_lst.demo.normalise import words_of

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="pip install espeakng-loader")

SENTENCES = [
    ("Karen walked in the attack, and then she said no.", 10),
    ("It gives you so much more confidence at fifty per cent.", 11),
    ("Glenn McGrath took three wickets. Later it was over!", 9),
]


@needs_espeak
@pytest.mark.parametrize("text, num_words", SENTENCES)
@pytest.mark.parametrize("voice, rate", [("en-us", 175), ("en-gb-x-rp", 150), ("en-us+f3", 200)])
def test_every_word_gets_one_ordered_timing(text, num_words, voice, rate):
    synthesis = get_espeak().synthesize(text, voice=voice, rate=rate)
    assert synthesis.sample_rate == 22050
    assert len(synthesis.words) == num_words == len(words_of(text))
    assert [w.text for w in synthesis.words] == words_of(text)
    previous_end = 0
    for word in synthesis.words:
        assert previous_end <= word.start < word.end <= len(synthesis.waveform)
        previous_end = word.end
    assert np.abs(synthesis.waveform).max() > 0.05


@needs_espeak
def test_words_are_where_the_sound_is():
    """Energy inside word spans is far above energy in the pause after a sentence end."""
    synthesis = get_espeak().synthesize("Hello there. Goodbye now.")
    words = synthesis.words
    pause = synthesis.waveform[words[1].end:words[2].start]
    inside = synthesis.waveform[words[0].start:words[0].end]
    assert len(pause) > 0.1 * synthesis.sample_rate
    assert np.sqrt(np.mean(pause**2)) < 0.1 * np.sqrt(np.mean(inside**2))


@needs_espeak
def test_same_text_nearly_same_audio_and_rate_changes_duration():
    """espeak-ng carries a little state between calls (a jitter of a few samples), so repeated
    synthesis is equal up to a millisecond or two, not bit for bit."""
    engine = get_espeak()
    first = engine.synthesize("The same words twice.", voice="en", rate=170)
    second = engine.synthesize("The same words twice.", voice="en", rate=170)
    assert abs(len(first.waveform) - len(second.waveform)) < 0.005 * first.sample_rate
    for a, b in zip(first.words, second.words, strict=True):
        assert a.text == b.text and abs(a.start - b.start) < 0.005 * first.sample_rate
    slow = engine.synthesize("The same words twice.", voice="en", rate=120)
    assert slow.duration_s > first.duration_s * 1.2


@needs_espeak
def test_unknown_voice_is_an_error():
    with pytest.raises(ValueError, match="no voice"):
        get_espeak().synthesize("Hello.", voice="en-gb")


def _word(position, sample):
    return _RawEvent(_EVENT_WORD, position, sample, "")


def _phoneme(sample, name="a"):
    return _RawEvent(_EVENT_PHONEME, 0, sample, name)


def test_grouping_rule_on_synthetic_events():
    """'in the' share one event and split at a phoneme border; a pause ends 'attack'; an event one
    character into 'per' and a second event inside 'McGrath' are snapped to their words."""
    text = "in the attack, per McGrath."
    events = [
        _word(1, 0), _phoneme(0), _phoneme(100), _phoneme(200), _phoneme(300),
        _word(8, 400), _phoneme(400), _phoneme(700), _phoneme(900, ""),
        _word(17, 1000), _phoneme(1000), _phoneme(1100),
        _word(20, 1200), _phoneme(1200), _word(22, 1300), _phoneme(1300),
    ]
    timings = group_word_timings(text, events, num_samples=1500)
    assert [(t.text, t.start, t.end) for t in timings] == [
        ("in", 0, 200), ("the", 200, 400), ("attack", 400, 900), ("per", 1000, 1200),
        ("McGrath", 1200, 1500)]
