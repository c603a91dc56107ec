"""Progress of a run, and what one optimizer step reports: the part of a checkpoint that is not weights.

``TrainState`` is a small stateful object (``state_dict`` / ``load_state_dict``) that either engine's
checkpoint carries beside the model, optimizer and scheduler, so that a resumed run continues with
the same iteration, data position, FLOPs and token budgets and per-dataset token shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

from megatron_lst.training.task import SHARE_PREFIX


@dataclass
class StepResult:
    """One optimizer step, reduced over the data-parallel ranks: what the logger and ``TrainState`` take."""

    metrics: dict = field(default_factory=dict)
    grad_norm: Optional[float] = None
    skipped: bool = False
    tokens: float = 0.0
    positions: float = 0.0
    flops: float = 0.0
    flops_by_module: dict = field(default_factory=dict)


@dataclass
class TrainState:
    """Everything about progress that a checkpoint must carry for an exact resume."""

    iteration: int = 0
    consumed_samples: int = 0
    flops_so_far: float = 0.0
    tokens_so_far: float = 0.0
    skipped_iterations: int = 0
    # raw tokens each blended dataset supplied so far (from the steps' "share <name>" metrics)
    tokens_by_dataset: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        """Plain values only (saved in a checkpoint's common state, next to the run config)."""
        state = {item.name: getattr(self, item.name) for item in fields(self)}
        state["tokens_by_dataset"] = dict(self.tokens_by_dataset)
        return state

    def load_state_dict(self, saved: dict) -> None:
        """Take the progress fields back from a checkpoint's common state; a field it lacks (an
        older checkpoint) starts from zero."""
        for key, current in self.state_dict().items():
            setattr(self, key, type(current)(saved.get(key) or type(current)()))

    def token_shares_so_far(self) -> dict[str, float]:
        """Each blended dataset's share of the raw tokens trained on since the run began."""
        total = sum(self.tokens_by_dataset.values())
        return {name: tokens / total for name, tokens in sorted(self.tokens_by_dataset.items())} if total else {}

    def advance(self, result: StepResult, global_batch_size: int) -> None:
        """Count one finished step: samples consumed, FLOPs, raw tokens, skips."""
        self.iteration += 1
        self.consumed_samples += global_batch_size
        self.flops_so_far += result.flops
        self.tokens_so_far += result.tokens
        self.skipped_iterations += int(result.skipped)
        for name, share in result.metrics.items():
            if name.startswith(SHARE_PREFIX):  # per-step shares are lumpy (bucketing): the running total is not
                dataset = name[len(SHARE_PREFIX):]
                self.tokens_by_dataset[dataset] = self.tokens_by_dataset.get(dataset, 0.0) + share * result.tokens

    def budget_reached(self, train) -> Optional[str]:
        """Why training must stop now (``--train-iters``, ``--train-flops``, ``--train-tokens``), or None."""
        if self.iteration >= train.train_iters:
            if train.train_samples is not None:
                return f"reached --train-samples {train.train_samples} ({train.train_iters} iterations)"
            return f"reached --train-iters {train.train_iters}"
        if train.train_flops is not None and self.flops_so_far >= train.train_flops:
            return f"reached --train-flops {train.train_flops:.3g}"
        if train.train_tokens is not None and self.tokens_so_far >= train.train_tokens:
            return f"reached --train-tokens {train.train_tokens:.3g}"
        return None
