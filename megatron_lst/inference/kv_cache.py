"""Key/value caches for one attention layer, in the [batch, heads, length, head_dim] layout of SDPA.

Every step appends one slot per row. A slot may be *invalid* for a row (the global model steps
for the rows that closed a patch; the others append a slot that no query may see), so the cache
keeps a [batch, length] validity mask next to the keys. A sliding-window cache also drops the
slots that no future query can reach (older than ``window_size`` steps), which keeps decoding
cost flat in the sequence length: the local modules attend at most ``window_size`` tokens.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


class KVCache:
    """Keys, values and validity of the slots one attention layer has seen so far."""

    def __init__(self, window_size: Optional[int] = None):
        if window_size is not None and window_size < 1:
            raise ValueError(f"window_size must be >= 1 or None, got {window_size}")
        self.window_size = window_size
        self.keys: Optional[torch.Tensor] = None  # [B, H, L, D]
        self.values: Optional[torch.Tensor] = None
        self.valid: Optional[torch.Tensor] = None  # [B, L] bool
        self.all_valid = True  # lets attention skip the mask when no slot is invalid

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def append(self, keys: torch.Tensor, values: torch.Tensor, valid: Optional[torch.Tensor] = None) -> None:
        """Add one or more slots: keys/values [B, H, S, D], valid [B, S] (None: all valid)."""
        batch, _, steps, _ = keys.shape
        if valid is None:
            valid = torch.ones(batch, steps, dtype=torch.bool, device=keys.device)
        else:
            self.all_valid = self.all_valid and bool(valid.all())
        if self.keys is None:
            self.keys, self.values, self.valid = keys, values, valid
        else:
            self.keys = torch.cat([self.keys, keys], dim=2)
            self.values = torch.cat([self.values, values], dim=2)
            self.valid = torch.cat([self.valid, valid], dim=1)
        if self.window_size is not None and self.length > self.window_size:
            self.keys = self.keys[:, :, -self.window_size:]
            self.values = self.values[:, :, -self.window_size:]
            self.valid = self.valid[:, -self.window_size:]


def attend_cache(queries: torch.Tensor, cache: KVCache, scale: float) -> torch.Tensor:
    """One query step [B, H, 1, D] over every valid cached slot -> [B, H, 1, D].

    The newest slot is the query's own token (self-attention) or the newest patch
    (cross-attention), so the window and causality are already what the cache holds.
    A row with no valid slot gets zeros (its output is never read).
    """
    mask = None if cache.all_valid else cache.valid[:, None, None, :]
    output = F.scaled_dot_product_attention(queries, cache.keys, cache.values, attn_mask=mask, scale=scale)
    return output if mask is None else torch.nan_to_num(output)
