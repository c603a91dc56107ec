"""Patch ids, cross-attention masks and max-pooling, against docs/method.md §2 and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_lst.patching import (
    decoder_cross_attention_mask,
    decoder_patch_ids_from_lengths,
    encoder_cross_attention_mask,
    max_pool_patches,
    patch_ids_from_lengths,
)

WORKED_LENGTHS = torch.tensor([1, 3, 2, 4])


def test_worked_example_of_lst_section_2() -> None:
    assert patch_ids_from_lengths(WORKED_LENGTHS, 9).tolist() == [0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert decoder_patch_ids_from_lengths(WORKED_LENGTHS, 9).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]


def test_batched_with_right_padding_and_exact_sum() -> None:
    lengths = torch.tensor([[1, 3, 2, 4], [1, 2, 1, 0]])
    assert patch_ids_from_lengths(lengths, 4).tolist() == [[0, 1, 1, 1], [0, 1, 1, 2]]
    # Row 1 sums to exactly 4: the token after the sequence opens a new patch.
    assert decoder_patch_ids_from_lengths(lengths, 4).tolist() == [[0, 0, 0, 1], [0, 0, 1, 2]]


@settings(max_examples=100, deadline=None)
@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=12), extra=st.booleans(), padding=st.integers(0, 3))
def test_ids_match_a_plain_loop(lengths: list, extra: bool, padding: int) -> None:
    seq_len = sum(lengths) - (1 if extra and sum(lengths) > 1 else 0)
    tensor = torch.tensor(lengths + [0] * padding)
    owner = np.repeat(np.arange(len(lengths)), lengths)  # patch of each position, next token included
    assert patch_ids_from_lengths(tensor, seq_len).tolist() == owner[:seq_len].tolist()
    expected = [(owner[i + 1] - 1) if i + 1 < len(owner) else len(lengths) - 1 for i in range(seq_len)]
    assert decoder_patch_ids_from_lengths(tensor, seq_len).tolist() == expected


@pytest.mark.parametrize(
    "lengths, message",
    [
        (torch.tensor([[[1]]]), r"\[B, P\]"),
        (torch.tensor([1.0, 2.0]), "integers"),
        (torch.tensor([1, -1, 3]), ">= 0"),
        (torch.tensor([1, 0, 3]), "right"),
        (torch.tensor([1, 2]), "sum to at least"),
    ],
)
def test_ids_refuse_bad_lengths(lengths: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        patch_ids_from_lengths(lengths, 4)


def test_encoder_mask_own_patch_and_window() -> None:
    lengths = torch.tensor([[1, 2, 3, 0]])
    own = encoder_cross_attention_mask(lengths, 6)
    assert own.shape == (1, 4, 6)
    assert own[0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 0, 0],  # padded slot: no tokens
    ]
    windowed = encoder_cross_attention_mask(lengths, 6, earlier_patches=1)
    assert windowed[0, 2].int().tolist() == [0, 1, 1, 1, 1, 1]
    assert encoder_cross_attention_mask(lengths, 6, earlier_patches=None)[0, 2].all()


def test_decoder_mask_lag_and_window() -> None:
    full = decoder_cross_attention_mask(WORKED_LENGTHS[None], 9)
    assert full.shape == (1, 9, 4)
    assert full[0].int().tolist() == [
        [1, 0, 0, 0],
        [1, 0, 0, 0],
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 0],
        [1, 1, 1, 0],
        [1, 1, 1, 0],
        [1, 1, 1, 0],
    ]
    last_only = decoder_cross_attention_mask(WORKED_LENGTHS[None], 9, earlier_patches=0)
    assert last_only[0].int().argmax(-1).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert last_only.sum(-1).eq(1).all()


def test_masks_respect_documents() -> None:
    # Two documents: BOS u u | BOS u u u ; patches [1, 2, 1, 3].
    lengths = torch.tensor([[1, 2, 1, 3]])
    documents = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    decoder = decoder_cross_attention_mask(lengths, 7, document_ids=documents)
    assert decoder[0].int().tolist() == [
        [1, 0, 0, 0],
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 1, 0],  # the BOS of document 1 sees only its own patch
        [0, 0, 1, 0],
        [0, 0, 1, 0],
        [0, 0, 1, 1],  # lengths sum to N: the last patch is complete before the next token
    ]
    encoder = encoder_cross_attention_mask(lengths, 7, earlier_patches=None, document_ids=documents)
    assert encoder[0, 3].int().tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert encoder[0, 1].int().tolist() == [1, 1, 1, 0, 0, 0, 0]


def test_max_pool_hand_case_and_gradient() -> None:
    states = torch.tensor([[[1.0, -1.0], [2.0, -5.0], [0.0, 3.0], [-4.0, -2.0], [-1.0, -3.0]]], requires_grad=True)
    lengths = torch.tensor([[1, 2, 2, 1, 0]])  # last real patch holds only the next token
    pooled = max_pool_patches(states, lengths)
    assert pooled.shape == (1, 5, 2)
    assert pooled[0].tolist() == [[1.0, -1.0], [2.0, 3.0], [-1.0, -2.0], [0.0, 0.0], [0.0, 0.0]]
    pooled.sum().backward()
    assert states.grad[0].tolist() == [[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]


def test_max_pool_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"\[B, N, D\]"):
        max_pool_patches(torch.zeros(2, 3), torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=r"\[B, P\] with B=2"):
        max_pool_patches(torch.zeros(2, 3, 4), torch.tensor([[1, 2]]))
