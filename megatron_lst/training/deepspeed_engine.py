"""``--engine deepspeed``: the same model, data, loss and loop, with DeepSpeed ZeRO (data parallel) as the engine.

What is shared with the megatron engine (so that the two give the same losses step for step): the
loop itself (``training/loop.py``: data order, NaN policy, logging, validation, checkpoint cadence,
signals), the model (``task.build_model`` with TP=PP=1, the same per-name initialisation), the
objective (the mean cross-entropy over every target token of the global batch: each micro-batch's
loss sum is divided by the global token count, times the DP size because DeepSpeed averages
gradients over ranks), the AdamW parameter groups (no weight decay on biases and 1-D parameters,
megatron's rule) and megatron-core's ``OptimizerParamScheduler``.

The ds_config JSON chooses ZeRO (stage, offload, bucket sizes); batch sizes, clipping, precision,
optimizer and LR schedule come from the flags, and a JSON that contradicts them is refused.
A step whose loss the loop finds non-finite is discarded through DeepSpeed's own overflow path:
the last micro-batch's loss is made NaN before its backward, so every accumulated gradient is
NaN and the ZeRO optimizer skips the update and clears them (``was_step_applied()`` is False).

Checkpoints are DeepSpeed's own (``save_checkpoint``/``load_checkpoint``, ``client_state`` holding
the loop's common state and the scheduler), written under a temporary tag that is renamed to
``iter_NNNNNNN`` when complete; the ``latest`` file is replaced last, atomically. As with the
megatron engine, ``manifest.json`` is written before the rename and verified before DeepSpeed
opens (unpickles) anything. ``tools/convert_checkpoint.py`` turns them into a consolidated state dict.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator, Optional

import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_lst.training import collectives
from megatron_lst.training.arguments import Config
from megatron_lst.training.checkpoint_manifest import CheckpointError, write_manifest
from megatron_lst.training.checkpointing import iteration_dir, restore_rng, save_rng_file, write_pointer
from megatron_lst.training.dry_run import ParallelLayout
from megatron_lst.training.engine import Engine, Review, StepOutcome, build_scheduler
from megatron_lst.training.initialize import print_rank_0
from megatron_lst.training.scheduler_resume import load_scheduler_state
from megatron_lst.training.task import TrainingTask

LATEST_TAG_FILE = "latest"  # DeepSpeed's name: load_checkpoint(tag=None) reads it
FLAG_OWNED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                   "gradient_clipping")


def read_latest_tag(root: str | os.PathLike) -> Optional[int]:
    """The iteration DeepSpeed's ``latest`` file names (``iter_NNNNNNN``), None when there is none."""
    latest = Path(root) / LATEST_TAG_FILE
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    if not (tag.startswith("iter_") and tag[5:].isdigit()):
        raise CheckpointError(f"{latest}: expected a tag iter_NNNNNNN, found {tag!r}")
    return int(tag[5:])


def write_latest_tag(root: str | os.PathLike, iteration: Optional[int]) -> None:
    """Point ``latest`` at ``iter_<iteration>``, or remove it when None."""
    write_pointer(Path(root) / LATEST_TAG_FILE, None if iteration is None else f"iter_{iteration:07d}")


def load_ds_config(config: Config, data_parallel_size: int) -> dict:
    """The ds_config JSON with the flag-owned entries filled in; contradictions are errors."""
    path = config.train.deepspeed_config
    ds_config: dict = {}
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--deepspeed-config {path}: no such file")
        ds_config = json.loads(Path(path).read_text())
    for section in ("optimizer", "scheduler"):
        if section in ds_config:
            raise ValueError(f"{path}: remove the '{section}' section; AdamW and the LR schedule come from the "
                             "flags (--lr, --lr-warmup-iters, ...) so that both engines train the same way")
    data = config.data
    wanted = {
        "train_batch_size": data.global_batch_size,
        "train_micro_batch_size_per_gpu": data.micro_batch_size,
        "gradient_accumulation_steps": data.micro_batches_per_step(data_parallel_size),
        "gradient_clipping": config.optimizer.clip_grad,
    }
    for key in FLAG_OWNED_KEYS:
        if key in ds_config and ds_config[key] != wanted[key]:
            raise ValueError(f"{path}: {key}={ds_config[key]} contradicts the flags ({wanted[key]}); "
                             "drop it from the JSON or change the flags")
    ds_config.update(wanted)
    ds_config.setdefault("zero_optimization", {"stage": 1})
    ds_config["zero_allow_untested_optimizer"] = True  # torch AdamW, as megatron-core uses without apex/TE
    if config.train.bf16:
        # the loop's NaN policy discards a step through DeepSpeed's overflow check (on by default)
        ds_config["bf16"] = {"check_grad_overflow": True, **ds_config.get("bf16", {}), "enabled": True}
    ds_config.setdefault("steps_per_print", 10**9)  # our MetricsLogger prints
    return ds_config


