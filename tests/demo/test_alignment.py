"""Sample timings -> 25 Hz word spans: rounding, repair, and agreement with espeak's own times."""

import pytest

from megatron_lst.demo.alignment import frame_spans
from megatron_lst.demo.espeak import WordTiming, espeak_available, get_espeak
from megatron_lst.demo.units import num_unit_frames

RATE = 16_000  # 640 samples per 40 ms frame


def test_spans_round_to_nearest_frame():
    words = [WordTiming("a", 0, 1300), WordTiming("b", 1300, 3100)]
    spans = frame_spans(words, RATE, num_frames=10)
    assert [(s.start, s.end) for s in spans] == [(0, 2), (2, 5)]


def test_short_and_overlapping_words_are_repaired():
    words = [WordTiming("a", 0, 100), WordTiming("b", 100, 200), WordTiming("c", 200, 6400)]
    spans = frame_spans(words, RATE, num_frames=10)
    assert [(s.start, s.end) for s in spans] == [(0, 1), (1, 2), (2, 10)]


def test_spans_never_pass_the_last_frame():
    words = [WordTiming("a", 0, 6000), WordTiming("b", 6300, 6400)]
    spans = frame_spans(words, RATE, num_frames=10)
    assert [(s.start, s.end) for s in spans] == [(0, 9), (9, 10)]
    with pytest.raises(ValueError):
        frame_spans(words, RATE, num_frames=1)


@pytest.mark.skipif(not espeak_available(), reason="pip install espeakng-loader")
@pytest.mark.parametrize("text, num_words", [
    ("Hundreds of people have been forced to vacate their homes.", 10),
    ("A new blaze near Goulburn has forced the closure of the Hume Highway.", 13),
    ("In the series so far, there's been some great catches, he said.", 12),
])
def test_unit_spans_match_espeak_timings(text, num_words):
    synthesis = get_espeak().synthesize(text, voice="en-us", rate=170)
    num_frames = num_unit_frames(len(synthesis.waveform), synthesis.sample_rate)
    spans = frame_spans(synthesis.words, synthesis.sample_rate, num_frames)
    assert len(spans) == num_words
    for span, timing in zip(spans, synthesis.words):
        assert span.text == timing.text
        assert abs(span.start - timing.start / synthesis.sample_rate * 25) <= 1.0
        assert abs(span.end - timing.end / synthesis.sample_rate * 25) <= 1.0
        assert span.end > span.start
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))
    assert spans[-1].end <= num_frames
