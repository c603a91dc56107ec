"""Prompt-cached scoring equals whole-sequence scoring (to 1e-5): LST and baseline, every direction,
static and aligned patching, including prompts whose last speech patch closes or not depending on
the ending (the paper's boundary rule), and LST sequences capped in patches rather than tokens.

Toy joint vocabulary (evaluation_toys.toy_tokenizer): words a-f 0-5, BOS 6, EOS 7, PAD 8, <t> 9,
<s> 10, units 0-3 -> 11-14; random-weight models from tests/inference/conftest.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation_toys import WORDS, toy_tokenizer
from megatron_lst.evaluation.items import Item, Part, Segment
from megatron_lst.evaluation.lengths import patch_counter
from megatron_lst.evaluation.model_scorer import CheckpointScorer, baseline_logits, patched_lst_logits
from megatron_lst.evaluation.prompt_cache import PromptCachedScorer, prompt_cached_scorer
from megatron_lst.evaluation.scoring import DIRECTIONS, SequenceBuilder, score_direction
from megatron_lst.patching import PatchingConfig
from tests.inference.conftest import build_baseline, build_lst

TOLERANCE = 1e-5
BOS, T_MARK, S_MARK, U = 6, 9, 10, 11


@pytest.fixture(scope="module")
def one_thread(single_rank_parallel_state):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def part(rng: np.random.Generator, words: int, units: int, word_times: bool = False) -> Part:
    unit_ids = tuple(int(u) for u in rng.integers(0, 4, units))
    segments = None
    if word_times:  # alternate words of 1-3 units and single-unit silences
        segments, start = [], 0
        while start < units:
            end = min(units, start + int(rng.integers(1, 4)))
            segments.append(Segment(start, end, "word" if len(segments) % 2 == 0 else "sil"))
            start = end
        segments = tuple(segments)
    return Part(text=" ".join(WORDS[int(w)] for w in rng.integers(0, 6, words)), units=unit_ids, segments=segments)


def random_items(count: int, seed: int, word_times: bool = False) -> list[Item]:
    rng = np.random.default_rng(seed)
    return [Item(f"i{n}", int(rng.integers(4)),
                 part(rng, int(rng.integers(3, 9)), int(rng.integers(5, 19)), word_times),
                 tuple(part(rng, int(rng.integers(1, 5)), int(rng.integers(1, 10)), word_times) for _ in range(4)))
            for n in range(count)]


def scorers(family: str, patching: PatchingConfig):
    tokenizer = toy_tokenizer()
    device = torch.device("cpu")
    if family == "lst":
        model = build_lst(local_window_size=7, cross_attn_window_decoder=3)
        whole = CheckpointScorer(patched_lst_logits(model, patching, tokenizer), model, tokenizer, device)
    else:
        model = build_baseline()
        whole = CheckpointScorer(baseline_logits(model), model, tokenizer, device)
    cached, why = prompt_cached_scorer(model, family == "lst", tokenizer, device, patching if family == "lst" else None)
    assert cached is not None, why
    return whole, cached


@pytest.mark.parametrize("family", ["lst", "baseline"])
@pytest.mark.parametrize("direction", ["ss", "st", "ts", "tt"])
def test_cached_scores_equal_whole_sequence_scores(one_thread, family, direction):
    patching = PatchingConfig(strategy="static", patch_size=4, patch_boundary="paper")
    whole, cached = scorers(family, patching)
    builder = SequenceBuilder(toy_tokenizer())
    items = random_items(4, seed=len(direction) + ord(direction[0]) + ord(direction[1]))
    for item in items:
        sequences = [s.tokens for s in builder.item_sequences(item, DIRECTIONS[direction])]
        for got, want in zip(cached.item_logprobs(sequences), whole.token_logprobs(sequences), strict=True):
            np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=TOLERANCE)
    # the direction's records (scores, choices) are the same either way
    by_cache = score_direction(items, DIRECTIONS[direction], builder, cached)
    by_whole = score_direction(items, DIRECTIONS[direction], builder, whole, batch_size=5)
    for a, b in zip(by_cache.per_item, by_whole.per_item, strict=True):
        assert a["predicted"] == b["predicted"]
        for name in a["scores"]:
            np.testing.assert_allclose(a["scores"][name], b["scores"][name], atol=TOLERANCE, rtol=TOLERANCE)
    assert cached.shared_tokens > 0


def test_a_prompt_patch_that_closes_depending_on_the_ending(one_thread):
    """Paper rule, p = 4: the prompt ends with 2 units of an open patch. An ending opening with a
    unit extends that patch; one opening with a word closes it at the prompt's last unit. The
    shared read stops before the tokens whose patch ends differ, and every score stays exact."""
    patching = PatchingConfig(strategy="static", patch_size=4, patch_boundary="paper")
    whole, cached = scorers("lst", patching)
    prompt = [BOS, S_MARK, U, U + 1, U + 2, U + 3, U + 1, U]  # units 4 + 2: a patch of two is open
    sequences = [np.array(prompt + ending, dtype=np.int64)
                 for ending in ([U + 2, U + 3, U], [0, 1], [U + 1], [T_MARK, 2, 3])]
    completes = cached._patch_ends(torch.as_tensor(np.stack([np.pad(s, (0, 11 - len(s)), constant_values=8)
                                                             for s in sequences])), [len(s) for s in sequences], None)
    assert bool(completes[1, 7]) and not bool(completes[0, 7])  # the junction patch differs
    before = cached.shared_tokens
    for got, want in zip(cached.item_logprobs(sequences), whole.token_logprobs(sequences), strict=True):
        np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=TOLERANCE)
    assert cached.shared_tokens - before == 7 * 3  # BOS .. the 6th prompt token, not the open patch's last


@pytest.mark.parametrize("direction", ["ss", "ts"])
def test_aligned_patching_is_cached_exactly_too(one_thread, direction):
    tokenizer = toy_tokenizer()
    patching = PatchingConfig(strategy="aligned", patch_size=4, silence_mode="sil_merged")
    whole, cached = scorers("lst", patching)
    builder = SequenceBuilder(tokenizer, word_times=True)
    for item in random_items(3, seed=11, word_times=True):
        built = builder.item_sequences(item, DIRECTIONS[direction])
        tokens, alignments = [s.tokens for s in built], [s.alignment for s in built]
        for got, want in zip(cached.item_logprobs(tokens, alignments), whole.token_logprobs(tokens, alignments),
                             strict=True):
            np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=TOLERANCE)


def test_an_lst_length_cap_counts_patches(one_thread):
    """p = 4: a 20-unit speech ending is 5 patches, so it fits a cap of 12 that counts patches
    though not one of 12 tokens; the prompt keeps as many units as fit."""
    tokenizer = toy_tokenizer()
    patching = PatchingConfig(strategy="static", patch_size=4)
    item = Item("x", 0, Part(units=(1,) * 16), (Part(units=(2,) * 20), Part(units=(3,) * 8)))
    by_tokens = SequenceBuilder(tokenizer, max_length=12)
    assert score_direction([item], DIRECTIONS["ss"], by_tokens, scorers("lst", patching)[1]).skipped == ("x",)
    count = patch_counter(patching, tokenizer)
    by_patches = SequenceBuilder(tokenizer, max_length=12, measure=count)
    longest = by_patches.item_sequences(item, DIRECTIONS["ss"])[0]
    assert count(longest) <= 12
    # S->S continues one speech run: BOS, then (<s> folded into) 36 units = 9 patches: all fits
    assert len(longest.tokens) == 2 + 16 + 20 and count(longest) == 10
    tighter = SequenceBuilder(tokenizer, max_length=8, measure=count).item_sequences(item, DIRECTIONS["ss"])[0]
    assert count(tighter) == 8 and len(tighter.tokens) == 2 + 8 + 20  # 28 units = 7 patches, + BOS
    # the cut prompt still continues into the ending's patches exactly as whole-sequence scoring sees it
    whole, cached = scorers("lst", patching)
    for got, want in zip(cached.item_logprobs([tighter.tokens]), whole.token_logprobs([tighter.tokens])):
        np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=TOLERANCE)


def test_an_lst_the_stepper_cannot_run_falls_back_with_the_reason(one_thread):
    model = build_lst(cross_attn_window_encoder=2)
    scorer, why = prompt_cached_scorer(model, True, toy_tokenizer(), torch.device("cpu"), PatchingConfig())
    assert scorer is None and "--cross-attn-window-encoder 1" in why
    assert isinstance(scorers("baseline", PatchingConfig())[1], PromptCachedScorer)
