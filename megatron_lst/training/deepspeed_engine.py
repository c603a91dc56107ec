"""``--engine deepspeed``: the same model, data, loss and logs, trained by DeepSpeed ZeRO (data parallel).

What is shared with the megatron engine (so that the two give the same losses step for step):
the model (``task.build_model`` with TP=PP=1, the same per-name initialisation), the data order
(``build_data_iterator`` keyed by consumed samples), the objective (the mean cross-entropy over
every target token of the global batch: each micro-batch's loss sum is divided by the global
token count, times the DP size because DeepSpeed averages gradients over ranks), the AdamW
parameter groups (no weight decay on biases and 1-D parameters, megatron's rule), megatron-core's
``OptimizerParamScheduler`` and ``MetricsLogger``.

The ds_config JSON chooses ZeRO (stage, offload, bucket sizes); batch sizes, clipping, precision,
optimizer and LR schedule come from the flags, and a JSON that contradicts them is refused.
Checkpoints are DeepSpeed's own (``save_checkpoint``/``load_checkpoint``, ``client_state`` holding
iteration, consumed samples, FLOPs/tokens so far and the scheduler), written under a temporary tag
that is renamed to ``iter_NNNNNNN`` when complete; the ``latest`` file is replaced last, atomically.
As with the megatron engine, ``manifest.json`` is written before the rename and verified before
DeepSpeed opens (unpickles) anything, ``--load`` falls back past a checkpoint that fails it, and
the ``--save`` folder rules (``--overwrite-save``, ``--keep-last``, interrupted saves) are the same.
``tools/convert_checkpoint.py`` turns them into a consolidated state dict.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

import torch
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_lst.training import collectives
from megatron_lst.training.arguments import Config
from megatron_lst.training.checkpoint_folder import (choose_checkpoint, prepare_save_folder, prune_checkpoints,
                                                      same_folder)
from megatron_lst.training.checkpoint_manifest import CheckpointError, write_manifest
from megatron_lst.training.checkpointing import restore_rng, save_rng_file
from megatron_lst.training.initialize import destroy_distributed, initialize_distributed, print_rank_0
from megatron_lst.training.loop import StepResult, TrainState
from megatron_lst.training.metrics import MetricsLogger
from megatron_lst.training.run_config import encode_saved
from megatron_lst.training.sampler import build_data_iterator
from megatron_lst.training.scheduler_resume import load_scheduler_state

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
    """Point ``latest`` at ``iter_<iteration>`` (temp file, renamed), or remove it when None."""
    latest = Path(root) / LATEST_TAG_FILE
    if iteration is None:
        latest.unlink(missing_ok=True)
        return
    latest_tmp = Path(root) / f".{LATEST_TAG_FILE}.tmp"
    latest_tmp.write_text(f"iter_{iteration:07d}")
    os.replace(latest_tmp, latest)


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
        "gradient_accumulation_steps": data.global_batch_size // (data.micro_batch_size * data_parallel_size),
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
        ds_config["bf16"] = {**ds_config.get("bf16", {}), "enabled": True}
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


def build_scheduler(optimizer, config: Config) -> OptimizerParamScheduler:
    """The megatron engine's schedule (warm-up, cosine to --min-lr-ratio), stepping in samples."""
    opt, data = config.optimizer, config.data
    decay_iters = opt.lr_decay_iters or config.train.train_iters
    warmup = min(opt.lr_warmup_iters, max(decay_iters - 1, 0))
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=opt.lr, min_lr=opt.lr * opt.min_lr_ratio,
        lr_warmup_steps=warmup * data.global_batch_size, lr_decay_steps=decay_iters * data.global_batch_size,
        lr_decay_style=opt.lr_decay_style, start_wd=opt.weight_decay, end_wd=opt.weight_decay,
        wd_incr_steps=decay_iters * data.global_batch_size, wd_incr_style="constant",
    )


def without_fused_weight_gradients(task) -> None:
    """megatron's fused weight-gradient accumulation writes ``param.main_grad`` (its DDP's buffer),
    which DeepSpeed does not have: turn it off in every TransformerConfig the task holds."""
    for value in vars(task).values():
        if isinstance(value, TransformerConfig):
            value.gradient_accumulation_fusion = False


