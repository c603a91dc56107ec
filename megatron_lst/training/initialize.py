"""Process-group and model-parallel set-up, and seeding.

Works under ``torchrun`` (reads RANK/WORLD_SIZE/LOCAL_RANK) and as a plain single process.
On machines without CUDA it applies ``cpu_compat`` first and uses gloo.
"""

from __future__ import annotations

import os
import random
from datetime import datetime, timedelta

import numpy as np
import torch
from megatron.core import parallel_state, tensor_parallel

from megatron_lst.training.arguments import Config
from megatron_lst.training.cpu_compat import apply_cpu_patches
from megatron_lst.training.dry_run import ParallelLayout, resolve_layout


def start_process_group(backend: str | None = None, timeout_minutes: int = 30) -> bool:
    """torch.distributed's default group (idempotent); True when running on CPU (cpu_compat applied)."""
    on_cpu = apply_cpu_patches()
    if not torch.distributed.is_initialized():
        rank = int(os.environ.get("RANK", "0"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + (os.getpid() % 2000)))
        if not on_cpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(
            backend=backend or ("gloo" if on_cpu else "nccl"),
            rank=rank,
            world_size=world_size,
            timeout=timedelta(minutes=timeout_minutes),
        )
    return on_cpu


def initialize_distributed(
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    backend: str | None = None,
    seed: int = 1234,
    timeout_minutes: int = 30,
) -> None:
    """Initialise torch.distributed, megatron's parallel state and all RNGs (idempotent)."""
    start_process_group(backend, timeout_minutes)
    world_size = torch.distributed.get_world_size()
    model_parallel = tensor_model_parallel_size * pipeline_model_parallel_size
    if world_size % model_parallel:
        raise ValueError(
            f"world size {world_size} is not divisible by TP x PP = "
            f"{tensor_model_parallel_size} x {pipeline_model_parallel_size}"
        )
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tensor_model_parallel_size,
            pipeline_model_parallel_size=pipeline_model_parallel_size,
        )
    set_seed(seed)


def initialize_parallel(config: Config) -> ParallelLayout:
    """A training run's start: the process group, then the layout its flags ask for at this world
    size (checked as ``--dry-run`` checks it: every broken rule in one message), then megatron's
    parallel state for that layout and the seeds. The loop and both engines read the layout."""
    start_process_group(config.parallel.distributed_backend)
    layout = resolve_layout(config, torch.distributed.get_world_size())
    initialize_distributed(layout.tensor, layout.pipeline, backend=config.parallel.distributed_backend,
                           seed=config.data.seed)
    return layout


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch the same on every rank (CPU init makes weights TP-invariant)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed, inference_rng_tracker=not torch.cuda.is_available())


def destroy_distributed() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def is_logging_rank() -> bool:
    """Megatron logs from the last rank: it holds the loss under pipeline parallelism."""
    if not torch.distributed.is_initialized():
        return True
    return torch.distributed.get_rank() == torch.distributed.get_world_size() - 1


def timestamped(message: str) -> str:
    """``message`` after the local time, ``[YYYY-MM-DD HH:MM:SS]`` as Megatron-LM's log lines start."""
    return f"[{datetime.now():%Y-%m-%d %H:%M:%S}] {message}"


def print_rank_0(message: str) -> None:
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(timestamped(message), flush=True)
