"""``--engine megatron``: megatron-core's DDP (or distributed optimizer), optimizer and pipeline schedules.

A step is ``get_forward_backward_func()`` over the step's micro-batches (gradient accumulation,
1F1B under PP), with ``calculate_per_token_loss`` so that the gradients are those of the mean loss
over every target token of the global batch; then the megatron optimizer (grad clipping inside).
Checkpoints are ``dist_checkpointing`` folders (``checkpointing.py``): TP/PP-reshardable, atomic,
with a manifest verified before anything is read.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_lst.training.arguments import Config
from megatron_lst.training.checkpointing import (load_checkpoint, load_common_state, read_latest_pointer,
                                                 save_checkpoint, write_latest)
from megatron_lst.training.dry_run import ParallelLayout
from megatron_lst.training.engine import Engine, Review, StepOutcome, build_scheduler
from megatron_lst.training.initialize import print_rank_0
from megatron_lst.training.scheduler_resume import load_scheduler_state
from megatron_lst.training.task import TrainingTask


class MegatronEngine(Engine):
    """This rank's pipeline stage of the task's model in megatron-core's DDP, its optimizer and schedule."""

    name = "megatron"

    def __init__(self, config: Config, task: TrainingTask, layout: ParallelLayout):
        self.config = config
        self.task = task
        self.layout = layout
        self.model = self._build_model()
        self.optimizer = self._build_optimizer()
        self.scheduler = build_scheduler(self.optimizer, config)

    def _build_model(self) -> DistributedDataParallel:
        module = self.task.build_model(
            self.config,
            pre_process=parallel_state.is_pipeline_first_stage(),
            post_process=parallel_state.is_pipeline_last_stage(),
        )
        module = module.cuda() if torch.cuda.is_available() else module.cpu()
        tconfig = module.config
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=self.config.parallel.overlap_grad_reduce,
            overlap_param_gather=self.config.parallel.overlap_param_gather,
            use_distributed_optimizer=self.config.parallel.use_distributed_optimizer,
        )
        model = DistributedDataParallel(config=tconfig, ddp_config=ddp_config, module=module)
        tconfig.finalize_model_grads_func = finalize_model_grads
        tconfig.no_sync_func = model.no_sync
        if self.config.parallel.overlap_grad_reduce:  # the schedule launches each bucket's reduce itself
            tconfig.grad_sync_func = model.start_grad_sync
        return model

    def _build_optimizer(self):
        opt, train = self.config.optimizer, self.config.train
        megatron_config = OptimizerConfig(
            optimizer="adam",
            lr=opt.lr,
            min_lr=opt.floor_lr(),
            weight_decay=opt.weight_decay,
            adam_beta1=opt.adam_beta1,
            adam_beta2=opt.adam_beta2,
            adam_eps=opt.adam_eps,
            clip_grad=opt.clip_grad,
            bf16=train.bf16,
            params_dtype=torch.bfloat16 if train.bf16 else torch.float32,
            use_distributed_optimizer=self.config.parallel.use_distributed_optimizer,
            overlap_param_gather=self.config.parallel.overlap_param_gather,
        )
        return get_megatron_optimizer(megatron_config, [self.model])

    @property
    def module(self) -> torch.nn.Module:
        """The model inside DDP (what checkpoints hold)."""
        return self.model.module

    # ------------------------------------------------------------------ steps
    def _forward_backward(self, batches: Iterator[dict], num_microbatches: int, forward_only: bool) -> list[dict]:
        return get_forward_backward_func()(
            forward_step_func=self.task.forward_step,
            data_iterator=batches,
            model=[self.model],
            num_microbatches=num_microbatches,
            seq_length=self.config.data.seq_length,
            micro_batch_size=self.config.data.micro_batch_size,
            forward_only=forward_only,
        ) or []

    def train_step(self, batches: Iterator[dict], num_microbatches: int, review: Review) -> StepOutcome:
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        metrics, skip = review(self._forward_backward(batches, num_microbatches, forward_only=False))
        if skip:
            self.optimizer.zero_grad()
            return StepOutcome(metrics, skipped=True)
        update_successful, grad_norm, _ = self.optimizer.step()
        return StepOutcome(metrics, skipped=not update_successful, grad_norm=grad_norm)

    def eval_losses(self, batches: Iterator[dict], num_microbatches: int) -> list[dict]:
        with self._params_gathered(), torch.no_grad():
            return self._forward_backward(batches, num_microbatches, forward_only=True)

    @contextlib.contextmanager
    def _params_gathered(self):
        """With ``--overlap-param-gather`` the updated parameters arrive during the next training forward
        (a forward pre-hook waits for each bucket); validation and saving read them outside it, so
        gather them all first and put the hook back afterwards, as Megatron-LM does."""
        if not self.config.parallel.overlap_param_gather:
            yield
            return
        self.model.disable_forward_pre_hook()  # also finishes the pending gathers
        try:
            yield
        finally:
            self.model.enable_forward_pre_hook()

    # ------------------------------------------------------------------ checkpoints
    def read_latest(self, root: str | os.PathLike) -> Optional[int]:
        return read_latest_pointer(root)

    def write_latest(self, root: str | os.PathLike, iteration: Optional[int]) -> None:
        write_latest(root, iteration)

    def read_common(self, root: str | os.PathLike, iteration: int) -> dict:
        return load_common_state(root, iteration)

    def save(self, root: str | os.PathLike, iteration: int, common: dict) -> Path:
        with self._params_gathered():
            return save_checkpoint(root, iteration, self.module, self.optimizer, self.scheduler, common)

    def load(self, root: str | os.PathLike, iteration: int) -> dict:
        ckpt = self.config.checkpoint
        no_optim = not ckpt.load_optim or ckpt.finetune
        return load_checkpoint(
            root,
            self.module,
            optimizer=None if no_optim else self.optimizer,
            scheduler=None if no_optim else self.scheduler,
            iteration=iteration,
            load_rng=not ckpt.finetune,
            load_scheduler=lambda scheduler, saved: load_scheduler_state(
                scheduler, saved, ckpt.override_opt_param_scheduler, ckpt.use_checkpoint_opt_param_scheduler,
                log=print_rank_0),
        )
