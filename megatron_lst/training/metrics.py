"""Log lines, TensorBoard scalars and an optional jsonl of metrics, from the logging rank only.

TensorBoard gets each value twice: under this project's tags (``train/lm_loss``, ``throughput/...``,
the same names as the ``--log-json`` keys) and under Megatron-LM's (``lm loss``, ``learning-rate``,
``grad-norm``, ``batch-size``, ``iteration-time``, ``throughput`` in TFLOP/s per GPU, ``lm loss
validation`` and ``... validation ppl``, each with a ``... vs samples`` twin over consumed samples),
so dashboards built for Megatron-LM runs read these runs unchanged. Every printed line starts with
the time, as Megatron-LM's do.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import torch

from megatron_lst.training.initialize import is_logging_rank, timestamped
from megatron_lst.training.task import SHARE_PREFIX


def tflops_per_gpu(flops: float, elapsed: float, world_size: int) -> float:
    """Model TFLOP/s per GPU over an interval: the FLOPs the steps counted (all ranks together),
    spread over every GPU of the job (Megatron-LM's ``throughput``)."""
    return flops / max(elapsed, 1e-9) / max(world_size, 1) / 1e12


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


class MetricsLogger:
    def __init__(self, config):
        self.config = config
        self.enabled = is_logging_rank()
        self.writer = None
        self.json_path = Path(config.logging.log_json) if config.logging.log_json else None
        if self.enabled and config.logging.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=config.logging.tensorboard_dir, max_queue=100)
        if self.enabled and self.json_path is not None:
            self.json_path.parent.mkdir(parents=True, exist_ok=True)

    def _record(self, kind: str, iteration: int, values: dict) -> None:
        if self.writer is not None:
            for name, value in values.items():
                if value is not None:
                    self.writer.add_scalar(f"{kind}/{name}", value, iteration)
        if self.json_path is not None:
            with self.json_path.open("a") as handle:
                handle.write(json.dumps({"kind": kind, "iteration": iteration, "time": time.time(), **values}) + "\n")

    def _megatron_scalars(self, state, values: dict) -> None:
        """Megatron-LM's tags: ``name`` over iterations and ``name vs samples`` over consumed samples."""
        if self.writer is None:
            return
        for name, value in values.items():
            if value is not None:
                self.writer.add_scalar(name, value, state.iteration)
                self.writer.add_scalar(f"{name} vs samples", value, state.consumed_samples)

    def step(self, state, result, lr: float) -> None:
        if not self.enabled:
            return
        values = {name.replace(" ", "_"): value for name, value in result.metrics.items()}
        values.update(
            lr=lr,
            grad_norm=result.grad_norm,
            skipped=int(result.skipped),
            flops_so_far=state.flops_so_far,
            tokens_so_far=state.tokens_so_far,
            consumed_samples=state.consumed_samples,
        )
        values.update({f"step_flops_{module}": flops for module, flops in result.flops_by_module.items()})
        values.update({f"share_so_far_{name}": share for name, share in state.token_shares_so_far().items()})
        self._record("train", state.iteration, values)
        losses = {name: value for name, value in result.metrics.items() if not name.startswith(SHARE_PREFIX)}
        self._megatron_scalars(state, {**losses, "learning-rate": lr, "grad-norm": result.grad_norm,
                                       "batch-size": self.config.data.global_batch_size})

    def log_line(self, state, result, lr: float, elapsed: float, tokens: float, steps: int,
                 positions: float | None = None, flops: Optional[float] = None) -> None:
        """One line per --log-interval: losses, LR, grad norm, step time, TFLOP/s per GPU (``flops``:
        the interval's), tokens/s and patches/s (global positions: patches for LST, tokens for the
        baseline) and their ratio."""
        if not self.enabled:
            return
        tokens_per_s = tokens / max(elapsed, 1e-9)
        positions = tokens if positions is None else positions
        positions_per_s = positions / max(elapsed, 1e-9)
        tokens_per_position = tokens / max(positions, 1e-9)
        tflops = tflops_per_gpu(flops, elapsed, world_size()) if flops is not None else None
        metrics = " | ".join(f"{name} {value:.4f}" for name, value in sorted(result.metrics.items())
                             if not name.startswith(SHARE_PREFIX))
        shares = state.token_shares_so_far()
        if shares:  # the blend's realised token shares since the start (a step's own are lumpy under bucketing)
            metrics += " | tokens so far " + ", ".join(f"{name} {share:.1%}" for name, share in shares.items())
        grad = f"{result.grad_norm:.3f}" if result.grad_norm is not None else "-"
        throughput = f"{tflops:.3g} TFLOP/s/GPU | " if tflops is not None else ""
        print(timestamped(
            f"iteration {state.iteration:8d} | {metrics} | lr {lr:.3e} | grad norm {grad} | "
            f"{1000 * elapsed / steps:.1f} ms/step | {throughput}{tokens_per_s:.0f} tokens/s | "
            f"{positions_per_s:.0f} patches/s | {tokens_per_position:.2f} tokens/position | "
            f"FLOPs so far {state.flops_so_far:.3e} | skipped {state.skipped_iterations}"),
            flush=True,
        )
        self._record("throughput", state.iteration, {
            "tokens_per_s": tokens_per_s, "patches_per_s": positions_per_s,
            "tokens_per_position": tokens_per_position, "ms_per_step": 1000 * elapsed / steps,
            "tflops_per_gpu": tflops,
        })
        self._megatron_scalars(state, {"iteration-time": elapsed / steps, "throughput": tflops})

    def validation(self, state, metrics: dict) -> None:
        if not self.enabled or not metrics:
            return
        text = " | ".join(f"{name} {value:.4f}" for name, value in sorted(metrics.items()))
        print(timestamped(f"validation at iteration {state.iteration} | {text}"), flush=True)
        self._record("valid", state.iteration, {name.replace(" ", "_"): v for name, v in metrics.items()})
        scalars = {f"{name} validation": value for name, value in metrics.items()}
        scalars.update({f"{name} validation ppl": math.exp(min(value, 20.0))
                        for name, value in metrics.items() if name.endswith("loss")})
        self._megatron_scalars(state, scalars)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
