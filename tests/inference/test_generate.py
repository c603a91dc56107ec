"""Generation: global steps per generated speech, stop rules, cached == uncached, sampling."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_lst.inference.baseline_stepper import BaselineStepper
from megatron_lst.inference.generate import GenerationConfig, generate
from megatron_lst.inference.lst_stepper import LSTStepper
from megatron_lst.inference.patch_tracker import StaticPatchTracker
from megatron_lst.inference.sampling import SamplingConfig, sample_next
from megatron_lst.inference.uncached import UncachedBaselineStepper, UncachedLSTStepper
from tests.inference.conftest import LAYOUT, build_baseline, build_lst

SPEECH_ONLY = GenerationConfig(max_units=23, stop_on_eos=False, stop_on_modality_switch=False)


def speech_prompt(extra_text: int = 0) -> list[int]:
    text = [LAYOUT.text_marker_id] + list(range(3, 3 + extra_text)) if extra_text else []
    return [LAYOUT.bos_id] + text + [LAYOUT.speech_marker_id]


@pytest.mark.parametrize("patch_size", [1, 4, 6])
def test_global_steps_per_generated_speech(model_parallel, patch_size):
    model = build_lst(local_window_size=8)
    prompts = [speech_prompt(), speech_prompt(extra_text=5)]
    result = generate(LSTStepper(model), prompts, LAYOUT, patch_size, SPEECH_ONLY)
    assert [len(row) for row in result.tokens] == [23, 23]
    assert result.stop_reasons == ["max_units", "max_units"]
    assert result.generated_global_positions == [math.ceil(23 / patch_size)] * 2
    assert result.prompt_global_positions == [len(prompt) for prompt in prompts]


def test_text_generation_costs_one_global_step_per_token(model_parallel):
    model = build_lst(local_window_size=8)
    config = GenerationConfig(max_new_tokens=9, stop_on_eos=False, stop_on_modality_switch=False)
    result = generate(LSTStepper(model), [[LAYOUT.bos_id, LAYOUT.text_marker_id, 5]], LAYOUT, 4, config)
    assert result.stop_reasons == ["max_new_tokens"]
    assert all(LAYOUT.is_text(result.tokens[0]))
    assert result.generated_global_positions == [9]


def test_max_seconds_at_25_units_per_second(model_parallel):
    config = GenerationConfig(max_seconds=0.4, stop_on_eos=False, stop_on_modality_switch=False)
    result = generate(LSTStepper(build_lst(local_window_size=8)), [speech_prompt()], LAYOUT, 4, config)
    assert len(result.tokens[0]) == 10


@pytest.mark.parametrize("patch_size", [1, 4])
@pytest.mark.parametrize("boundary", ["paper", "causal"])
def test_cached_generation_equals_uncached(model_parallel, patch_size, boundary):
    """Free generation with mixed stop rules and batch rows of different prompt lengths."""
    model = build_lst(seed=2, local_window_size=5)
    prompts = [speech_prompt(), speech_prompt(extra_text=4), [LAYOUT.bos_id, LAYOUT.text_marker_id, 7, 8]]
    config = GenerationConfig(max_units=14, max_new_tokens=14, restrict_to_modality=False)
    cached = generate(LSTStepper(model), prompts, LAYOUT, patch_size, config, boundary)
    uncached = generate(UncachedLSTStepper(model), prompts, LAYOUT, patch_size, config, boundary)
    assert cached.tokens == uncached.tokens
    assert cached.stop_reasons == uncached.stop_reasons
    assert cached.generated_global_positions == uncached.generated_global_positions


def test_baseline_cached_generation_equals_uncached(model_parallel):
    model = build_baseline(seed=1)
    prompts = [speech_prompt(), speech_prompt(extra_text=3)]
    cached = generate(BaselineStepper(model), prompts, LAYOUT, 1, SPEECH_ONLY)
    uncached = generate(UncachedBaselineStepper(model), prompts, LAYOUT, 1, SPEECH_ONLY)
    assert cached.tokens == uncached.tokens
    assert cached.generated_global_positions == [23, 23]


def test_stop_on_eos_and_modality_switch(model_parallel):
    model = build_lst(local_window_size=8)
    with torch.no_grad():  # make the head prefer <t>: a speech row must stop on the switch
        model.patch_decoder.output_layer.weight[LAYOUT.text_marker_id] *= 0
        model.patch_decoder.output_layer.weight[LAYOUT.text_marker_id] += 10 * model.patch_decoder.final_norm.weight.sign()
    result = generate(LSTStepper(model), [speech_prompt()], LAYOUT, 4, GenerationConfig(max_units=50))
    assert result.stop_reasons == ["modality_switch"]
    eos_only = GenerationConfig(max_units=50, stop_on_modality_switch=False)
    with torch.no_grad():
        model.patch_decoder.output_layer.weight[LAYOUT.eos_id] = model.patch_decoder.output_layer.weight[LAYOUT.text_marker_id]
    result = generate(LSTStepper(model), [speech_prompt()], LAYOUT, 4, eos_only)
    assert result.stop_reasons == ["eos"]


def test_sampling_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(200, 1)
    generator = torch.Generator().manual_seed(0)
    assert sample_next(logits, SamplingConfig()).tolist() == [0] * 200
    top_k = sample_next(logits, SamplingConfig(temperature=1.0, top_k=2), generator)
    assert set(top_k.tolist()) == {0, 1}
    top_p = sample_next(logits, SamplingConfig(temperature=1.0, top_p=0.7), generator)
    assert set(top_p.tolist()) <= {0, 1} and 1 in top_p.tolist()
    with pytest.raises(ValueError):
        SamplingConfig(top_p=0.0)


@pytest.mark.parametrize("causal, close_before, completes", [
    # u u u <t> at p = 2: the paper rule closes the third unit's run before <t>, which is its own patch;
    # the causal rule lets <t> join that run and close it (one global step fewer)
    (False, [False, False, False, True, False], [False, True, False, True, True]),
    (True, [False, False, False, False, False], [False, True, False, True, True]),
])
def test_tracker_flags_by_hand(causal, close_before, completes):
    tracker = StaticPatchTracker(1, 2, LAYOUT, causal=causal)
    unit = LAYOUT.unit_offset
    flags = [tracker.update(torch.tensor([token])) for token in (unit, unit + 1, unit + 2, LAYOUT.text_marker_id, 5)]
    assert [bool(before) for before, _ in flags] == close_before
    assert [bool(done) for _, done in flags] == completes


def test_generate_refuses_an_unknown_patch_boundary(model_parallel):
    with pytest.raises(ValueError, match="patch_boundary"):
        generate(LSTStepper(build_lst()), [speech_prompt()], LAYOUT, 4, SPEECH_ONLY, "lookahead")
