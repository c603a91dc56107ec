"""The intervals of LST's local patterns are exactly the masks of patching/masks.py (their definition)."""

from __future__ import annotations

import pytest
import torch

from megatron_lst.models.attention import causal_window_mask
from megatron_lst.models.local_patterns import (
    decoder_cross_mask,
    document_starts,
    encoder_cross_mask,
    sliding_window_mask,
)
from megatron_lst.patching import decoder_cross_attention_mask, encoder_cross_attention_mask
from tests.models.test_local_attention_paths import random_batch

WORKED_LENGTHS = torch.tensor([[1, 3, 2, 4]])  # 9 tokens: encoder ids 0,1,1,1,2,2,3,3,3


def visible(mask) -> torch.Tensor:
    """The pattern as a dense bool mask, empty rows all False (what masks.py states)."""
    dense = mask.dense()
    return dense if mask.empty is None else dense & ~mask.empty[..., None]


def padded_batch(seed: int, strategy: str):
    """(patch lengths, input documents) of random rows of two documents and different lengths,
    right-padded and the padding merged into one patch, as training batches are."""
    batch = random_batch(seed, strategy)
    return batch["patch_lengths"], batch["documents"]


def test_document_starts():
    documents = torch.tensor([[0, 0, 1, 1, 1, 2], [5, 5, 5, 5, -1, -1]])
    assert document_starts(documents, 2, 6, torch.device("cpu")).tolist() == [[0, 0, 2, 2, 2, 5], [0, 0, 0, 0, 4, 4]]
    assert document_starts(None, 1, 3, torch.device("cpu")).tolist() == [[0, 0, 0]]


def test_worked_example_intervals():
    encoder = encoder_cross_mask(WORKED_LENGTHS, 9, 0, None)
    assert encoder.lo.tolist() == [[0, 1, 4, 6]] and encoder.hi.tolist() == [[1, 4, 6, 9]]
    assert encoder.empty is None
    decoder = decoder_cross_mask(WORKED_LENGTHS, 9, None, None)  # decoder ids 0,0,0,1,1,2,2,2,2
    assert decoder.lo.tolist() == [[0] * 9] and decoder.hi.tolist() == [[1, 1, 1, 2, 2, 3, 3, 3, 3]]
    lagged_only = decoder_cross_mask(WORKED_LENGTHS, 9, 0, None)
    assert lagged_only.lo.tolist() == [[0, 0, 0, 1, 1, 2, 2, 2, 2]]
    # the last patch of a training sample holds only the next token: no input token, an empty row
    target_only = encoder_cross_mask(torch.tensor([[1, 3, 2, 3, 1]]), 9, 0, None)
    assert target_only.empty.tolist() == [[False, False, False, False, True]]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("strategy", ["static", "aligned"])
@pytest.mark.parametrize("earlier", [0, 2, None])
def test_cross_intervals_equal_the_dense_masks(seed, strategy, earlier):
    lengths, documents = padded_batch(seed, strategy)
    seq_len = documents.shape[1]
    for with_documents in (documents, None):
        encoder = encoder_cross_mask(lengths, seq_len, earlier, with_documents)
        expected = encoder_cross_attention_mask(lengths, seq_len, earlier, document_ids=with_documents)
        assert torch.equal(visible(encoder), expected)
        decoder = decoder_cross_mask(lengths, seq_len, earlier, with_documents)
        expected = decoder_cross_attention_mask(lengths, seq_len, earlier, document_ids=with_documents)
        assert torch.equal(visible(decoder), expected)


def test_k_queries_per_patch_repeat_their_patch_interval():
    single = encoder_cross_mask(WORKED_LENGTHS, 9, 1, None)
    triple = encoder_cross_mask(WORKED_LENGTHS, 9, 1, None, queries_per_patch=3)
    assert torch.equal(triple.lo, single.lo.repeat_interleave(3, dim=1))
    assert torch.equal(triple.hi, single.hi.repeat_interleave(3, dim=1))


@pytest.mark.parametrize("window", [1, 3, 16])
def test_sliding_window_equals_causal_window_within_documents(window):
    documents = torch.tensor([[0] * 5 + [1] * 7 + [2] * 3, [0] * 15])
    mask = sliding_window_mask(15, window, documents, 2, torch.device("cpu"))
    forbidden = causal_window_mask(15, 15, window, torch.device("cpu"))[None] | (
        documents[:, :, None] != documents[:, None, :])
    assert torch.equal(mask.dense(), ~forbidden)


def test_a_document_without_bos_gives_its_first_token_no_patch():
    """Document 1 (tokens 3-5) opens with a 3-token patch, not BOS: until that patch completes
    (before token 6), its tokens' lagged patch is document 0's, so they see no patch."""
    lengths = torch.tensor([[1, 2, 3, 1]])
    documents = torch.tensor([[0, 0, 0, 1, 1, 1]])
    decoder = decoder_cross_mask(lengths, 6, None, documents)
    assert decoder.empty.tolist() == [[False, False, False, True, True, False]]
    assert not visible(decoder)[0, 3:5].any() and visible(decoder)[0, 5].tolist() == [False, False, True, False]


def test_negative_windows_are_rejected():
    with pytest.raises(ValueError, match="earlier"):
        encoder_cross_mask(WORKED_LENGTHS, 9, -1, None)
    with pytest.raises(ValueError, match="earlier"):
        decoder_cross_mask(WORKED_LENGTHS, 9, -2, None)
    with pytest.raises(ValueError, match="window"):
        sliding_window_mask(9, 0, None, 1, torch.device("cpu"))
