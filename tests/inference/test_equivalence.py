"""Teacher-forced equivalence: incremental decoding with caches gives the full forward's logits
at every position (LST with static p = 1, 4, 6 and the baseline; batch > 1; windows shorter and
longer than the sequence; GQA in the global model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_lst.inference.baseline_stepper import BaselineStepper
from megatron_lst.inference.lst_stepper import LSTStepper
from megatron_lst.inference.patch_tracker import StaticPatchTracker, flags_from_patch_lengths
from megatron_lst.inference.uncached import UncachedLSTStepper
from megatron_lst.patching import PatchingConfig, compute_patches
from tests.inference.conftest import LAYOUT, build_baseline, build_lst

TOLERANCE = 1e-4


def mixed_stream(rng: np.random.Generator, length: int) -> list[int]:
    """BOS, then alternating text runs and <s>-opened unit runs of random lengths."""
    tokens = [LAYOUT.bos_id]
    speech = bool(rng.integers(2))
    while len(tokens) < length:
        tokens.append(LAYOUT.speech_marker_id if speech else LAYOUT.text_marker_id)
        run = int(rng.integers(1, 14))
        if speech:
            tokens += list(LAYOUT.unit_offset + rng.integers(0, LAYOUT.num_units, run))
        else:
            tokens += list(rng.integers(0, LAYOUT.text_vocab_size, run))
        speech = not speech
    return tokens[:length]


def batch_of_streams(seed: int, batch: int, length: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.tensor([mixed_stream(rng, length) for _ in range(batch)], dtype=torch.long)


def full_forward(model, tokens: torch.Tensor, patching: PatchingConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, the model's logits over them, completes): the teacher-forced reference."""
    is_speech = torch.as_tensor(LAYOUT.is_unit(tokens.numpy()))
    patch_lengths = compute_patches(tokens, is_speech, patching, LAYOUT).patch_lengths.long()
    inputs = tokens[:, :-1].contiguous()
    with torch.no_grad():
        full = model(inputs, patch_lengths)
    return inputs, full, flags_from_patch_lengths(patch_lengths, inputs.shape[1])


def incremental_logits(stepper, tokens: torch.Tensor, completes: torch.Tensor) -> torch.Tensor:
    stepper.reset(tokens.shape[0])
    no_late_close = torch.zeros(tokens.shape[0], dtype=torch.bool)
    steps = [stepper.step(tokens[:, i], no_late_close, completes[:, i]) for i in range(tokens.shape[1])]
    return torch.stack(steps, dim=1)


@pytest.mark.parametrize("patch_size", [1, 4, 6])
@pytest.mark.parametrize("window,decoder_patches", [(5, 512), (512, 512), (5, 3), (512, 1)])
@pytest.mark.parametrize("boundary", ["paper", "causal"])
def test_lst_incremental_matches_full_forward(model_parallel, patch_size, window, decoder_patches, boundary):
    """Sliding windows and decoder cross-attention windows (in patches) shorter than the rows."""
    model = build_lst(local_window_size=window, num_query_groups=2, cross_attn_window_decoder=decoder_patches)
    tokens = batch_of_streams(patch_size + window, batch=3, length=41)
    is_speech = torch.as_tensor(LAYOUT.is_unit(tokens.numpy()))
    patching = PatchingConfig(strategy="static", patch_size=patch_size, patch_boundary=boundary)
    patch_lengths = compute_patches(tokens, is_speech, patching, LAYOUT).patch_lengths.long()
    inputs = tokens[:, :-1].contiguous()
    with torch.no_grad():
        full = model(inputs, patch_lengths)
    completes = flags_from_patch_lengths(patch_lengths, inputs.shape[1])
    stepper = LSTStepper(model)
    stepped = incremental_logits(stepper, inputs, completes)
    torch.testing.assert_close(stepped, full, atol=TOLERANCE, rtol=TOLERANCE)
    # one global step per patch closed among the inputs
    assert torch.equal(stepper.global_positions, completes.sum(-1))


