"""The training loop, one for both engines: data, NaN policy, logs, validation, checkpoints, signals.

The engine (``training/engine.py``: megatron-core DDP/distributed optimizer with TP/PP schedules,
or DeepSpeed ZeRO) owns the model, optimizer and schedule and runs a step's micro-batches; this
loop owns everything around them, so both engines share it: the data order (keyed by consumed
samples, exact on resume), counting tokens and FLOPs, the reduction of the reported metrics, the
NaN/Inf policy (skip the step and count it, or stop), log lines and TensorBoard scalars, periodic
validation, atomic checkpoints on a cadence with the ``--save`` folder rules, stop conditions
(iterations, FLOPs budget, token budget, SIGTERM/SIGUSR1 from a scheduler) and exact resume.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Iterator, Optional

import torch
from megatron.core import parallel_state

from megatron_lst.training import collectives
from megatron_lst.training.arguments import Config
from megatron_lst.training.batch_broadcast import tensor_parallel_data_iterator
from megatron_lst.training.checkpoint_folder import prepare_save_folder, prune_checkpoints, same_folder
from megatron_lst.training.checkpoint_manifest import CheckpointError
from megatron_lst.training.checkpointing import iteration_dir, resolve_iteration
from megatron_lst.training.engine import Engine, build_engine
from megatron_lst.training.initialize import initialize_parallel, print_rank_0
from megatron_lst.training.metrics import MetricsLogger
from megatron_lst.training.sampler import SamplingOptions, build_data_iterator
from megatron_lst.training.run_config import encode_saved
from megatron_lst.training.signals import PreemptionHandler
from megatron_lst.training.task import TaskData, TrainingTask
from megatron_lst.training.train_state import StepResult, TrainState


class CountingIterator:
    """Passes micro-batches through to the engine while adding up their tokens and FLOPs."""

    def __init__(self, iterator: Iterator[dict], task: TrainingTask):
        self.iterator = iterator
        self.task = task
        self.tokens = 0.0
        self.positions = 0.0
        self.flops = 0.0
        self.flops_by_module: dict[str, float] = {}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self.iterator)
        self.tokens += self.task.batch_tokens(batch)
        self.positions += self.task.batch_positions(batch)
        breakdown = self.task.flops_breakdown(batch)  # LST: encoder / global / decoder separately
        if breakdown is None:
            self.flops += self.task.batch_flops(batch)
        else:
            for module, flops in breakdown.items():
                self.flops_by_module[module] = self.flops_by_module.get(module, 0.0) + flops
            self.flops = self.flops_by_module["total"]
        return batch


class Trainer:
    """Builds the engine and the data for a task; runs and resumes training."""

    def __init__(self, config: Config, task_factory):
        self.start_time = time.time()  # --exit-duration-in-mins counts from here, set-up included
        self.config = config
        self.layout = initialize_parallel(config)
        self.task: TrainingTask = task_factory(config)
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.engine: Engine = build_engine(config, self.task, self.layout)
        self.state = TrainState()
        self._resumed_layout: Optional[dict] = None  # the batch sizes of the checkpoint resumed from
        self._loaded_iteration: Optional[int] = None  # kept by --keep-last while this run lasts
        self.metrics = MetricsLogger(config)
        self._load()
        self._prepare_save_folder()
        self._build_data()

    @property
    def num_microbatches(self) -> int:
        return self.layout.micro_batches_per_step

    @property
    def model(self) -> torch.nn.Module:
        return self.engine.model

    @property
    def optimizer(self):
        return self.engine.optimizer

    @property
    def scheduler(self):
        return self.engine.scheduler

    # ---------------------------------------------------------------- data
    def _build_data(self) -> None:
        cfg = self.config
        train_samples = cfg.train.train_iters * cfg.data.global_batch_size
        # validation re-reads the same first samples at every run, so its losses are comparable
        valid_samples = max(cfg.logging.eval_iters * cfg.data.global_batch_size, 1)
        # --valid-data-path: validation reads that blend whole (its own collate: it may be text-only
        # where training is speech-text); built first, so the task keeps the training blend's names
        self.valid_data: Optional[TaskData] = None
        if cfg.data.valid_data_path:
            valid_config = dataclasses.replace(cfg, data=dataclasses.replace(
                cfg.data, data_path=list(cfg.data.valid_data_path), split="0,100,0"))
            self.valid_data = self.task.build_datasets(valid_config, 0, valid_samples)
        self.data: TaskData = self.task.build_datasets(cfg, train_samples, valid_samples)
        if self.valid_data is None:
            self.valid_data = self.data
        check_resumed_batch_layout(self._resumed_layout, cfg.data, self.data.sampling)
        self.train_iterator = self._iterator(self.data, self.data.train, self.state.consumed_samples)

    def _iterator(self, data: TaskData, dataset, consumed: int, step: Optional[int] = None) -> Iterator[dict]:
        """Micro-batches from ``consumed`` samples on; ``step`` keys them all (validation).

        Only tensor-parallel rank 0 of each TP group builds the DataLoader; it broadcasts each
        micro-batch to the other ranks of its group (``training/batch_broadcast.py``).
        """
        cfg = self.config
        return tensor_parallel_data_iterator(lambda: build_data_iterator(
            dataset, consumed, cfg.data.micro_batch_size, self.dp_rank, self.layout.data, cfg.data.global_batch_size,
            num_workers=cfg.data.num_workers,
            collate_fn=data.collate,
            sampling=data.sampling,
            step=step,
        ))

    # ---------------------------------------------------------------- checkpoints
    def _load(self) -> None:
        """Resume from ``--load``: the newest checkpoint there that verifies (checkpoint_folder.py)."""
        ckpt = self.config.checkpoint
        if not ckpt.load:
            return
        iteration = resolve_iteration(ckpt.load, fallback=True, read_latest=self.engine.read_latest)
        if iteration is None:
            print_rank_0(f"no checkpoint found in {ckpt.load}; starting from scratch")
            return
        # e.g. the BPE baseline: the same unit BPE, before any weight loads
        self.task.check_checkpoint(self.engine.read_common(ckpt.load, iteration), f"--load {ckpt.load}")
        loaded = self.engine.load(ckpt.load, iteration)
        if not ckpt.finetune:
            self.state.load_state_dict(loaded)
            self._resumed_layout = loaded.get("batch_layout")
        self._loaded_iteration = iteration
        print_rank_0(f"loaded {loaded['checkpoint_dir']} at iteration {self.state.iteration}")

    def _resumes_save_folder(self) -> bool:
        """True when this run continues the history of its ``--save`` folder (loads from it, not --finetune)."""
        ckpt = self.config.checkpoint
        return same_folder(ckpt.load, ckpt.save) and not ckpt.finetune

    def _prepare_save_folder(self) -> None:
        """Before training: remove interrupted saves from ``--save``, and refuse (or with
        ``--overwrite-save`` clear) later checkpoints that a run not resuming from it would overwrite."""
        save = self.config.checkpoint.save
        if not save:
            return
        problem = None
        if torch.distributed.get_rank() == 0:
            problem = prepare_save_folder(
                save, self.state.iteration, self._resumes_save_folder(), self.config.checkpoint.overwrite_save,
                lambda: self.engine.read_latest(save), lambda it: iteration_dir(save, it),
                lambda it: self.engine.write_latest(save, it), log=print_rank_0)
        problem = collectives.broadcast_object(problem, src=0)
        if problem is not None:
            raise CheckpointError(problem)

    def common_state(self) -> dict:
        """What every checkpoint carries beside the engine's states: progress, the run config, the batch
        sizes (which fix the data order) and the vocabulary layout."""
        return {
            **self.state.state_dict(),
            "config": encode_saved(self.config.to_dict()),
            "batch_layout": batch_layout(self.config.data),
            "vocab_layout": encode_saved(self.task.tokenizer.layout()),
        }

    def save(self) -> None:
        ckpt = self.config.checkpoint
        if not ckpt.save:
            return
        path = self.engine.save(ckpt.save, self.state.iteration, self.common_state())
        print_rank_0(f"saved checkpoint {path}")
        if ckpt.keep_last and torch.distributed.get_rank() == 0:
            protect = [self._loaded_iteration] if self._resumes_save_folder() else []
            prune_checkpoints(ckpt.save, ckpt.keep_last, lambda it: iteration_dir(ckpt.save, it), protect,
                              log=print_rank_0)

    # ---------------------------------------------------------------- one step
    def _reduce_metrics(self, losses: list[dict]) -> dict:
        """Sum [sum, count] pairs over micro-batches, DP ranks and PP (last stage has them).

        The sums are kept on the data-parallel group's collective device (CUDA under NCCL, where the
        losses already are) and read back once, after the reductions.
        """
        names = sorted({name for item in losses for name in item})
        names = _broadcast_names_from_last_stage(names)
        dp_group = parallel_state.get_data_parallel_group()
        totals = collectives.zeros((len(names), 2), dp_group, dtype=torch.float64)
        for item in losses:
            for index, name in enumerate(names):
                if name in item:
                    totals[index] += item[name].detach().to(totals.device, torch.float64).view(-1)[:2]
        if parallel_state.is_pipeline_last_stage():
            collectives.all_reduce(totals, dp_group, what="metric sums")
        return counted_means(names, _broadcast_from_last_stage(totals).tolist())

    def _review(self, losses: list[dict]) -> tuple[dict, bool]:
        """The NaN policy, the same for both engines: the step's reduced metrics, and whether its
        update must be discarded (``--nan-policy skip``); ``stop`` raises instead."""
        cfg = self.config
        metrics = self._reduce_metrics(losses)
        iteration = self.state.iteration + 1
        if cfg.train.debug_inject_nan_iter is not None and iteration == cfg.train.debug_inject_nan_iter:
            metrics["lm loss"] = float("nan")
        if math.isfinite(metrics.get("lm loss", 0.0)):
            return metrics, False
        print_rank_0(f"iteration {iteration}: loss is {metrics['lm loss']} (NaN/Inf); "
                     + ("skipping this step" if cfg.train.nan_policy == "skip" else "stopping (--nan-policy stop)"))
        if cfg.train.nan_policy == "stop":
            raise FloatingPointError(f"non-finite loss at iteration {iteration}")
        return metrics, True

    def train_step(self) -> StepResult:
        counted = CountingIterator(self.train_iterator, self.task)
        outcome = self.engine.train_step(counted, self.num_microbatches, self._review)
        if not outcome.skipped:
            self.engine.scheduler.step(increment=self.config.data.global_batch_size)
        modules = sorted(counted.flops_by_module)
        tokens, positions, flops, *module_flops = collectives.all_reduce_values(
            [counted.tokens, counted.positions, counted.flops, *(counted.flops_by_module[m] for m in modules)],
            parallel_state.get_data_parallel_group(), what="step token and FLOP counts",
        )
        return StepResult(metrics=outcome.metrics, grad_norm=outcome.grad_norm, skipped=outcome.skipped,
                          tokens=tokens, positions=positions, flops=flops,
                          flops_by_module=dict(zip(modules, module_flops)))

    def evaluate(self) -> dict:
        cfg = self.config
        if cfg.logging.eval_iters <= 0 or self.valid_data.valid is None:
            return {}
        self.engine.train_mode(False)
        # validation re-reads the first samples each time, keyed with the step at which it runs
        iterator = self._iterator(self.valid_data, self.valid_data.valid, 0, step=self.state.iteration)
        losses: list[dict] = []
        for _ in range(cfg.logging.eval_iters):
            losses += self.engine.eval_losses(iterator, self.num_microbatches)
        self.engine.train_mode(True)
        return self._reduce_metrics(losses)

    # ---------------------------------------------------------------- the loop
    def train(self) -> TrainState:
        cfg = self.config
        if cfg.train.skip_train:
            self.metrics.validation(self.state, self.evaluate())
            self.metrics.close()
            return self.state
        handler = PreemptionHandler(exit_duration_mins=cfg.train.exit_duration_in_mins, start_time=self.start_time)
        self.engine.train_mode(True)
        interval_time, interval_tokens, interval_positions, interval_flops = 0.0, 0.0, 0.0, 0.0
        reason = self.state.budget_reached(cfg.train)
        while reason is None:
            step_start = time.time()
            result = self.train_step()
            interval_time += time.time() - step_start
            state = self.state
            state.advance(result, cfg.data.global_batch_size)
            interval_tokens += result.tokens
            interval_positions += result.positions
            interval_flops += result.flops
            lr = self.engine.learning_rate()
            self.metrics.step(state, result, lr)
            if state.iteration % cfg.logging.log_interval == 0:
                self.metrics.log_line(state, result, lr, interval_time, interval_tokens, cfg.logging.log_interval,
                                      positions=interval_positions, flops=interval_flops)
                interval_time, interval_tokens, interval_positions, interval_flops = 0.0, 0.0, 0.0, 0.0
            eval_due = bool(cfg.logging.eval_interval) and state.iteration % cfg.logging.eval_interval == 0
            reason = self.state.budget_reached(cfg.train)
            if eval_due or (reason is not None and cfg.logging.eval_interval):
                # a run that stops on a FLOPs/token budget still ends with a validation, so that
                # compute-controlled runs are compared at their last step
                self.metrics.validation(state, self.evaluate())
            if cfg.train.exit_interval and state.iteration % cfg.train.exit_interval == 0:
                reason = reason or f"reached --exit-interval {cfg.train.exit_interval}"
            if handler.should_stop():
                reason = handler.stop_reason(cfg.checkpoint.save)
            interval_save = cfg.checkpoint.save_interval and state.iteration % cfg.checkpoint.save_interval == 0
            if interval_save or reason is not None:
                self.save()
        print_rank_0(f"training stopped at iteration {self.state.iteration}: {reason}")
        handler.restore()
        self.metrics.close()
        return self.state


def run_training(config: Config, task_factory) -> TrainState:
    """``pretrain_lst.py``'s training run, either engine: train, then take the process groups down."""
    from megatron_lst.training.initialize import destroy_distributed

    state = Trainer(config, task_factory).train()
    destroy_distributed()
    return state


