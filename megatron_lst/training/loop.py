"""The training loop: thin, on megatron-core's DDP, optimizer, scheduler and pipeline schedules.

One step = ``get_forward_backward_func()`` over the step's micro-batches (gradient
accumulation, 1F1B under PP), a global NaN/Inf check of the loss, then the megatron optimizer
(grad clipping inside) and ``OptimizerParamScheduler``. Around it: periodic validation, log
lines and TensorBoard scalars, atomic checkpoints, stop conditions (iterations, FLOPs budget,
token budget, SIGTERM/SIGUSR1 from a scheduler) and exact resume.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_lst.training import collectives
from megatron_lst.training.arguments import Config
from megatron_lst.training.batch_broadcast import tensor_parallel_data_iterator
from megatron_lst.training.checkpoint_folder import prepare_save_folder, prune_checkpoints, same_folder
from megatron_lst.training.checkpoint_manifest import CheckpointError
from megatron_lst.training.checkpointing import (iteration_dir, load_checkpoint, load_common_state, read_latest_pointer,
                                                 resolve_iteration, save_checkpoint, write_latest)
from megatron_lst.training.initialize import initialize_distributed, print_rank_0
from megatron_lst.training.metrics import MetricsLogger
from megatron_lst.training.run_config import encode_saved
from megatron_lst.training.sampler import build_data_iterator
from megatron_lst.training.scheduler_resume import load_scheduler_state
from megatron_lst.training.signals import PreemptionHandler
from megatron_lst.training.task import SHARE_PREFIX, TrainingTask


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

    def to_common(self) -> dict:
        return {
            "iteration": self.iteration,
            "consumed_samples": self.consumed_samples,
            "flops_so_far": self.flops_so_far,
            "tokens_so_far": self.tokens_so_far,
            "skipped_iterations": self.skipped_iterations,
            "tokens_by_dataset": dict(self.tokens_by_dataset),
        }

    def restore(self, saved: dict) -> None:
        """Take the progress fields back from a checkpoint's common state (what ``to_common`` wrote)."""
        for key, current in self.to_common().items():
            setattr(self, key, type(current)(saved.get(key) or type(current)()))

    def token_shares_so_far(self) -> dict[str, float]:
        """Each blended dataset's share of the raw tokens trained on since the run began."""
        total = sum(self.tokens_by_dataset.values())
        return {name: tokens / total for name, tokens in sorted(self.tokens_by_dataset.items())} if total else {}

    def advance(self, result: "StepResult", global_batch_size: int) -> None:
        """Count one finished step (either engine): samples consumed, FLOPs, raw tokens, skips."""
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
            return f"reached --train-iters {train.train_iters}"
        if train.train_flops is not None and self.flops_so_far >= train.train_flops:
            return f"reached --train-flops {train.train_flops:.3g}"
        if train.train_tokens is not None and self.tokens_so_far >= train.train_tokens:
            return f"reached --train-tokens {train.train_tokens:.3g}"
        return None


@dataclass
class StepResult:
    metrics: dict = field(default_factory=dict)
    grad_norm: Optional[float] = None
    skipped: bool = False
    tokens: float = 0.0
    positions: float = 0.0
    flops: float = 0.0
    flops_by_module: dict = field(default_factory=dict)