def adamw_param_groups(model: torch.nn.Module) -> list[dict]:
    """megatron-core's default groups: no weight decay for biases and 1-D parameters (norms)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or param.dim() == 1 else decay).append(param)
    groups = [{"params": decay, "wd_mult": 1.0}, {"params": no_decay, "wd_mult": 0.0}]
    return [group for group in groups if group["params"]]


def without_fused_weight_gradients(task) -> None:
    """megatron's fused weight-gradient accumulation writes ``param.main_grad`` (its DDP's buffer),
    which DeepSpeed does not have: turn it off in every TransformerConfig the task holds."""
    for value in vars(task).values():
        if isinstance(value, TransformerConfig):
            value.gradient_accumulation_fusion = False


def skip_cpu_shared_memory_allreduce() -> None:
    """On CPU, DeepSpeed JIT-compiles a shared-memory all-reduce op on first use (minutes on a small
    machine, once per cache). Returning None from its builder makes ``deepspeed.comm`` use
    torch.distributed's gloo all-reduce, the one the megatron engine uses, so both reduce alike.
    Set ``LST_DEEPSPEED_SHM=1`` to keep DeepSpeed's op."""
    if torch.cuda.is_available() or os.environ.get("LST_DEEPSPEED_SHM") == "1":
        return
    # by module path: the attribute ``deepspeed.comm.torch`` is the torch package itself
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


MODEL_STATES_FILE = "mp_rank_00_model_states.pt"  # DeepSpeed's file holding the module and client_state


