"""The generation-time patch tracker against the training kernel, token stream by token stream.

The tracker sees one token at a time; the kernel sees the whole row. Read back as patch lengths
(a patch ends at a token that ``completes`` it, or just before a token that it is ``close_before``),
the tracker's patches must be the kernel's static patches for every fold mode, cap and boundary rule.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_lst.inference.patch_tracker import StaticPatchTracker
from megatron_lst.patching import PatchingConfig, compute_patches
from megatron_lst.patching.config import FOLD_MODES
from megatron_lst.tokenizer import VocabLayout

LAYOUT = VocabLayout(text_vocab_size=8, num_units=6)


@st.composite
def streams(draw) -> list[int]:
    """BOS, then any order of text tokens, <t>, <s>, EOS and unit runs (lone markers included)."""
    pieces = draw(st.lists(st.sampled_from(["text", "t", "s", "eos", "units"]), min_size=1, max_size=12))
    tokens = [LAYOUT.bos_id]
    for piece in pieces:
        if piece == "units":
            tokens += [LAYOUT.unit_offset + draw(st.integers(0, LAYOUT.num_units - 1))
                       for _ in range(draw(st.integers(1, 9)))]
        else:
            tokens.append({"text": 3, "t": LAYOUT.text_marker_id, "s": LAYOUT.speech_marker_id,
                           "eos": LAYOUT.eos_id}[piece])
    return tokens


def tracked_lengths(tokens: list[int], tracker: StaticPatchTracker) -> list[int]:
    ends = []
    for position, token in enumerate(tokens):
        close_before, completes = tracker.update(torch.tensor([token]))
        if close_before.item():
            ends.append(position - 1)
        if completes.item():
            ends.append(position)
    if not ends or ends[-1] != len(tokens) - 1:  # the row ends with a patch still open
        ends.append(len(tokens) - 1)
    return np.diff([-1] + ends).tolist()


@settings(max_examples=300, deadline=None, derandomize=True)
@given(tokens=streams(), patch_size=st.integers(1, 5), fold=st.sampled_from(FOLD_MODES),
       cap=st.sampled_from([None, 1, 2, 3, 6]), boundary=st.sampled_from(["paper", "causal"]))
def test_tracker_cuts_the_kernels_static_patches(tokens, patch_size, fold, cap, boundary):
    config = PatchingConfig(patch_size=patch_size, fold_speech_marker=fold, max_patch_length=cap,
                            patch_boundary=boundary)
    array = np.array(tokens)
    expected = compute_patches(array, LAYOUT.is_unit(array), config, LAYOUT).patch_lengths.tolist()
    tracker = StaticPatchTracker(1, patch_size, LAYOUT, causal=boundary == "causal",
                                 fold_marker=config.folds_marker(aligned=False), max_patch_length=cap)
    assert tracked_lengths(tokens, tracker) == expected


def test_folded_marker_by_hand():
    """B <s> u u u <t> at p = 2, folded: [B] [<s> u u] then u; the paper rule closes [u] before <t>,
    the causal rule lets <t> join it; a lone <s> (no unit after it) closes like a short run."""
    unit, s, t = LAYOUT.unit_offset, LAYOUT.speech_marker_id, LAYOUT.text_marker_id
    stream = [LAYOUT.bos_id, s, unit, unit, unit, t, s, t]
    paper = StaticPatchTracker(1, 2, LAYOUT, fold_marker=True)
    causal = StaticPatchTracker(1, 2, LAYOUT, causal=True, fold_marker=True)
    assert tracked_lengths(stream, paper) == [1, 3, 1, 1, 1, 1]
    assert tracked_lengths(stream, causal) == [1, 3, 2, 2]
