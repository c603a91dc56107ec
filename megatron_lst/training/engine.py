"""What the trainer needs from an engine: build the model, optimizer and schedule; run a step; save and load.

``training/loop.py`` is the one training loop (data order, NaN policy, logging, validation,
checkpoint cadence, signals, exact resume). Behind this interface sits the engine that owns the
model's distribution and its optimizer: megatron-core (DDP or the distributed optimizer, TP/PP
schedules; ``megatron_engine.py``) or DeepSpeed ZeRO (``deepspeed_engine.py``). Both step the
same megatron-core ``OptimizerParamScheduler``, report per-micro-batch ``{name: [sum, count]}``
metrics that the loop reduces, and write a checkpoint as ``<save>/iter_NNNNNNN/`` with a verified
manifest, differing only in the files inside and in the name of the ``latest`` pointer.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_lst.training.arguments import Config
from megatron_lst.training.dry_run import ParallelLayout
from megatron_lst.training.task import TrainingTask

# The loop's review of a step's losses, called by the engine after the step's forward passes and
# before its update: the reduced metrics, and whether the update must be discarded (NaN/Inf).
Review = Callable[[list[dict]], tuple[dict, bool]]


@dataclass
class StepOutcome:
    """What an engine's step did: the reduced metrics the review returned, whether the update was
    discarded, and the gradient norm of an applied one."""

    metrics: dict = field(default_factory=dict)
    skipped: bool = False
    grad_norm: Optional[float] = None


def build_scheduler(optimizer, config: Config) -> OptimizerParamScheduler:
    """Warm-up, then decay (``--lr-decay-style``) to ``--min-lr`` (or ``--lr x --min-lr-ratio``), counted
    in samples so that the schedule does not depend on the batch layout; the same for both engines."""
    opt, data = config.optimizer, config.data
    decay_iters = opt.lr_decay_iters or config.train.train_iters
    warmup = min(opt.lr_warmup_iters, max(decay_iters - 1, 0))
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=opt.lr, min_lr=opt.floor_lr(),
        lr_warmup_steps=warmup * data.global_batch_size, lr_decay_steps=decay_iters * data.global_batch_size,
        lr_decay_style=opt.lr_decay_style, start_wd=opt.weight_decay, end_wd=opt.weight_decay,
        wd_incr_steps=decay_iters * data.global_batch_size, wd_incr_style="constant",
    )


class Engine(ABC):
    """A model, its optimizer and schedule, distributed as ``layout`` says."""

    name: str
    layout: ParallelLayout
    model: torch.nn.Module
    optimizer: object
    scheduler: OptimizerParamScheduler

    @abstractmethod
    def train_step(self, batches: Iterator[dict], num_microbatches: int, review: Review) -> StepOutcome:
        """Forward and backward ``num_microbatches`` micro-batches, give their reported metrics to
        ``review``, then apply the accumulated update, or discard it when ``review`` says so."""

    @abstractmethod
    def eval_losses(self, batches: Iterator[dict], num_microbatches: int) -> list[dict]:
        """Forward only: each micro-batch's reported ``{name: [sum, count]}`` (on the stage that has them)."""

    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def train_mode(self, training: bool = True) -> None:
        self.model.train(training)

    # ------------------------------------------------------------------ checkpoints
    @abstractmethod
    def read_latest(self, root: str | os.PathLike) -> Optional[int]:
        """The iteration this engine's ``latest`` pointer in ``root`` names, None without one."""

    @abstractmethod
    def write_latest(self, root: str | os.PathLike, iteration: Optional[int]) -> None:
        """Point ``latest`` at ``iteration`` atomically (None: remove it)."""

    @abstractmethod
    def read_common(self, root: str | os.PathLike, iteration: int) -> dict:
        """The common (non-sharded) state of a verified checkpoint, without loading any weights."""

    @abstractmethod
    def save(self, root: str | os.PathLike, iteration: int, common: dict) -> Path:
        """Write model, optimizer, scheduler, RNG states and ``common`` to ``iter_<iteration>``
        atomically (every rank calls it); returns the folder."""

    @abstractmethod
    def load(self, root: str | os.PathLike, iteration: int) -> dict:
        """Load a verified checkpoint as ``--no-load-optim`` / ``--finetune`` and the scheduler flags
        say; returns its common state."""


def build_engine(config: Config, task: TrainingTask, layout: ParallelLayout) -> Engine:
    """The engine ``--engine`` names, built around ``task``'s model."""
    if config.train.engine == "deepspeed":
        from megatron_lst.training.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(config, task, layout)
    from megatron_lst.training.megatron_engine import MegatronEngine

    return MegatronEngine(config, task, layout)
