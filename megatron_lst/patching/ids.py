"""Patch ids from patch lengths: which patch each token belongs to, for encoder and decoder.

docs/method.md §2 worked example, 9 tokens, patch_lengths [1, 3, 2, 4] (sum N+1: the last patch holds
the next token):
    encoder ids [0, 1, 1, 1, 2, 2, 3, 3, 3]   (the patch that contains token i)
    decoder ids [0, 0, 0, 1, 1, 2, 2, 2, 2]   (the last patch complete before token i+1 starts)
The decoder's one-patch lag is what keeps next-token prediction causal.
"""

from __future__ import annotations

import torch


def _as_batch(patch_lengths: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, bool]:
    """Check [B, P] (or [P]) integer lengths that cover seq_len; return them as [B, P]."""
    if not isinstance(patch_lengths, torch.Tensor):
        raise TypeError(f"patch_lengths must be a torch.Tensor, got {type(patch_lengths).__name__}")
    if patch_lengths.dim() not in (1, 2):
        raise ValueError(f"patch_lengths must be [B, P] or [P], got shape {tuple(patch_lengths.shape)}")
    if patch_lengths.dtype.is_floating_point or patch_lengths.dtype == torch.bool:
        raise ValueError(f"patch_lengths must hold integers, got {patch_lengths.dtype}")
    single = patch_lengths.dim() == 1
    lengths = patch_lengths[None] if single else patch_lengths
    if lengths.shape[1] == 0 and seq_len > 0:
        raise ValueError(f"patch_lengths has no patches but seq_len is {seq_len}")
    if (lengths < 0).any():
        raise ValueError("patch_lengths must be >= 0")
    if ((lengths[:, 1:] > 0) & (lengths[:, :-1] == 0)).any():
        raise ValueError("patch_lengths: zero lengths may only pad a row on the right")
    if (lengths.sum(-1) < seq_len).any():
        raise ValueError(f"patch_lengths must sum to at least seq_len={seq_len} in every row")
    return lengths.long(), single


def _ends(lengths: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(lengths, dim=-1).contiguous()


def patch_ids_from_lengths(patch_lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Encoder patch id of every token: [B, P] lengths -> [B, seq_len] int64 ([P] -> [seq_len])."""
    lengths, single = _as_batch(patch_lengths, seq_len)
    positions = torch.arange(seq_len, device=lengths.device).expand(lengths.shape[0], seq_len).contiguous()
    ids = torch.searchsorted(_ends(lengths), positions, right=True)
    return ids[0] if single else ids


def decoder_patch_ids_from_lengths(patch_lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Decoder patch id of every token: the last patch that ends before token i+1 begins.

    When the lengths sum to exactly seq_len the token after the sequence would open a new
    patch, so the last token's decoder id is the last real patch.
    """
    lengths, single = _as_batch(patch_lengths, seq_len)
    positions = torch.arange(1, seq_len + 1, device=lengths.device).expand(lengths.shape[0], seq_len).contiguous()
    ids = torch.searchsorted(_ends(lengths), positions, right=True) - 1
    last_real_patch = (lengths > 0).sum(-1, keepdim=True) - 1
    ids = torch.minimum(ids, last_real_patch)
    return ids[0] if single else ids
