"""Mixed and curriculum: P(step), and a per-sequence choice that is reproducible and resumable."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from patching_samples import configs

from megatron_lst.patching import PatchingConfig, aligned_probability, choose_aligned
from megatron_lst.patching.reference import reference_aligned_probability, reference_choose_aligned


def test_curriculum_schedule() -> None:
    config = PatchingConfig(strategy="curriculum", tau1=100, tau2=200)
    expected = {0: 1.0, 99: 1.0, 100: 1.0, 150: 0.5, 175: 0.25, 199: 0.01, 200: 0.0, 10_000: 0.0}
    for step, probability in expected.items():
        assert aligned_probability(config, step) == pytest.approx(probability)
    step_function = PatchingConfig(strategy="curriculum", tau1=50, tau2=50)
    assert [aligned_probability(step_function, s) for s in (49, 50, 51)] == [1.0, 0.0, 0.0]


def test_fixed_strategies_probability() -> None:
    assert aligned_probability(PatchingConfig(strategy="static"), 7) == 0.0
    assert aligned_probability(PatchingConfig(strategy="aligned"), 7) == 1.0
    assert aligned_probability(PatchingConfig(strategy="mixed", mixed_aligned_probability=0.3), 7) == 0.3


@settings(max_examples=100, deadline=None)
@given(config=configs(), step=st.integers(0, 60), sample_ids=st.lists(st.integers(0, 2**40), max_size=20))
def test_choice_matches_reference(config: PatchingConfig, step: int, sample_ids: list) -> None:
    assert aligned_probability(config, step) == reference_aligned_probability(config, step)
    chosen = choose_aligned(config, step, np.array(sample_ids, dtype=np.int64))
    expected = [reference_choose_aligned(config, step, sample_id) for sample_id in sample_ids]
    assert chosen.tolist() == expected


def test_choice_is_keyed_by_sample_not_batch_position() -> None:
    config = PatchingConfig(strategy="curriculum", tau1=0, tau2=1000, seed=7)
    sample_ids = np.arange(1000, 1064)
    chosen = choose_aligned(config, 500, sample_ids)
    shuffled = np.random.default_rng(0).permutation(sample_ids)
    np.testing.assert_array_equal(choose_aligned(config, 500, shuffled), chosen[shuffled - 1000])
    np.testing.assert_array_equal(choose_aligned(config, 500, sample_ids), chosen)
    other_seed = choose_aligned(PatchingConfig(strategy="curriculum", tau1=0, tau2=1000, seed=8), 500, sample_ids)
    assert (other_seed != chosen).any()


@pytest.mark.parametrize("step, probability", [(250, 0.75), (500, 0.5), (900, 0.1)])
def test_choice_frequency_follows_schedule(step: int, probability: float) -> None:
    config = PatchingConfig(strategy="curriculum", tau1=0, tau2=1000, seed=3)
    frequency = choose_aligned(config, step, np.arange(20_000)).mean()
    assert abs(frequency - probability) < 0.015


def test_mixed_is_roughly_even_and_varies_with_step() -> None:
    config = PatchingConfig(strategy="mixed", seed=1)
    first, second = choose_aligned(config, 0, np.arange(4000)), choose_aligned(config, 1, np.arange(4000))
    assert abs(first.mean() - 0.5) < 0.03
    assert (first != second).any()
