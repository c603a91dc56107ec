"""Reference steppers without caches: every step re-runs the full forward pass on the prefix.

They have the steppers' interface so the same generation loop drives both; the benchmark
compares them with the cached ones, and they define what "correct" means for free generation:
the LST prefix is patched with the boundaries the tracker reported, and the token being
predicted continues the open speech patch (or opens its own patch after a closed one).
"""

from __future__ import annotations

import torch


class UncachedLSTStepper:
    """Full LST forward over the prefix at every step; logits of the last position."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def reset(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.history: list[torch.Tensor] = []
        self.patch_lengths: list[list[int]] = [[] for _ in range(batch_size)]
        self.open_lengths = [0] * batch_size
        device = next(self.model.parameters()).device
        self.global_positions = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.global_calls = 0

    def _close(self, row: int) -> None:
        self.patch_lengths[row].append(self.open_lengths[row])
        self.open_lengths[row] = 0
        self.global_positions[row] += 1

    def finish(self, rows: torch.Tensor) -> None:
        for row in torch.nonzero(rows).flatten().tolist():
            if self.open_lengths[row] > 0:
                self._close(row)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, close_before: torch.Tensor, completes: torch.Tensor) -> torch.Tensor:
        self.history.append(tokens)
        for row in range(self.batch_size):
            if bool(close_before[row]) and self.open_lengths[row] > 0:
                self._close(row)
            self.open_lengths[row] += 1
            if bool(completes[row]):
                self._close(row)
        # the predicted token: one more in the open patch, or a new patch of its own
        rows = [lengths + [self.open_lengths[row] + 1] for row, lengths in enumerate(self.patch_lengths)]
        width = max(len(lengths) for lengths in rows)
        patch_lengths = torch.tensor([lengths + [0] * (width - len(lengths)) for lengths in rows],
                                     dtype=torch.long, device=tokens.device)
        self.global_calls += 1
        return self.model(torch.stack(self.history, dim=1), patch_lengths)[:, -1]


class UncachedBaselineStepper:
    """Full GPTModel forward over the prefix at every step."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def reset(self, batch_size: int) -> None:
        self.history: list[torch.Tensor] = []
        device = next(self.model.parameters()).device
        self.global_positions = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.global_calls = 0

    def finish(self, rows: torch.Tensor) -> None:
        """Nothing is pending: every token was its own global position."""

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, close_before: torch.Tensor | None = None,
             completes: torch.Tensor | None = None) -> torch.Tensor:
        self.history.append(tokens)
        prefix = torch.stack(self.history, dim=1)
        positions = torch.arange(prefix.shape[1], device=prefix.device).expand_as(prefix)
        # rows that stopped step with their flags off: their padding is not generated speech
        self.global_positions += 1 if completes is None else completes.long()
        self.global_calls += 1
        return self.model(prefix, positions, None)[:, -1]