class DeepSpeedEngine(Engine):
    """The task's whole model in a DeepSpeed engine (ZeRO as the ds_config says), torch AdamW and
    megatron-core's schedule; data parallel only (``layout`` has TP = PP = 1)."""

    name = "deepspeed"

    def __init__(self, config: Config, task: TrainingTask, layout: ParallelLayout):
        import deepspeed

        self.config = config
        self.task = task
        self.layout = layout
        skip_cpu_shared_memory_allreduce()
        os.environ.setdefault("LOCAL_RANK", "0")  # a plain single-process run: DeepSpeed asserts it is set
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
        self.rank = torch.distributed.get_rank()
        without_fused_weight_gradients(task)
        module = task.build_model(config, True, True)
        module = module.cuda() if torch.cuda.is_available() else module.cpu()
        opt = config.optimizer
        optimizer = torch.optim.AdamW(adamw_param_groups(module), lr=opt.lr, betas=(opt.adam_beta1, opt.adam_beta2),
                                      eps=opt.adam_eps, weight_decay=opt.weight_decay)
        self.ds_config = load_ds_config(config, layout.data)
        self.model, self.optimizer, _, _ = deepspeed.initialize(model=module, optimizer=optimizer,
                                                                config=self.ds_config)
        self.scheduler = build_scheduler(self.optimizer, config)

    # ------------------------------------------------------------------ steps
    def train_step(self, batches: Iterator[dict], num_microbatches: int, review: Review) -> StepOutcome:
        micro_batches = [next(batches) for _ in range(num_microbatches)]
        # each micro-batch's gradient is divided by the global batch's token count: needed before the first backward
        (count,) = collectives.all_reduce_values([sum(self.task.loss_tokens(b) for b in micro_batches)],
                                                 what="loss token count")
        scale = self.layout.data / max(count, 1.0)  # DeepSpeed averages gradients over DP ranks
        losses: list[dict] = []
        metrics, skip = {}, False
        for index, batch in enumerate(micro_batches):
            output, loss_func = self.task.forward_step(iter([batch]), self.model)
            loss_sum, _, reported = loss_func(output)
            losses.append(reported)
            if index == num_microbatches - 1:  # every loss is known; the update is not yet applied
                metrics, skip = review(losses)
                if skip:  # NaN gradients: DeepSpeed's overflow check discards the whole accumulated step
                    loss_sum = loss_sum * float("nan")
            self.model.backward(loss_sum * scale, scale_wrt_gas=False)
            self.model.step()
        applied = self.model.was_step_applied()
        if skip and applied:
            raise RuntimeError("DeepSpeed applied a step whose loss was not finite: the ds_config turns its gradient "
                               "overflow check off (zero_optimization.compute_grad_norm or bf16.check_grad_overflow)")
        grad_norm = self.model.get_global_grad_norm() if applied else None
        return StepOutcome(metrics, skipped=not applied, grad_norm=float(grad_norm) if grad_norm is not None else None)

    def eval_losses(self, batches: Iterator[dict], num_microbatches: int) -> list[dict]:
        losses = []
        with torch.no_grad():
            for _ in range(num_microbatches):
                output, loss_func = self.task.forward_step(iter([next(batches)]), self.model)
                losses.append(loss_func(output)[2])
        return losses

    # ------------------------------------------------------------------ checkpoints
    def read_latest(self, root: str | os.PathLike) -> Optional[int]:
        return read_latest_tag(root)

    def write_latest(self, root: str | os.PathLike, iteration: Optional[int]) -> None:
        write_latest_tag(root, iteration)

    def read_common(self, root: str | os.PathLike, iteration: int) -> dict:
        """The client_state of a checkpoint the loop has verified (``resolve_iteration``), memory-mapped:
        the weights beside it are not read."""
        saved = torch.load(iteration_dir(root, iteration) / MODEL_STATES_FILE, map_location="cpu",
                           weights_only=False, mmap=True)
        return {key: value for key, value in saved.items() if key not in ("module", "optimizer")}

    def save(self, root: str | os.PathLike, iteration: int, common: dict) -> Path:
        tag = iteration_dir(root, iteration).name
        temp_tag = collectives.broadcast_object(f"{tag}.tmp-{uuid.uuid4().hex[:8]}", src=0)
        client_state = {**common, "scheduler": self.scheduler.state_dict(), "engine": self.name}
        self.model.save_checkpoint(root, tag=temp_tag, client_state=client_state, save_latest=False)
        temp_dir, final_dir = Path(root) / temp_tag, iteration_dir(root, iteration)
        save_rng_file(temp_dir / f"rng_rank_{self.rank}.pt", self.layout.data)
        collectives.barrier()
        if self.rank == 0:
            write_manifest(temp_dir)  # last, over every rank's files (checkpoint_manifest.py)
            if final_dir.exists():
                shutil.rmtree(final_dir)
            os.replace(temp_dir, final_dir)
            write_latest_tag(root, iteration)
        collectives.barrier()
        return final_dir

    def load(self, root: str | os.PathLike, iteration: int) -> dict:
        ckpt = self.config.checkpoint
        no_optim = not ckpt.load_optim or ckpt.finetune
        folder = iteration_dir(root, iteration)
        path, client_state = self.model.load_checkpoint(
            root, tag=folder.name, load_optimizer_states=not no_optim,
            load_lr_scheduler_states=False, load_module_only=no_optim,
        )
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {folder}")
        if not no_optim and client_state.get("scheduler"):
            load_scheduler_state(self.scheduler, client_state["scheduler"], ckpt.override_opt_param_scheduler,
                                 ckpt.use_checkpoint_opt_param_scheduler, log=print_rank_0)
        if not ckpt.finetune:
            restore_rng(folder, "rng_rank_{rank}.pt", self.rank, self.layout.data, log=print_rank_0)
        return {**client_state, "checkpoint_dir": str(folder)}
