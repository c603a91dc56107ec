"""ASR/TTS metrics: edit distance, WER normalisation, unit error rate, generation cost."""

from __future__ import annotations

import pytest

from megatron_lst.evaluation.asr_tts import (
    collapse_repeats,
    edit_distance,
    generation_cost,
    unit_error_rate,
    word_error_rate,
)


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], [1, 2]) == 2
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0


def test_word_error_rate_normalises_case_and_punctuation():
    assert word_error_rate(["Hello, world!"], ["hello world"]) == 0.0
    # one substitution and one deletion over 4 + 1 reference words
    assert word_error_rate(["the cat sat down", "yes"], ["the dog sat", "yes"]) == pytest.approx(2 / 5)
    assert word_error_rate(["a b"], ["a b c d"]) == pytest.approx(1.0)


def test_unit_error_rate_collapses_repeats():
    assert collapse_repeats([1, 1, 2, 2, 2, 1]) == [1, 2, 1]
    assert unit_error_rate([[1, 1, 2, 2]], [[1, 2, 2, 2, 2]]) == 0.0
    assert unit_error_rate([[1, 1, 2, 2]], [[1, 2, 2, 2, 2]], collapse=False) == pytest.approx(0.5)


def test_generation_cost_per_second_of_speech():
    cost = generation_cost([50, 50], [13, 13], wall_seconds=2.0)  # 4 s of speech at 25 units/s
    assert cost.speech_seconds == pytest.approx(4.0)
    assert cost.global_steps_per_second == pytest.approx(6.5)
    assert cost.wall_seconds_per_second == pytest.approx(0.5)
