"""Cross-attention masks between tokens and patches for the patch encoder and decoder.

Masks are boolean, True where attention is allowed (the convention of
``torch.nn.functional.scaled_dot_product_attention``'s boolean ``attn_mask``).

``earlier_patches`` is how many patches before the own (encoder) or lagged (decoder) patch are
visible as well: 0 sees only that patch, None sees every earlier patch. ``document_ids`` [B, N]
(optional) further restricts attention to the token's own document; the schema guarantees
every document opens with BOS, its own patch, so no decoder row is left empty.
"""

from __future__ import annotations

from typing import Optional

import torch

from megatron_lst.patching.ids import decoder_patch_ids_from_lengths, patch_ids_from_lengths


def _window(target: torch.Tensor, source: torch.Tensor, earlier_patches: Optional[int]) -> torch.Tensor:
    """True where source patch id lies in [target - earlier_patches, target]."""
    if earlier_patches is not None and earlier_patches < 0:
        raise ValueError(f"earlier_patches must be >= 0 or None, got {earlier_patches}")
    visible = source <= target
    if earlier_patches is not None:
        visible &= source >= target - earlier_patches
    return visible


def patch_documents(patch_lengths: torch.Tensor, document_ids: torch.Tensor) -> torch.Tensor:
    """Document of each patch (that of its first token; empty patches take the last token's)."""
    if document_ids.shape[0] != patch_lengths.shape[0] or document_ids.dim() != 2:
        raise ValueError(
            f"document_ids must be [B, N] with B={patch_lengths.shape[0]}, got shape {tuple(document_ids.shape)}"
        )
    patch_starts = torch.cumsum(patch_lengths, dim=-1) - patch_lengths
    return document_ids.gather(1, patch_starts.clamp(max=document_ids.shape[1] - 1).long())


def encoder_cross_attention_mask(
    patch_lengths: torch.Tensor,
    seq_len: int,
    earlier_patches: Optional[int] = 0,
    document_ids: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """[B, P] lengths -> bool [B, P, seq_len]: patch q attends the tokens of its own patch.

    With ``earlier_patches=k`` it also attends the tokens of patches q-k .. q-1. Rows of
    patches with no token among the seq_len (right padding, a last patch holding only the next
    token) are all False: the attention code must skip or zero them.
    """
    if patch_lengths.dim() != 2:
        raise ValueError(f"patch_lengths must be [B, P], got shape {tuple(patch_lengths.shape)}")
    token_patch = patch_ids_from_lengths(patch_lengths, seq_len)
    patch_index = torch.arange(patch_lengths.shape[1], device=patch_lengths.device)
    mask = _window(patch_index[None, :, None], token_patch[:, None, :], earlier_patches)
    if document_ids is not None:
        mask &= patch_documents(patch_lengths, document_ids)[:, :, None] == document_ids[:, None, :seq_len]
    return mask


def decoder_cross_attention_mask(
    patch_lengths: torch.Tensor,
    seq_len: int,
    earlier_patches: Optional[int] = None,
    document_ids: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """[B, P] lengths -> bool [B, seq_len, P]: token i attends the global outputs of patches
    up to its decoder patch id (the one-patch lag), optionally only the last earlier_patches+1.
    """
    if patch_lengths.dim() != 2:
        raise ValueError(f"patch_lengths must be [B, P], got shape {tuple(patch_lengths.shape)}")
    decoder_patch = decoder_patch_ids_from_lengths(patch_lengths, seq_len)
    patch_index = torch.arange(patch_lengths.shape[1], device=patch_lengths.device)
    mask = _window(decoder_patch[:, :, None], patch_index[None, None, :], earlier_patches)
    if document_ids is not None:
        mask &= patch_documents(patch_lengths, document_ids)[:, None, :] == document_ids[:, :seq_len, None]
    return mask
