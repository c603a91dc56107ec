"""The intervals of LST's three local attention patterns, from patch lengths and document ids.

Each builder returns an ``IntervalMask`` (interval_attention.py) that every layer of the patch
encoder or decoder reuses in one forward pass. The patterns are those of ``patching/masks.py``
(which states them as dense boolean masks, kept as the readable definition the tests compare
against), restricted to the real keys:

- ``sliding_window_mask``: token i sees tokens ``[max(i - W + 1, start of i's document), i]``;
- ``encoder_cross_mask``: patch q (``queries_per_patch`` query vectors each) sees the tokens of
  patches ``q - earlier .. q`` that lie in patch q's document, among the N input tokens. The last
  patch (it holds only the next token) and right-padding patches see none: empty rows;
- ``decoder_cross_mask``: token i sees the patches ``d_i - earlier .. d_i`` of its document, d_i its
  decoder patch id (the last patch complete before token i + 1: the one-patch lag). A token whose
  document has no complete patch yet (a document that does not open with BOS) sees none.

``earlier`` None means every earlier patch of the document.
"""

from __future__ import annotations

from typing import Optional

import torch

from megatron_lst.models.config import ModelConfig
from megatron_lst.models.flops import LocalAttentionPairs
from megatron_lst.models.interval_attention import IntervalMask
from megatron_lst.patching.ids import decoder_patch_ids_from_lengths, patch_ids_from_lengths

# Query block sizes of the blocked kernel: token queries span window + block keys; patch queries
# of the encoder see a few tokens each, so small blocks keep their spans (and waste) short.
TOKEN_QUERY_BLOCK = 128
PATCH_QUERY_BLOCK = 16


def document_starts(document_ids: Optional[torch.Tensor], batch: int, seq_len: int,
                    device: torch.device) -> torch.Tensor:
    """[B, N] index of the first token of each token's document (0 everywhere without documents)."""
    if document_ids is None:
        return torch.zeros(batch, seq_len, dtype=torch.long, device=device)
    if document_ids.shape != (batch, seq_len):
        raise ValueError(f"document_ids must be [{batch}, {seq_len}], got {tuple(document_ids.shape)}")
    positions = torch.arange(seq_len, device=device).expand(batch, seq_len)
    opens = torch.ones(batch, seq_len, dtype=torch.bool, device=device)
    opens[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    return torch.where(opens, positions, torch.zeros_like(positions)).cummax(dim=1).values


def sliding_window_mask(seq_len: int, window: int, document_ids: Optional[torch.Tensor], batch: int,
                        device: torch.device, implementation: str = "auto") -> IntervalMask:
    """Causal self-attention over the last ``window`` tokens (self included) of the same document."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    positions = torch.arange(seq_len, device=device).expand(batch, seq_len)
    starts = document_starts(document_ids, batch, seq_len, device)
    lo = torch.maximum(positions - (window - 1), starts)
    return IntervalMask(lo.contiguous(), (positions + 1).contiguous(), seq_len, TOKEN_QUERY_BLOCK,
                        implementation=implementation)


def encoder_cross_mask(patch_lengths: torch.Tensor, seq_len: int, earlier: Optional[int],
                       document_ids: Optional[torch.Tensor], queries_per_patch: int = 1,
                       implementation: str = "auto") -> IntervalMask:
    """Patch queries (``queries_per_patch`` consecutive per patch) over the N input tokens."""
    if earlier is not None and earlier < 0:
        raise ValueError(f"earlier patches must be >= 0 or None, got {earlier}")
    patch_ids_from_lengths(patch_lengths, seq_len)  # validates the lengths
    batch, num_patches = patch_lengths.shape
    device = patch_lengths.device
    ends = torch.cumsum(patch_lengths.long(), dim=1)
    starts = ends - patch_lengths.long()
    first_token = starts.clamp(max=seq_len - 1)
    document_start = document_starts(document_ids, batch, seq_len, device).gather(1, first_token)
    if earlier is None:
        lo = document_start
    else:
        window_first = (torch.arange(num_patches, device=device) - earlier).clamp(min=0)
        lo = torch.maximum(starts[:, window_first], document_start)
    hi = ends.clamp(max=seq_len)
    empty = lo >= hi
    # an empty row points at the last token (keeps the intervals non-decreasing) and is zeroed
    lo = torch.where(empty, torch.full_like(lo, seq_len - 1), lo)
    hi = torch.where(empty, torch.full_like(hi, seq_len), hi)
    if queries_per_patch > 1:
        lo, hi, empty = (t.repeat_interleave(queries_per_patch, dim=1) for t in (lo, hi, empty))
    return IntervalMask(lo.contiguous(), hi.contiguous(), seq_len, PATCH_QUERY_BLOCK,
                        empty=empty if bool(empty.any()) else None, implementation=implementation)


def decoder_cross_mask(patch_lengths: torch.Tensor, seq_len: int, earlier: Optional[int],
                       document_ids: Optional[torch.Tensor], implementation: str = "auto") -> IntervalMask:
    """Token queries over the global outputs of the P patches (the one-patch lag)."""
    if earlier is not None and earlier < 0:
        raise ValueError(f"earlier patches must be >= 0 or None, got {earlier}")
    batch, num_patches = patch_lengths.shape
    device = patch_lengths.device
    lagged = decoder_patch_ids_from_lengths(patch_lengths, seq_len)  # [B, N], -1 before any complete patch
    token_patch = patch_ids_from_lengths(patch_lengths, seq_len)
    document_first_patch = token_patch.gather(1, document_starts(document_ids, batch, seq_len, device))
    lo = document_first_patch if earlier is None else torch.maximum(lagged - earlier, document_first_patch)
    hi = lagged + 1
    empty = lo >= hi
    lo = torch.where(empty, lagged.clamp(min=0), lo)
    hi = torch.where(empty, lo + 1, hi)
    return IntervalMask(lo.contiguous(), hi.contiguous(), num_patches, TOKEN_QUERY_BLOCK,
                        empty=empty if bool(empty.any()) else None, implementation=implementation)


def local_attention_pairs(patch_lengths: torch.Tensor, seq_len: int, document_ids: Optional[torch.Tensor],
                          model: ModelConfig) -> LocalAttentionPairs:
    """The score pairs per row the blocked kernels compute for this batch's patterns (FLOPs counting)."""
    batch = patch_lengths.shape[0]
    self_mask = sliding_window_mask(seq_len, model.local_window_size, document_ids, batch, patch_lengths.device)
    encoder = encoder_cross_mask(patch_lengths, seq_len, model.earlier_patches("encoder"), document_ids,
                                 model.cross_attn_k)
    decoder = decoder_cross_mask(patch_lengths, seq_len, model.earlier_patches("decoder"), document_ids)
    return LocalAttentionPairs(*(mask.computed_pairs() / batch for mask in (self_mask, encoder, decoder)))
