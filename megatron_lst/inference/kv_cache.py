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
    """Keys, values and validity of the slots one attention layer has seen so far.

    Storage grows by doubling and is written in place, so a step costs O(1) copies rather than
    re-concatenating the whole cache (which made long generations quadratic in memory traffic).
    A windowed cache compacts to its last ``window_size`` slots when its storage fills.
    """

    def __init__(self, window_size: Optional[int] = None):
        if window_size is not None and window_size < 1:
            raise ValueError(f"window_size must be >= 1 or None, got {window_size}")
        self.window_size = window_size
        self._keys: Optional[torch.Tensor] = None  # [B, H, capacity, D]
        self._values: Optional[torch.Tensor] = None
        self._valid: Optional[torch.Tensor] = None  # [B, capacity] bool
        self.start = 0  # first visible slot
        self.end = 0  # one past the last written slot
        self.all_valid = True  # lets attention skip the mask when no slot is invalid

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def keys(self) -> torch.Tensor:
        return self._keys[:, :, self.start:self.end]

    @property
    def values(self) -> torch.Tensor:
        return self._values[:, :, self.start:self.end]

    @property
    def valid(self) -> torch.Tensor:
        return self._valid[:, self.start:self.end]

    def _make_room(self, steps: int, like: torch.Tensor) -> None:
        if self._keys is None:
            batch, heads, _, dim = like.shape
            capacity = max(64, 2 * steps if self.window_size is None else 2 * self.window_size + steps)
            self._keys = like.new_empty(batch, heads, capacity, dim)
            self._values = like.new_empty(batch, heads, capacity, dim)
            self._valid = torch.ones(batch, capacity, dtype=torch.bool, device=like.device)
            return
        capacity = self._keys.shape[2]
        if self.end + steps <= capacity:
            return
        if self.window_size is not None and self.length + steps <= capacity:
            keep = slice(self.start, self.end)  # compact the window to the front
            self._keys[:, :, : self.length] = self._keys[:, :, keep].clone()
            self._values[:, :, : self.length] = self._values[:, :, keep].clone()
            self._valid[:, : self.length] = self._valid[:, keep].clone()
            self.start, self.end = 0, self.length
            return
        grow = max(capacity, steps)  # a chunk longer than the storage (a prompt read at once) grows it by itself
        batch, heads, _, dim = self._keys.shape
        self._keys = torch.cat([self._keys, self._keys.new_empty(batch, heads, grow, dim)], dim=2)
        self._values = torch.cat([self._values, self._values.new_empty(batch, heads, grow, dim)], dim=2)
        self._valid = torch.cat([self._valid, self._valid.new_ones(batch, grow)], dim=1)

    def append(self, keys: torch.Tensor, values: torch.Tensor, valid: Optional[torch.Tensor] = None) -> None:
        """Add one or more slots: keys/values [B, H, S, D], valid [B, S] (None: all valid)."""
        steps = keys.shape[2]
        self._make_room(steps, keys)
        self._keys[:, :, self.end:self.end + steps] = keys
        self._values[:, :, self.end:self.end + steps] = values
        if valid is None:
            self._valid[:, self.end:self.end + steps] = True
        else:
            self._valid[:, self.end:self.end + steps] = valid
            self.all_valid = self.all_valid and bool(valid.all())
        self.end += steps
        if self.window_size is not None and self.length > self.window_size:
            self.start = self.end - self.window_size
            if not self.all_valid:
                self.all_valid = bool(self.valid.all())


    def select_rows(self, index: torch.Tensor) -> None:
        """Keep row ``index[i]`` as new row i (rows may repeat): one prompt's cache becomes the
        cache of each of its endings (evaluation/prompt_cache.py)."""
        if self._keys is None:
            return
        self._keys = self._keys.index_select(0, index)
        self._values = self._values.index_select(0, index)
        self._valid = self._valid.index_select(0, index)


def attend_cache(queries: torch.Tensor, cache: KVCache, scale: float) -> torch.Tensor:
    """One query step [B, H, 1, D] over every valid cached slot -> [B, H, 1, D].

    The newest slot is the query's own token (self-attention) or the newest patch
    (cross-attention), so the window and causality are already what the cache holds.
    A row with no valid slot gets zeros (its output is never read).
    """
    mask = None if cache.all_valid else cache.valid[:, None, None, :]
    output = F.scaled_dot_product_attention(queries, cache.keys, cache.values, attn_mask=mask, scale=scale)
    return output if mask is None else torch.nan_to_num(output)


def last_valid_slots(valid: torch.Tensor, count: int) -> torch.Tensor:
    """[B, L] validity -> [B, L] True for each row's newest ``count`` valid slots.

    The decoder's cross-attention cache gets a slot at every global step, valid only for the rows
    that closed a patch then, so a window of patches is a window of each row's valid slots.
    """
    valid_from_here = valid.flip(1).cumsum(1).flip(1)  # valid slots at or after each slot
    return valid & (valid_from_here <= count)
