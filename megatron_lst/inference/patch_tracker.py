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

from typing import Optional

import torch

from megatron_lst.tokenizer import VocabLayout


class StaticPatchTracker:
    """Per-row state of the open patch; ``update`` takes the next token of every row.

    ``fold_marker`` (the run's ``--fold-speech-marker`` for static rows) lets ``<s>`` open a patch
    that waits for its span's units instead of being a patch of its own; whether a unit follows is
    only known at the next token, so a lone ``<s>`` closes late exactly like a short run.
    ``max_patch_length`` splits every patch into pieces of at most that many tokens from its start,
    as the training kernel caps them.
    """

    def __init__(self, batch_size: int, patch_size: int, vocab: VocabLayout, device: torch.device | str = "cpu",
                 causal: bool = False, fold_marker: bool = False, max_patch_length: Optional[int] = None):
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        if max_patch_length is not None and max_patch_length < 1:
            raise ValueError(f"max_patch_length must be >= 1 or None, got {max_patch_length}")
        self.patch_size = patch_size
        self.causal = causal
        self.fold_marker = fold_marker
        self.max_patch_length = max_patch_length
        self.vocab = vocab
        self.open_units = torch.zeros(batch_size, dtype=torch.long, device=device)  # units of the open static run
        self.open_tokens = torch.zeros(batch_size, dtype=torch.long, device=device)  # tokens of the open patch

    def is_unit(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens >= self.vocab.unit_offset) & (tokens < self.vocab.vocab_size)

    def update(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B] -> (close_before [B], completes [B]) booleans."""
        is_unit = self.is_unit(tokens)
        no = torch.zeros_like(is_unit)
        ends_open = (self.open_tokens > 0) & ~is_unit  # a non-unit token ends the open patch
        # paper rule: that patch closes before the token; causal rule: the token joins it as its last
        close_before, joins = (no, ends_open) if self.causal else (ends_open, no)
        opens_marker = (tokens == self.vocab.speech_marker_id) & ~joins if self.fold_marker else no
        zero = torch.zeros_like(self.open_units)
        self.open_units = torch.where(is_unit, self.open_units + 1, zero)
        grows = is_unit | joins
        self.open_tokens = torch.where(grows, self.open_tokens + 1, torch.where(opens_marker, 1, zero))
        run_full = is_unit & (self.open_units == self.patch_size)
        completes = (~is_unit & ~opens_marker) | run_full
        if self.max_patch_length is not None:
            completes |= self.open_tokens == self.max_patch_length
        self.open_units = torch.where(run_full | ~is_unit, zero, self.open_units)
        self.open_tokens = torch.where(completes, zero, self.open_tokens)
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
