"""Static patch boundaries decided one token at a time, as generation produces the stream.

Static patching (patching/strategies.py) cuts each speech span into runs of ``patch_size`` units
from the span's start; every other token (text, BOS, EOS, markers) is a patch of its own. When
generating, whether a unit closes a *short* last run is only known once the next token turns out
not to be a unit, so the tracker reports two flags per row and token:

- ``close_before``: an open (partial) speech patch ends before this token;
- ``completes``:    this token ends its patch (a text-like token, or the ``patch_size``-th unit).

Until a span ends, the next token is assumed to continue it: that is what the global model can
know without seeing the future, and it is the same rule in the cached and uncached paths.

With ``causal=True`` (``--patch-boundary causal``) the tracker follows the training patches
exactly: the non-speech token that ends a short run joins it as its last token and closes it, so
``close_before`` is never set and teacher-forced generation reproduces the training forward.
"""

from __future__ import annotations

import torch

from megatron_lst.tokenizer import VocabLayout


class StaticPatchTracker:
    """Per-row open speech run length; ``update`` takes the next token of every row."""

    def __init__(self, batch_size: int, patch_size: int, vocab: VocabLayout, device: torch.device | str = "cpu",
                 causal: bool = False):
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.patch_size = patch_size
        self.causal = causal
        self.vocab = vocab
        self.open_units = torch.zeros(batch_size, dtype=torch.long, device=device)

    def is_unit(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens >= self.vocab.unit_offset) & (tokens < self.vocab.vocab_size)

    def update(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B] -> (close_before [B], completes [B]) booleans."""
        is_unit = self.is_unit(tokens)
        close_before = (self.open_units > 0) & ~is_unit
        if self.causal:  # the token joins the open run as its last token instead
            close_before = torch.zeros_like(close_before)
        self.open_units = torch.where(is_unit, self.open_units + 1, torch.zeros_like(self.open_units))
        completes = ~is_unit | (self.open_units == self.patch_size)
        self.open_units = torch.where(completes, torch.zeros_like(self.open_units), self.open_units)
        return close_before, completes


def flags_from_patch_lengths(patch_lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[B, P] patch lengths -> completes [B, seq_len]: token i is the last of its patch.

    Teacher forcing knows every boundary (the patching saw the whole sequence), so no patch is
    ever closed late and ``close_before`` stays False.
    """
    ends = torch.cumsum(patch_lengths.long(), dim=-1) - 1  # index of each patch's last token
    completes = torch.zeros(patch_lengths.shape[0], seq_len + 1, dtype=torch.bool, device=patch_lengths.device)
    completes.scatter_(1, ends.clamp(0, seq_len), torch.ones_like(ends, dtype=torch.bool))
    return completes[:, :seq_len]
