"""One patch for a row's right-padding, so padding costs the global model one position, not one per PAD.

A micro-batch is right-padded to its longest row (data/sampler.py ``collate_packed``). A packed
speech-text row holds 1-4 tokens per global position and a text row one, so a batch mixing both
pads its text rows with hundreds of PAD tokens; the patching kernel treats PAD as text, one patch
per token, and the global transformer would then run as many positions on padding as on data.
The PAD tokens come after every real token and their targets are masked, so grouping them into a
single trailing patch changes no real token's output (tested) and shrinks the patch dimension to
the longest row's real patches plus one.
"""

from __future__ import annotations

import torch


def merge_padding_patches(patch_lengths: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
    """patch_lengths [B, P] (0 after a row's last patch), num_tokens [B] real tokens per row
    -> [B, P'] where every row's tokens from ``num_tokens`` on form one patch (the input itself
    when no row is padded).

    A row whose patches do not end exactly at ``num_tokens`` (a patch straddling real tokens and
    padding, which the kernel never produces) is an error, not something to repair silently.
    """
    lengths = patch_lengths.long()
    ends = torch.cumsum(lengths, dim=1)
    totals = ends[:, -1]
    num_tokens = num_tokens.to(totals)
    if not bool((num_tokens < totals).any()):
        return patch_lengths
    real = (ends <= num_tokens[:, None]) & (lengths > 0)
    real_counts = real.sum(dim=1)
    real_ends = (lengths * real).sum(dim=1)  # real patches are a prefix: their lengths sum to where they end
    if not torch.equal(real_ends, num_tokens):
        row = int(torch.nonzero(real_ends != num_tokens)[0])
        raise ValueError(f"row {row}: no patch boundary at its last real token ({int(num_tokens[row])}); "
                         "a patch spans real tokens and padding")
    padding = totals - real_ends
    width = int((real_counts + (padding > 0).long()).max())
    merged = torch.zeros(lengths.shape[0], width, dtype=lengths.dtype, device=lengths.device)
    columns = torch.arange(width, device=lengths.device)[None, :]
    keep = columns < real_counts[:, None]
    merged[keep] = lengths[:, :width][keep]  # real patches come first; width <= P always
    rows = torch.nonzero(padding > 0)[:, 0]
    merged[rows, real_counts[rows]] = padding[rows]
    return merged.to(patch_lengths.dtype)