def batch_layout(data) -> dict:
    """The batch sizes that fix which samples each step reads (saved in every checkpoint)."""
    return {"micro_batch_size": data.micro_batch_size, "global_batch_size": data.global_batch_size}


def check_resumed_batch_layout(saved: Optional[dict], data, sampling: Optional[SamplingOptions]) -> None:
    """Refuse to resume a bucketed run with other batch sizes: its buckets (windows of global
    batches cut into micro-batches) would be cut differently, so the remaining steps would repeat
    some samples and skip others instead of continuing the run exactly."""
    if not saved or sampling is None or not sampling.bucket_window:
        return
    current = batch_layout(data)
    if saved != current:
        raise ValueError(
            f"the checkpoint was trained with --micro-batch-size {saved['micro_batch_size']} and "
            f"--global-batch-size {saved['global_batch_size']}; this run asks for {current['micro_batch_size']} and "
            f"{current['global_batch_size']}, which would re-cut its token-count buckets (repeating and skipping "
            "samples): resume with the checkpoint's batch sizes, or use --finetune to start a new data order"
        )


def _broadcast_from_last_stage(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as the last pipeline stage (which holds the losses) has it, on every stage."""
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return tensor
    return collectives.broadcast(tensor, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                                 group=parallel_state.get_pipeline_model_parallel_group(), what="metric sums")


def counted_means(names: list[str], sums: list[list[float]]) -> dict[str, float]:
    """``name -> sum / count`` of reduced [sum, count] pairs, leaving out a metric nothing counted in
    this step (the speech loss of a step whose rows hold no speech): it has no value, and a 0.0 in
    the log line, TensorBoard and --log-json would read as a perfect loss."""
    return {name: total / count for name, (total, count) in zip(names, sums, strict=True) if count > 0}


def _broadcast_names_from_last_stage(names: list[str]) -> list[str]:
    """The metric names the last stage reported, on every stage (the others computed no loss)."""
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return names
    return collectives.broadcast_object(names, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                                        group=parallel_state.get_pipeline_model_parallel_group())