def test_lst_cross_attn_k_and_unequal_widths(model_parallel):
    model = build_lst(local_window_size=7, cross_attn_k=2, decoder_hidden_size=32, decoder_num_attention_heads=2)
    tokens = batch_of_streams(7, batch=2, length=30)
    is_speech = torch.as_tensor(LAYOUT.is_unit(tokens.numpy()))
    patch_lengths = compute_patches(tokens, is_speech, PatchingConfig(patch_size=4), LAYOUT).patch_lengths.long()
    inputs = tokens[:, :-1].contiguous()
    with torch.no_grad():
        full = model(inputs, patch_lengths)
    stepped = incremental_logits(LSTStepper(model), inputs, flags_from_patch_lengths(patch_lengths, inputs.shape[1]))
    torch.testing.assert_close(stepped, full, atol=TOLERANCE, rtol=TOLERANCE)


@pytest.mark.parametrize("num_query_groups", [None, 2])
def test_baseline_incremental_matches_full_forward(model_parallel, num_query_groups):
    model = build_baseline(num_query_groups=num_query_groups)
    tokens = batch_of_streams(11, batch=3, length=40)
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    with torch.no_grad():
        full = model(tokens, positions, None)
    stepped = incremental_logits(BaselineStepper(model), tokens, torch.ones_like(tokens, dtype=torch.bool))
    torch.testing.assert_close(stepped, full, atol=TOLERANCE, rtol=TOLERANCE)


def test_lst_encoder_window_beyond_its_own_patch_is_refused(model_parallel):
    with pytest.raises(ValueError, match="cross-attn-window-encoder 1"):
        LSTStepper(build_lst(cross_attn_window_encoder=4))


def tracked_logits(stepper, tokens: torch.Tensor, tracker: StaticPatchTracker) -> torch.Tensor:
    """Logits at every position when the patch tracker decides the boundaries one token at a time,
    as free generation does (it never sees the token after the current one)."""
    stepper.reset(tokens.shape[0])
    steps = []
    for i in range(tokens.shape[1]):
        close_before, completes = tracker.update(tokens[:, i])
        steps.append(stepper.step(tokens[:, i], close_before, completes))
    return torch.stack(steps, dim=1)


@pytest.mark.parametrize("patch_size, fold, cap", [(3, "never", None), (4, "never", None), (4, "static", None),
                                                   (3, "static", 2)])
def test_causal_generation_reproduces_the_training_forward(model_parallel, patch_size, fold, cap):
    """Under causal boundaries the generation-time tracker (no look-ahead) gives exactly the
    training forward's logits over kernel-patched rows, cached and uncached, with the marker folded
    or not and patches capped or not; under the paper's boundaries it cannot, since training
    closes a short run before seeing the token that ends it."""
    model = build_lst(local_window_size=7)
    tokens = batch_of_streams(patch_size, batch=3, length=40)
    inputs = tokens[:, :-1].contiguous()
    is_speech = torch.as_tensor(LAYOUT.is_unit(tokens.numpy()))
    full = {}
    for boundary in ("paper", "causal"):
        config = PatchingConfig(patch_size=patch_size, patch_boundary=boundary, fold_speech_marker=fold,
                                max_patch_length=cap)
        with torch.no_grad():
            full[boundary] = model(inputs, compute_patches(tokens, is_speech, config, LAYOUT).patch_lengths.long())
    for stepper in (LSTStepper(model), UncachedLSTStepper(model)):
        tracker = StaticPatchTracker(inputs.shape[0], patch_size, LAYOUT, causal=True,
                                     fold_marker=config.folds_marker(aligned=False), max_patch_length=cap)
        torch.testing.assert_close(tracked_logits(stepper, inputs, tracker), full["causal"],
                                   atol=TOLERANCE, rtol=TOLERANCE)
    paper_tracker = StaticPatchTracker(inputs.shape[0], patch_size, LAYOUT,
                                       fold_marker=config.folds_marker(aligned=False), max_patch_length=cap)
    paper_tracked = tracked_logits(LSTStepper(model), inputs, paper_tracker)
    assert not torch.allclose(paper_tracked, full["paper"], atol=TOLERANCE, rtol=TOLERANCE)


