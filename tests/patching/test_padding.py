"""patching/padding.py: a row's padding becomes one patch, worked by hand and through the kernel."""

from __future__ import annotations

import pytest
import torch

from megatron_lst.patching.padding import merge_padding_patches


def test_padding_becomes_one_trailing_patch():
    lengths = torch.tensor([[4, 4, 1, 0, 0, 0, 0],    # 9 real tokens, no padding
                            [1, 1, 1, 1, 1, 1, 1],    # 3 real tokens, 4 PAD patches of 1
                            [2, 4, 1, 1, 0, 0, 0]])   # 6 real tokens, 2 PAD patches
    merged = merge_padding_patches(lengths, torch.tensor([9, 3, 6]))
    assert merged.tolist() == [[4, 4, 1, 0], [1, 1, 1, 4], [2, 4, 2, 0]]
    assert merged.sum(1).tolist() == lengths.sum(1).tolist()


def test_a_patch_across_real_tokens_and_padding_is_refused():
    with pytest.raises(ValueError, match="row 0: no patch boundary at its last real token"):
        merge_padding_patches(torch.tensor([[2, 3, 1]]), torch.tensor([4]))


def test_a_batch_without_padding_is_returned_as_it_is():
    lengths = torch.tensor([[4, 4, 1, 0], [2, 3, 4, 0]])
    assert merge_padding_patches(lengths, torch.tensor([9, 9])) is lengths
