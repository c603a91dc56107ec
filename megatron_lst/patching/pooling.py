"""Max-pooling of token states into patch slots: the patch encoder's initial patch queries."""

from __future__ import annotations

import torch

from megatron_lst.patching.ids import patch_ids_from_lengths


def max_pool_patches(token_states: torch.Tensor, patch_lengths: torch.Tensor) -> torch.Tensor:
    """[B, N, D] token states, [B, P] patch lengths -> [B, P, D] element-wise max per patch.

    Patches with no token among the N (right padding, or a last patch that holds only the next
    token) get zeros. Differentiable: the gradient flows to the arg-max token(s).
    """
    if token_states.dim() != 3:
        raise ValueError(f"token_states must be [B, N, D], got shape {tuple(token_states.shape)}")
    if patch_lengths.dim() != 2 or patch_lengths.shape[0] != token_states.shape[0]:
        raise ValueError(
            f"patch_lengths must be [B, P] with B={token_states.shape[0]}, got shape {tuple(patch_lengths.shape)}"
        )
    batch, seq_len, dim = token_states.shape
    patch_ids = patch_ids_from_lengths(patch_lengths, seq_len)
    pooled = token_states.new_zeros(batch, patch_lengths.shape[1], dim)
    index = patch_ids.unsqueeze(-1).expand(batch, seq_len, dim)
    return pooled.scatter_reduce(1, index, token_states, reduce="amax", include_self=False)