class CountingIterator:
    """Passes micro-batches through to megatron while adding up their tokens and FLOPs."""

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
        if hasattr(self.task, "flops_breakdown"):  # LST: encoder / global / decoder separately
            for module, flops in self.task.flops_breakdown(batch).items():
                self.flops_by_module[module] = self.flops_by_module.get(module, 0.0) + flops
            self.flops = self.flops_by_module["total"]
        else:
            self.flops += self.task.batch_flops(batch)
        return batch


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class Trainer:
    """Builds the parallel model, optimizer and data for a task; runs and resumes training."""

    def __init__(self, config: Config, task_factory):
        self.config = config
        parallel = config.parallel
        initialize_distributed(
            parallel.tensor_model_parallel_size,
            parallel.pipeline_model_parallel_size,
            backend=parallel.distributed_backend,
            seed=config.data.seed,
        )
        self.task: TrainingTask = task_factory(config)
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.num_microbatches = config.data.micro_batches_per_step(self.dp_size)
        self.model = self._build_model()
        self.optimizer = self._build_optimizer()
        self.scheduler = self._build_scheduler()
        self.state = TrainState()
        self._resumed_layout: Optional[dict] = None  # the batch sizes of the checkpoint resumed from
        self._loaded_iteration: Optional[int] = None  # kept by --keep-last while this run lasts
        self.metrics = MetricsLogger(config)
        self._load()
        self._prepare_save_folder()
        self._build_data()

    # ---------------------------------------------------------------- construction
    def _build_model(self) -> DistributedDataParallel:
        module = self.task.build_model(
            self.config,
            pre_process=parallel_state.is_pipeline_first_stage(),
            post_process=parallel_state.is_pipeline_last_stage(),
        )
        if not torch.cuda.is_available():
            module = module.cpu()
        else:
            module = module.cuda()
        tconfig = module.config
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=False,
            use_distributed_optimizer=self.config.parallel.use_distributed_optimizer,
        )
        model = DistributedDataParallel(config=tconfig, ddp_config=ddp_config, module=module)
        tconfig.finalize_model_grads_func = finalize_model_grads
        tconfig.no_sync_func = model.no_sync
        return model

    def _build_optimizer(self):
        opt, train = self.config.optimizer, self.config.train
        megatron_config = MegatronOptimizerConfig(
            optimizer="adam",
            lr=opt.lr,
            min_lr=opt.lr * opt.min_lr_ratio,
            weight_decay=opt.weight_decay,
            adam_beta1=opt.adam_beta1,
            adam_beta2=opt.adam_beta2,
            adam_eps=opt.adam_eps,
            clip_grad=opt.clip_grad,
            bf16=train.bf16,
            params_dtype=torch.bfloat16 if train.bf16 else torch.float32,
            use_distributed_optimizer=self.config.parallel.use_distributed_optimizer,
        )
        return get_megatron_optimizer(megatron_config, [self.model])

    def _build_scheduler(self) -> OptimizerParamScheduler:
        opt, data = self.config.optimizer, self.config.data
        decay_iters = opt.lr_decay_iters or self.config.train.train_iters
        warmup = min(opt.lr_warmup_iters, max(decay_iters - 1, 0))
        return OptimizerParamScheduler(
            self.optimizer,
            init_lr=0.0,
            max_lr=opt.lr,
            min_lr=opt.lr * opt.min_lr_ratio,
            lr_warmup_steps=warmup * data.global_batch_size,
            lr_decay_steps=decay_iters * data.global_batch_size,
            lr_decay_style=opt.lr_decay_style,
            start_wd=opt.weight_decay,
            end_wd=opt.weight_decay,
            wd_incr_steps=decay_iters * data.global_batch_size,
            wd_incr_style="constant",
        )

    def _build_data(self) -> None:
        cfg = self.config
        train_samples = cfg.train.train_iters * cfg.data.global_batch_size
        # validation re-reads the same first samples at every run, so its losses are comparable
        valid_samples = max(cfg.logging.eval_iters * cfg.data.global_batch_size, 1)
        self.train_dataset, self.valid_dataset = self.task.build_datasets(cfg, train_samples, valid_samples)
        check_resumed_batch_layout(self._resumed_layout, cfg.data, getattr(self.task, "sampling", None))
        self.train_iterator = self._iterator(self.train_dataset, self.state.consumed_samples)

    def _iterator(self, dataset, consumed: int, step: Optional[int] = None) -> Iterator[dict]:
        """Micro-batches from ``consumed`` samples on; ``step`` keys them all (validation).

        Only tensor-parallel rank 0 of each TP group builds the DataLoader; it broadcasts each
        micro-batch to the other ranks of its group (``training/batch_broadcast.py``).
        """
        cfg = self.config
        return tensor_parallel_data_iterator(lambda: build_data_iterator(
            dataset, consumed, cfg.data.micro_batch_size, self.dp_rank, self.dp_size, cfg.data.global_batch_size,
            num_workers=cfg.data.num_workers,
            collate_fn=getattr(self.task, "collate", None),
            sampling=getattr(self.task, "sampling", None),
            step=step,
        ))

    # ---------------------------------------------------------------- checkpoints
    def _load(self) -> None:
        """Resume from ``--load``: the newest checkpoint there that verifies (checkpoint_folder.py)."""
        ckpt = self.config.checkpoint
        if not ckpt.load:
            return
        iteration = resolve_iteration(ckpt.load, fallback=True)
        if iteration is None:
            print_rank_0(f"no checkpoint found in {ckpt.load}; starting from scratch")
            return
        no_optim = ckpt.no_load_optim or ckpt.finetune
        if hasattr(self.task, "check_checkpoint"):  # e.g. the BPE baseline: same unit BPE, before any weight loads
            self.task.check_checkpoint(load_common_state(ckpt.load, iteration), f"--load {ckpt.load}")
        loaded = load_checkpoint(
            ckpt.load,
            _unwrap(self.model),
            optimizer=None if no_optim else self.optimizer,
            scheduler=None if no_optim else self.scheduler,
            iteration=iteration,
            load_rng=not ckpt.finetune,
            load_scheduler=lambda scheduler, saved: load_scheduler_state(
                scheduler, saved, ckpt.override_opt_param_scheduler, ckpt.use_checkpoint_opt_param_scheduler,
                log=print_rank_0),
        )
        if not ckpt.finetune:
            self.state.restore(loaded)
            self.task_state_loaded(loaded)
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
                lambda: read_latest_pointer(save), lambda it: iteration_dir(save, it),
                lambda it: write_latest(save, it), log=print_rank_0)
        problem = collectives.broadcast_object(problem, src=0)
        if problem is not None:
            raise CheckpointError(problem)

    def task_state_loaded(self, loaded: dict) -> None:
        if hasattr(self.task, "load_state"):
            self.task.load_state(loaded.get("task_state"))

    def save(self) -> None:
        if not self.config.checkpoint.save:
            return
        common = self.state.to_common()
        common["config"] = encode_saved(self.config.to_dict())
        common["batch_layout"] = batch_layout(self.config.data)
        if hasattr(self.task, "state"):
            common["task_state"] = self.task.state()
        if hasattr(self.task, "tokenizer"):
            common["vocab_layout"] = encode_saved(self.task.tokenizer.layout())
        ckpt = self.config.checkpoint
        path = save_checkpoint(ckpt.save, self.state.iteration, _unwrap(self.model), self.optimizer, self.scheduler,
                               common)
        print_rank_0(f"saved checkpoint {path}")
        if ckpt.keep_last and torch.distributed.get_rank() == 0:
            protect = [self._loaded_iteration] if self._resumes_save_folder() else []
            prune_checkpoints(ckpt.save, ckpt.keep_last, lambda it: iteration_dir(ckpt.save, it), protect,
                              log=print_rank_0)

    # ---------------------------------------------------------------- one step
    def _forward_backward(self, iterator: Iterator[dict], num_microbatches: int, forward_only: bool):
        return get_forward_backward_func()(
            forward_step_func=self.task.forward_step,
            data_iterator=iterator,
            model=[self.model],
            num_microbatches=num_microbatches,
            seq_length=self.config.data.seq_length,
            micro_batch_size=self.config.data.micro_batch_size,
            forward_only=forward_only,
        )

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
        sums = _broadcast_from_last_stage(totals).tolist()
        return {name: sums[i][0] / max(sums[i][1], 1.0) for i, name in enumerate(names)}

    def train_step(self) -> StepResult:
        cfg = self.config
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        counted = CountingIterator(self.train_iterator, self.task)
        losses = self._forward_backward(counted, self.num_microbatches, forward_only=False)
        metrics = self._reduce_metrics(losses)
        if cfg.train.debug_inject_nan_iter is not None and self.state.iteration + 1 == cfg.train.debug_inject_nan_iter:
            metrics["lm loss"] = float("nan")
        result = StepResult(metrics=metrics, tokens=counted.tokens, positions=counted.positions, flops=counted.flops)
        if not math.isfinite(metrics.get("lm loss", 0.0)):
            result.skipped = True
            print_rank_0(
                f"iteration {self.state.iteration + 1}: loss is {metrics['lm loss']} (NaN/Inf); "
                + ("skipping this step" if cfg.train.nan_policy == "skip" else "stopping (--nan-policy stop)")
            )
            if cfg.train.nan_policy == "stop":
                raise FloatingPointError(f"non-finite loss at iteration {self.state.iteration + 1}")
            self.optimizer.zero_grad()
        else:
            update_successful, grad_norm, _ = self.optimizer.step()
            result.grad_norm = grad_norm
            if update_successful:
                self.scheduler.step(increment=cfg.data.global_batch_size)
            else:
                result.skipped = True
        modules = sorted(counted.flops_by_module)
        result.tokens, result.positions, result.flops, *module_flops = collectives.all_reduce_values(
            [result.tokens, result.positions, result.flops, *(counted.flops_by_module[m] for m in modules)],
            parallel_state.get_data_parallel_group(), what="step token and FLOP counts",
        )
        result.flops_by_module = dict(zip(modules, module_flops))
        return result

    def evaluate(self) -> dict:
        cfg = self.config
        if cfg.logging.eval_iters <= 0 or self.valid_dataset is None:
            return {}
        self.model.eval()
        # validation re-reads the first samples each time, keyed with the step at which it runs
        iterator = self._iterator(self.valid_dataset, 0, step=self.state.iteration)
        losses: list[dict] = []
        with torch.no_grad():
            for _ in range(cfg.logging.eval_iters):
                losses += self._forward_backward(iterator, self.num_microbatches, forward_only=True) or []
        self.model.train()
        return self._reduce_metrics(losses)

    # ---------------------------------------------------------------- the loop
    def train(self) -> TrainState:
        cfg = self.config
        if cfg.train.skip_train:
            self.metrics.validation(self.state, self.evaluate())
            self.metrics.close()
            return self.state
        handler = PreemptionHandler()
        self.model.train()
        interval_time, interval_tokens, interval_positions = 0.0, 0.0, 0.0
        reason = self.state.budget_reached(cfg.train)
        while reason is None:
            step_start = time.time()
            result = self.train_step()
            interval_time += time.time() - step_start
            state = self.state
            state.advance(result, cfg.data.global_batch_size)
            interval_tokens += result.tokens
            interval_positions += result.positions
            lr = self.optimizer.param_groups[0]["lr"]
            self.metrics.step(state, result, lr)
            if state.iteration % cfg.logging.log_interval == 0:
                self.metrics.log_line(state, result, lr, interval_time, interval_tokens, cfg.logging.log_interval,
                                      positions=interval_positions)
                interval_time, interval_tokens, interval_positions = 0.0, 0.0, 0.0
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


def batch_layout(data) -> dict:
    """The batch sizes that fix which samples each step reads (saved in every checkpoint)."""
    return {"micro_batch_size": data.micro_batch_size, "global_batch_size": data.global_batch_size}


def check_resumed_batch_layout(saved: Optional[dict], data, sampling) -> None:
    """Refuse to resume a bucketed run with other batch sizes: its buckets (windows of global
    batches cut into micro-batches) would be cut differently, so the remaining steps would repeat
    some samples and skip others instead of continuing the run exactly."""
    if not saved or sampling is None or not getattr(sampling, "bucket_window", 0):
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


def _broadcast_names_from_last_stage(names: list[str]) -> list[str]:
    """The metric names the last stage reported, on every stage (the others computed no loss)."""
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return names
    return collectives.broadcast_object(names, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                                        group=parallel_state.get_pipeline_model_parallel_group())
