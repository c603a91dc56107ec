"""ASR/TTS metrics: edit distance, WER normalisation, unit error rate, generation cost."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_lst.evaluation.asr_tts import (
    collapse_repeats,
    edit_distance,
    generation_cost,
    python_edit_distance,
    unit_error_rate,
    word_error_rate,
)


@pytest.mark.parametrize("distance", [edit_distance, python_edit_distance])
def test_edit_distance(distance):  # rapidfuzz (when installed) and the Python programme
    assert distance("kitten", "sitting") == 3
    assert distance([], [1, 2]) == 2
    assert distance([1, 2, 3], [1, 2, 3]) == 0


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


@settings(max_examples=200, deadline=None, derandomize=True)
@given(reference=st.lists(st.integers(0, 5), max_size=30), hypothesis=st.lists(st.integers(0, 5), max_size=30))
def test_rapidfuzz_and_python_distances_agree(reference, hypothesis):
    assert edit_distance(reference, hypothesis) == python_edit_distance(reference, hypothesis)


def test_words_compare_by_value():
    assert edit_distance(["the", "cat", "sat"], ["the", "bat", "sat", "down"]) == 2