class ZeroLossProbe(torch.nn.Module):
    """Stands in for the model in a task's ``forward_step``: per-token losses of zero, shaped like
    the labels. The loss function it is paired with then reports the micro-batch's loss-token count
    from the task's own mask (answer-only fine-tuning modes included) without running the model."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1, device="cuda" if torch.cuda.is_available() else "cpu"))

    def forward(self, *args, labels: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.zeros(labels.shape, dtype=torch.float32, device=self.anchor.device)


_PROBE: Optional[ZeroLossProbe] = None


def loss_token_count(task, batch: dict) -> int:
    """Target tokens the loss of ``batch`` averages over; needed before the step's first backward,
    because each micro-batch's gradient is divided by the global batch's count."""
    global _PROBE
    if _PROBE is None:
        _PROBE = ZeroLossProbe()
    output, loss_func = task.forward_step(iter([batch]), _PROBE)
    return int(loss_func(output)[1])


def skip_cpu_shared_memory_allreduce() -> None:
    """On CPU, DeepSpeed JIT-compiles a shared-memory all-reduce op on first use (minutes on a small
    machine, once per cache). Returning None from its builder makes ``deepspeed.comm`` use
    torch.distributed's gloo all-reduce, the one the megatron engine uses, so both reduce alike.
    Set ``LST_DEEPSPEED_SHM=1`` to keep DeepSpeed's op."""
    if torch.cuda.is_available() or os.environ.get("LST_DEEPSPEED_SHM") == "1":
        return
    # by module path: the attribute ``deepspeed.comm.torch`` is the torch package itself
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