def chunked_logits(stepper, tokens: torch.Tensor, completes: torch.Tensor, cuts: list[int]) -> torch.Tensor:
    """Logits of ``extend`` over the chunks [0, cuts[0]), [cuts[0], cuts[1]), ..., [cuts[-1], L)."""
    stepper.reset(tokens.shape[0])
    bounds = [0, *cuts, tokens.shape[1]]
    return torch.cat([stepper.extend(tokens[:, a:b], completes[:, a:b]) for a, b in zip(bounds, bounds[1:])], dim=1)


@pytest.mark.parametrize("patch_size,window,decoder_patches,cross_k", [(4, 5, 3, 1), (6, 512, 512, 2), (1, 7, 1, 1)])
def test_lst_extend_in_chunks_matches_full_forward(model_parallel, patch_size, window, decoder_patches, cross_k):
    """A prompt read in one pass (prefill), then the rest in chunks that cut patches open, equals
    the full forward pass; so do per-token steps after a chunk."""
    model = build_lst(local_window_size=window, num_query_groups=2, cross_attn_window_decoder=decoder_patches,
                      cross_attn_k=cross_k)
    tokens = batch_of_streams(patch_size * 7 + window, batch=3, length=41)
    patching = PatchingConfig(strategy="static", patch_size=patch_size, patch_boundary="paper")
    inputs, full, completes = full_forward(model, tokens, patching)
    stepper = LSTStepper(model)
    torch.testing.assert_close(chunked_logits(stepper, inputs, completes, [17, 18, 29]), full,
                               atol=TOLERANCE, rtol=TOLERANCE)
    assert torch.equal(stepper.global_positions, completes.sum(-1))
    # prefill 20 tokens, then the rest one step at a time
    stepper.reset(3)
    head = stepper.extend(inputs[:, :20], completes[:, :20])
    no = torch.zeros(3, dtype=torch.bool)
    tail = [stepper.step(inputs[:, i], no, completes[:, i]) for i in range(20, inputs.shape[1])]
    torch.testing.assert_close(torch.cat([head, torch.stack(tail, 1)], 1), full, atol=TOLERANCE, rtol=TOLERANCE)


def test_prompt_state_copied_per_row_continues_each_row(model_parallel):
    """One row's prompt read once, copied to three rows (select_rows), each continued by its own
    ending, equals three full passes over prompt + ending (LST and baseline)."""
    rng = np.random.default_rng(3)
    prompt = mixed_stream(rng, 23)
    endings = [list(LAYOUT.unit_offset + rng.integers(0, LAYOUT.num_units, n)) for n in (5, 9, 2)]
    rows = torch.tensor([prompt + e + [LAYOUT.pad_id] * (9 - len(e)) for e in endings])
    is_speech = torch.as_tensor(LAYOUT.is_unit(rows.numpy()))
    patch_lengths = compute_patches(rows, is_speech, PatchingConfig(patch_size=4), LAYOUT).patch_lengths.long()
    inputs = rows[:, :-1].contiguous()
    completes = flags_from_patch_lengths(patch_lengths, inputs.shape[1])
    for model, stepper in ((lst := build_lst(local_window_size=6)), LSTStepper(lst)), \
            ((base := build_baseline()), BaselineStepper(base)):
        with torch.no_grad():
            full = model(inputs, patch_lengths) if stepper.__class__ is LSTStepper else \
                model(inputs, torch.arange(inputs.shape[1])[None].expand_as(inputs), None)
        stepper.reset(1)
        head = stepper.extend(inputs[:1, :23], completes[:1, :23])
        stepper.select_rows(torch.zeros(3, dtype=torch.long))
        tail = stepper.extend(inputs[:, 23:], completes[:, 23:])
        for row, ending in enumerate(endings):
            length = 23 + len(ending) - 1
            got = torch.cat([head[0], tail[row]])[:length]
            torch.testing.assert_close(got, full[row, :length], atol=TOLERANCE, rtol=TOLERANCE)
