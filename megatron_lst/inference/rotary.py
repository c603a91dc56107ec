"""Rotary frequencies for arbitrary positions, from a megatron ``RotaryEmbedding``."""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding


class RotaryTable:
    """Frequencies [L, 1, 1, D] of positions 0..L-1, grown by doubling as decoding goes on."""

    def __init__(self, rotary: RotaryEmbedding, initial_length: int = 256):
        self.rotary = rotary
        self.table = rotary(initial_length)

    def at(self, positions: torch.Tensor) -> torch.Tensor:
        """positions [B] -> frequencies [1, B, 1, D] (one new position per row), or positions
        [B, S] -> [S, B, 1, D] (a chunk of S new positions per row, ``extend``)."""
        needed = int(positions.max()) + 1
        if needed > self.table.shape[0]:
            self.table = self.rotary(max(needed, 2 * self.table.shape[0]))
        if positions.dim() == 2:
            return self.table[positions.t().to(self.table.device)].view(*positions.t().shape, 1, -1)
        return self.table[positions.to(self.table.device)].view(1, positions.shape[0], 1, -1)