class DeepSpeedTrainer:
    """Builds the DeepSpeed engine around a task's model; trains, validates, checkpoints, resumes."""

    def __init__(self, config: Config, task_factory):
        import deepspeed

        if config.parallel.tensor_model_parallel_size != 1 or config.parallel.pipeline_model_parallel_size != 1:
            raise ValueError("--engine deepspeed is data parallel only: use TP=PP=1 (ZeRO shards the states)")
        self.config = config
        initialize_distributed(1, 1, backend=config.parallel.distributed_backend, seed=config.data.seed)
        skip_cpu_shared_memory_allreduce()
        os.environ.setdefault("LOCAL_RANK", "0")  # a plain single-process run: DeepSpeed asserts it is set
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
        self.rank = torch.distributed.get_rank()
        self.dp_size = torch.distributed.get_world_size()
        data = config.data
        self.num_microbatches = data.micro_batches_per_step(self.dp_size)
        self.task = task_factory(config)
        without_fused_weight_gradients(self.task)
        module = self.task.build_model(config, True, True)
        module = module.cuda() if torch.cuda.is_available() else module.cpu()
        opt = config.optimizer
        optimizer = torch.optim.AdamW(adamw_param_groups(module), lr=opt.lr, betas=(opt.adam_beta1, opt.adam_beta2),
                                      eps=opt.adam_eps, weight_decay=opt.weight_decay)
        self.ds_config = load_ds_config(config, self.dp_size)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=self.ds_config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.state = TrainState()
        self.metrics = MetricsLogger(config)
        self._loaded_iteration: Optional[int] = None
        self._load()
        self._prepare_save_folder()
        train_samples = config.train.train_iters * data.global_batch_size
        valid_samples = max(config.logging.eval_iters * data.global_batch_size, 1)
        self.train_dataset, self.valid_dataset = self.task.build_datasets(config, train_samples, valid_samples)
        self.train_iterator = self._iterator(self.train_dataset, self.state.consumed_samples)

    def _iterator(self, dataset, consumed: int, step: Optional[int] = None) -> Iterator[dict]:
        """Micro-batches from ``consumed`` samples on (DP only: every rank reads); ``step`` keys validation."""
        data = self.config.data
        return build_data_iterator(dataset, consumed, data.micro_batch_size, self.rank, self.dp_size,
                                   data.global_batch_size, num_workers=data.num_workers,
                                   collate_fn=getattr(self.task, "collate", None),
                                   sampling=getattr(self.task, "sampling", None), step=step)

    # ---------------------------------------------------------------- one step
    def _run_microbatches(self, batches: list[dict], train: bool) -> tuple[dict, float]:
        """Forward (and backward) the step's micro-batches; returns summed metrics and local tokens."""
        (count,) = collectives.all_reduce_values([sum(loss_token_count(self.task, b) for b in batches)],
                                                 what="loss token count")
        global_tokens = max(count, 1.0)
        totals: dict[str, torch.Tensor] = {}
        for batch in batches:
            output, loss_func = self.task.forward_step(iter([batch]), self.engine)
            loss_sum, _, reported = loss_func(output)
            if train:
                # DeepSpeed averages gradients over DP ranks: scale so the result is sum / global tokens
                self.engine.backward(loss_sum * self.dp_size / global_tokens, scale_wrt_gas=False)
                self.engine.step()
            for name, pair in reported.items():
                totals[name] = totals.get(name, torch.zeros(2, dtype=torch.float64)) + pair.detach().double().cpu()
        return totals, global_tokens

    def _reduce(self, totals: dict[str, torch.Tensor]) -> dict:
        names = sorted(totals)
        stacked = torch.stack([totals[name] for name in names]) if names else torch.zeros(0, 2, dtype=torch.float64)
        sums = collectives.all_reduce(collectives.new_tensor(stacked), what="metric sums").tolist()
        return {name: sums[i][0] / max(sums[i][1], 1.0) for i, name in enumerate(names)}

    def train_step(self) -> StepResult:
        batches = [next(self.train_iterator) for _ in range(self.num_microbatches)]
        by_module: dict[str, float] = {}
        if hasattr(self.task, "flops_breakdown"):  # LST: encoder / global / decoder separately
            for batch in batches:
                for module, flops in self.task.flops_breakdown(batch).items():
                    by_module[module] = by_module.get(module, 0.0) + flops
        modules = sorted(by_module)
        local = [sum(self.task.batch_tokens(b) for b in batches),
                 sum(self.task.batch_positions(b) for b in batches),
                 sum(self.task.batch_flops(b) for b in batches),
                 *(by_module[m] for m in modules)]
        totals, _ = self._run_microbatches(batches, train=True)
        metrics = self._reduce(totals)
        if not math.isfinite(metrics.get("lm loss", 0.0)):
            raise FloatingPointError(f"non-finite loss at iteration {self.state.iteration + 1} "
                                     "(the DeepSpeed engine has applied the step: it stops rather than skips)")
        self.scheduler.step(increment=self.config.data.global_batch_size)
        tokens, positions, flops, *module_flops = collectives.all_reduce_values(local, what="step counts")
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        return StepResult(metrics=metrics, grad_norm=grad_norm, tokens=tokens, positions=positions, flops=flops,
                          flops_by_module=dict(zip(modules, module_flops)))

    def evaluate(self) -> dict:
        cfg = self.config
        if cfg.logging.eval_iters <= 0 or self.valid_dataset is None:
            return {}
        self.engine.eval()
        iterator = self._iterator(self.valid_dataset, 0, step=self.state.iteration)
        totals: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for _ in range(cfg.logging.eval_iters):
                step_totals, _ = self._run_microbatches([next(iterator) for _ in range(self.num_microbatches)], False)
                for name, pair in step_totals.items():
                    totals[name] = totals.get(name, torch.zeros(2, dtype=torch.float64)) + pair
        self.engine.train()
        return self._reduce(totals)

    # ---------------------------------------------------------------- checkpoints
    def save(self) -> None:
        root = self.config.checkpoint.save
        if not root:
            return
        tag = f"iter_{self.state.iteration:07d}"
        temp_tag = collectives.broadcast_object(f"{tag}.tmp-{uuid.uuid4().hex[:8]}", src=0)
        client_state = {**self.state.to_common(), "scheduler": self.scheduler.state_dict(),
                        "config": encode_saved(self.config.to_dict()), "engine": "deepspeed"}
        if hasattr(self.task, "state"):
            client_state["task_state"] = self.task.state()
        if hasattr(self.task, "tokenizer"):
            client_state["vocab_layout"] = encode_saved(self.task.tokenizer.layout())
        self.engine.save_checkpoint(root, tag=temp_tag, client_state=client_state, save_latest=False)
        temp_dir, final_dir = Path(root) / temp_tag, Path(root) / tag
        save_rng_file(temp_dir / f"rng_rank_{self.rank}.pt", self.dp_size)
        collectives.barrier()
        if self.rank == 0:
            write_manifest(temp_dir)  # last, over every rank's files (checkpoint_manifest.py)
            if final_dir.exists():
                shutil.rmtree(final_dir)
            os.replace(temp_dir, final_dir)
            write_latest_tag(root, self.state.iteration)
        collectives.barrier()
        print_rank_0(f"saved checkpoint {final_dir}")
        ckpt = self.config.checkpoint
        if ckpt.keep_last and self.rank == 0:
            protect = [self._loaded_iteration] if same_folder(ckpt.load, ckpt.save) and not ckpt.finetune else []
            prune_checkpoints(root, ckpt.keep_last, lambda it: Path(root) / f"iter_{it:07d}", protect, log=print_rank_0)

    def _choose(self, root: str) -> Optional[int]:
        """Rank 0 picks the newest checkpoint of ``root`` that verifies (falling back past refused
        ones, checkpoint_folder.py); every rank gets the answer, or the refusal."""
        def decide():
            try:
                return choose_checkpoint(root, read_latest_tag(root), lambda it: Path(root) / f"iter_{it:07d}",
                                         fallback=True, log=print_rank_0), None
            except CheckpointError as error:
                return None, str(error)

        chosen, error = collectives.broadcast_object(decide() if self.rank == 0 else None, src=0)
        if error is not None:
            raise CheckpointError(error)
        return chosen

    def _load(self) -> None:
        ckpt = self.config.checkpoint
        iteration = self._choose(ckpt.load) if ckpt.load else None
        if iteration is None:
            if ckpt.load:
                print_rank_0(f"no checkpoint found in {ckpt.load}; starting from scratch")
            return
        no_optim = ckpt.no_load_optim or ckpt.finetune
        path, client_state = self.engine.load_checkpoint(
            ckpt.load, tag=f"iter_{iteration:07d}", load_optimizer_states=not no_optim,
            load_lr_scheduler_states=False, load_module_only=no_optim,
        )
        if path is None:
            raise FileNotFoundError(f"DeepSpeed could not load {ckpt.load}/iter_{iteration:07d}")
        if not ckpt.finetune:
            self.state.restore(client_state)
            if not no_optim and client_state.get("scheduler"):
                load_scheduler_state(self.scheduler, client_state["scheduler"], ckpt.override_opt_param_scheduler,
                                     ckpt.use_checkpoint_opt_param_scheduler, log=print_rank_0)
            if hasattr(self.task, "load_state"):
                self.task.load_state(client_state.get("task_state"))
            restore_rng(Path(ckpt.load) / f"iter_{iteration:07d}", "rng_rank_{rank}.pt", self.rank, self.dp_size,
                        log=print_rank_0)
        self._loaded_iteration = iteration
        print_rank_0(f"loaded {path} at iteration {self.state.iteration}")

    def _prepare_save_folder(self) -> None:
        """As the megatron engine: interrupted saves removed, later checkpoints of another run refused."""
        ckpt = self.config.checkpoint
        if not ckpt.save:
            return
        problem = None
        if self.rank == 0:
            problem = prepare_save_folder(
                ckpt.save, self.state.iteration, same_folder(ckpt.load, ckpt.save) and not ckpt.finetune,
                ckpt.overwrite_save, lambda: read_latest_tag(ckpt.save), lambda it: Path(ckpt.save) / f"iter_{it:07d}",
                lambda it: write_latest_tag(ckpt.save, it), log=print_rank_0)
        problem = collectives.broadcast_object(problem, src=0)
        if problem is not None:
            raise CheckpointError(problem)

    # ---------------------------------------------------------------- the loop
    def train(self) -> TrainState:
        from megatron_lst.training.signals import PreemptionHandler

        cfg, state = self.config, self.state
        if cfg.train.skip_train:
            self.metrics.validation(state, self.evaluate())
            self.metrics.close()
            return state
        handler = PreemptionHandler()
        self.engine.train()
        reason = state.budget_reached(cfg.train)
        interval_time, interval_tokens, interval_positions = 0.0, 0.0, 0.0
        while reason is None:
            start = time.time()
            result = self.train_step()
            interval_time += time.time() - start
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
            reason = state.budget_reached(cfg.train)
            if eval_due or (reason is not None and cfg.logging.eval_interval):  # as the megatron loop does
                self.metrics.validation(state, self.evaluate())
            if cfg.train.exit_interval and state.iteration % cfg.train.exit_interval == 0:
                reason = reason or f"reached --exit-interval {cfg.train.exit_interval}"
            if handler.should_stop():
                reason = handler.stop_reason(cfg.checkpoint.save)
            if (cfg.checkpoint.save_interval and state.iteration % cfg.checkpoint.save_interval == 0) or reason:
                self.save()
        print_rank_0(f"training stopped at iteration {state.iteration}: {reason}")
        handler.restore()
        self.metrics.close()
        return state


def run_deepspeed(config: Config, task_factory) -> int:
    """Entry point for ``pretrain_lst.py --engine deepspeed``."""
    DeepSpeedTrainer(config, task_factory).train()
    destroy_distributed()
    return 0
