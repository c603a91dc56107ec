"""Atomic, resharding checkpoints on ``megatron.core.dist_checkpointing``.

Layout (Megatron-LM's): ``<save>/iter_0000100/`` plus ``<save>/latest_checkpointed_iteration.txt``.
A save goes to ``iter_0000100.tmp-<nonce>/``; only when every rank has finished writing does
rank 0 rename it and then replace the ``latest`` file (itself written to a temp file and renamed).
A process killed half-way leaves a ``.tmp-`` folder that ``--load`` never looks at, so the
previous checkpoint is the one resumed.

What is saved: the model's and optimizer's sharded state (TP/PP-reshardable on load), and as
common state the iteration, consumed samples, FLOPs/tokens so far, the LR scheduler, data-sampler
state, the run config and the vocabulary layout. RNG states are per rank (``rng/rank_<r>.pt``)
and restored when the world size is unchanged.
"""

from __future__ import annotations

import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel

from megatron_lst.training import collectives

LATEST_FILE = "latest_checkpointed_iteration.txt"
FORMAT_NAME = "torch_dist"


def iteration_dir(root: str | os.PathLike, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def read_latest_iteration(root: str | os.PathLike) -> Optional[int]:
    """The last *completed* checkpoint's iteration, or None when there is none."""
    latest = Path(root) / LATEST_FILE
    if not latest.is_file():
        return None
    text = latest.read_text().strip()
    if text == "release":
        return 0
    try:
        iteration = int(text)
    except ValueError as error:
        raise ValueError(f"{latest}: expected an iteration number, found {text!r}") from error
    if not iteration_dir(root, iteration).is_dir():
        raise FileNotFoundError(f"{latest} names iteration {iteration}, but {iteration_dir(root, iteration)} is missing")
    return iteration


def _rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _broadcast_string(value: str) -> str:
    """Rank 0's ``value`` on every rank (the temp folder name must be the same everywhere)."""
    return collectives.broadcast_object(value, src=0)


def save_checkpoint(
    root: str | os.PathLike,
    iteration: int,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    common_state: dict,
) -> Path:
    """Write one checkpoint atomically; every rank must call it."""
    rank = torch.distributed.get_rank()
    root = Path(root)
    final_dir = iteration_dir(root, iteration)
    temp_dir = Path(_broadcast_string(str(final_dir) + f".tmp-{uuid.uuid4().hex[:8]}"))
    if rank == 0:
        temp_dir.mkdir(parents=True, exist_ok=False)
    collectives.barrier()

    model_state = model.sharded_state_dict()
    state = {
        "model": model_state,
        "optimizer": optimizer.sharded_state_dict(model_state) if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "checkpoint_version": 1,
        **common_state,
    }
    if state["optimizer"] is None:
        del state["optimizer"]
    dist_checkpointing.save(state, str(temp_dir))

    rng_dir = temp_dir / "rng"
    if rank == 0:
        rng_dir.mkdir(exist_ok=True)
    collectives.barrier()
    torch.save(
        {"world_size": torch.distributed.get_world_size(), "state": _rng_state()},
        rng_dir / f"rank_{rank}.pt",
    )
    collectives.barrier()
    if rank == 0:
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(temp_dir, final_dir)
        latest_tmp = root / f".{LATEST_FILE}.tmp"
        latest_tmp.write_text(str(iteration))
        os.replace(latest_tmp, root / LATEST_FILE)
    collectives.barrier()
    return final_dir


def load_checkpoint(
    root: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: Any = None,
    scheduler: Any = None,
    iteration: Optional[int] = None,
    load_rng: bool = True,
) -> Optional[dict]:
    """Load the latest (or given) checkpoint into model/optimizer/scheduler; returns common state.

    The model is loaded through its current ``sharded_state_dict()``, so a checkpoint saved at
    another TP/PP size is resharded to this run's layout. Returns None when there is nothing to load.
    """
    if iteration is None:
        iteration = read_latest_iteration(root)
        if iteration is None:
            return None
    ckpt_dir = iteration_dir(root, iteration)
    model_state = model.sharded_state_dict()
    template: dict = {"model": model_state}
    if optimizer is not None:
        template["optimizer"] = optimizer.sharded_state_dict(model_state, is_loading=True)
    loaded = dist_checkpointing.load(template, str(ckpt_dir))
    model.load_state_dict(loaded.pop("model"))
    optimizer_state = loaded.pop("optimizer", None)
    if optimizer is not None:
        if optimizer_state is None:
            raise KeyError(f"{ckpt_dir} holds no optimizer state; pass --no-load-optim to load weights only")
        optimizer.load_state_dict(optimizer_state)
    scheduler_state = loaded.pop("scheduler", None)
    if scheduler is not None and scheduler_state is not None:
        scheduler.load_state_dict(scheduler_state)
    if load_rng:
        rng_file = ckpt_dir / "rng" / f"rank_{torch.distributed.get_rank()}.pt"
        if rng_file.is_file():
            saved = torch.load(rng_file, weights_only=False)
            if saved["world_size"] == torch.distributed.get_world_size():
                _set_rng_state(saved["state"])
    loaded["iteration"] = int(loaded.get("iteration", iteration))
    loaded["checkpoint_dir"] = str(ckpt_dir)
    return loaded


def load_common_state(root: str | os.PathLike, iteration: Optional[int] = None) -> Optional[dict]:
    """The common (non-sharded) state of the latest or given checkpoint, without loading weights,
    so a run can check what the checkpoint was trained with first; None when there is none."""
    if iteration is None:
        iteration = read_latest_iteration(root)
        if iteration is None:
            return None
    return dist_checkpointing.load_common_state_dict(str(iteration_dir(root, iteration)))


def checkpoint_format_ok(path: str | os.PathLike) -> bool:
    """True when ``path`` is a finished dist_checkpointing folder."""
    return dist_checkpointing.check_is_distributed_checkpoint(str(path))


def pipeline_and_tensor_ranks() -> tuple[int, int]:
    return (
        parallel_state.get_pipeline_model_parallel_rank(),
        parallel_state.get_tensor_model_parallel_rank(),
    )
