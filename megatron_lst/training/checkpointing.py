"""Atomic, resharding checkpoints on ``megatron.core.dist_checkpointing``.

Layout (Megatron-LM's): ``<save>/iter_0000100/`` plus ``<save>/latest_checkpointed_iteration.txt``.
A save goes to ``iter_0000100.tmp-<nonce>/``; only when every rank has finished writing does
rank 0 rename it and then replace the ``latest`` file (itself written to a temp file and renamed).
A process killed half-way leaves a ``.tmp-`` folder that ``--load`` never looks at, so the
previous checkpoint is the one resumed (the next run removes it: checkpoint_folder.py).

Before the rename, rank 0 writes ``manifest.json`` (size and SHA-256 of every file); every load
verifies it before torch reads anything (checkpoint_manifest.py), and ``--load`` falls back to the
newest older checkpoint that verifies.

What is saved: the model's and optimizer's sharded state (TP/PP-reshardable on load), and as
common state the iteration, consumed samples, FLOPs/tokens so far, the LR scheduler, data-sampler
state, the run config and the vocabulary layout. RNG states are per rank (``rng/rank_<r>.pt``,
tensors and plain values read with ``weights_only=True``) and restored when the world size is unchanged.
"""

from __future__ import annotations

import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from megatron.core import dist_checkpointing, tensor_parallel

from megatron_lst.training import collectives
from megatron_lst.training.checkpoint_folder import choose_checkpoint, pointed_iteration
from megatron_lst.training.checkpoint_manifest import CheckpointError, verify_checkpoint, write_manifest
from megatron_lst.training.initialize import print_rank_0
from megatron_lst.utils.atomic import write_text_atomic

LATEST_FILE = "latest_checkpointed_iteration.txt"
FORMAT_NAME = "torch_dist"


def iteration_dir(root: str | os.PathLike, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def read_latest_pointer(root: str | os.PathLike) -> Optional[int]:
    """The iteration ``latest_checkpointed_iteration.txt`` names (None: the file is absent); the
    folder itself is checked when it is verified (``resolve_iteration``)."""
    latest = Path(root) / LATEST_FILE
    if not latest.is_file():
        return None
    text = latest.read_text().strip()
    if text == "release":
        return 0
    try:
        return int(text)
    except ValueError:
        raise CheckpointError(f"{latest}: expected an iteration number, found {text!r}") from None


def read_latest_iteration(root: str | os.PathLike) -> Optional[int]:
    """The last *completed* checkpoint's iteration, or None when there is none."""
    iteration = read_latest_pointer(root)
    if iteration is not None and not iteration_dir(root, iteration).is_dir():
        raise FileNotFoundError(f"{Path(root) / LATEST_FILE} names iteration {iteration}, "
                                f"but {iteration_dir(root, iteration)} is missing")
    return iteration


def write_pointer(path: str | os.PathLike, text: Optional[str]) -> None:
    """Write a checkpoint pointer file atomically (a crash leaves the old one), or remove it when None."""
    if text is None:
        Path(path).unlink(missing_ok=True)
    else:
        write_text_atomic(path, text)


def write_latest(root: str | os.PathLike, iteration: Optional[int]) -> None:
    """Point ``latest`` at ``iteration``, or remove it when None."""
    write_pointer(Path(root) / LATEST_FILE, None if iteration is None else str(iteration))


def resolve_iteration(root: str | os.PathLike, iteration: Optional[int] = None, fallback: bool = False,
                      log=print_rank_0, read_latest: Optional[Callable[[str | os.PathLike], Optional[int]]] = None
                      ) -> Optional[int]:
    """The verified iteration to load from ``root``: ``iteration`` when given (refused if it does not
    verify), else what ``latest`` names, falling back to older checkpoints when ``fallback``
    (``--load``). None when ``root`` holds no checkpoint. Rank 0 decides and every rank gets its
    answer, so the ranks agree and the files are hashed once. ``read_latest`` reads the engine's
    pointer (DeepSpeed names it differently); by default this module's."""
    read_latest = read_latest or read_latest_pointer

    def decide() -> tuple[Optional[int], Optional[str]]:
        try:
            if iteration is not None:
                verify_checkpoint(iteration_dir(root, iteration))
                return iteration, None
            latest = pointed_iteration(root, lambda: read_latest(root), fallback, log)
            return choose_checkpoint(root, latest, lambda it: iteration_dir(root, it), fallback, log), None
        except CheckpointError as error:
            return None, str(error)

    distributed = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
    if not distributed:
        chosen, error = decide()
    else:
        chosen, error = collectives.broadcast_object(decide() if torch.distributed.get_rank() == 0 else None, src=0)
    if error is not None:
        raise CheckpointError(error)
    return chosen


# numpy's RNG state holds an ndarray; weights_only loading accepts it only with these allowed
_NUMPY_ARRAY_GLOBALS = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct
_NUMPY_ARRAY_GLOBALS.append(_reconstruct)


def rng_state() -> dict:
    """This process's RNG states as tensors and plain values, so ``torch.load(weights_only=True)`` reads them."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                             numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    else:  # a file written before the states were tensors
        np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_rng_file(path: Path, world_size: int) -> None:
    torch.save({"world_size": world_size, "state": rng_state()}, path)


def load_rng_file(path: Path) -> dict:
    """``{"world_size", "state"}`` of an RNG file, read with torch's restricted (weights-only) unpickler,
    which builds tensors and plain containers but runs no code a file names."""
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            saved = torch.load(path, weights_only=True)
        if not isinstance(saved, dict) or "state" not in saved or "world_size" not in saved:
            raise ValueError("expected a dict with 'world_size' and 'state'")
        return saved
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (every rank's RNG state is saved)") from None
    except Exception as error:  # noqa: BLE001 - an unreadable file of any kind is one refusal naming it
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(f"{path}: not a readable RNG state file ({type(error).__name__}: {first})") from None


def restore_rng(folder: Path, pattern: str, rank: int, world_size: int, log=print) -> None:
    """Restore this rank's RNG states from ``folder/pattern.format(rank=...)`` when the checkpoint
    was saved with this world size (the count of its RNG files); otherwise say they are not."""
    saved_ranks = len(list(folder.glob(pattern.format(rank="*"))))
    if saved_ranks != world_size:
        log(f"note: {folder} holds RNG states of {saved_ranks} rank(s), this run has {world_size}: "
            "not restoring them (the run continues with fresh random streams)")
        return
    saved = load_rng_file(folder / pattern.format(rank=rank))
    if saved["world_size"] == world_size:
        set_rng_state(saved["state"])


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
    save_rng_file(rng_dir / f"rank_{rank}.pt", torch.distributed.get_world_size())
    collectives.barrier()
    if rank == 0:
        write_manifest(temp_dir)  # last, over every file of every rank
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(temp_dir, final_dir)
        write_latest(root, iteration)
    collectives.barrier()
    return final_dir


def load_checkpoint(
    root: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: Any = None,
    scheduler: Any = None,
    iteration: Optional[int] = None,
    load_rng: bool = True,
    load_scheduler=None,
) -> Optional[dict]:
    """Load the latest (or given) checkpoint into model/optimizer/scheduler; returns common state.

    The folder is verified against its manifest first (``resolve_iteration``): nothing in it is
    unpickled before. The model is loaded through its current ``sharded_state_dict()``, so a
    checkpoint saved at another TP/PP size is resharded to this run's layout. ``load_scheduler``
    (``scheduler_resume.load_scheduler_state`` with the run's flags) takes the saved schedule into
    ``scheduler``; by default the state is loaded as megatron-core does. Returns None when there is
    nothing to load.
    """
    iteration = resolve_iteration(root, iteration)
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
        (load_scheduler or (lambda sched, saved: sched.load_state_dict(saved)))(scheduler, scheduler_state)
    if load_rng:
        restore_rng(ckpt_dir / "rng", "rank_{rank}.pt", torch.distributed.get_rank(),
                    torch.distributed.get_world_size(), log=print_rank_0)
    loaded["iteration"] = int(loaded.get("iteration", iteration))
    loaded["checkpoint_dir"] = str(ckpt_dir)
    return loaded


def load_common_state(root: str | os.PathLike, iteration: Optional[int] = None) -> Optional[dict]:
    """The common (non-sharded) state of the latest or given checkpoint, without loading weights,
    so a run can check what the checkpoint was trained with first; None when there is none.
    Verified against the manifest first, like ``load_checkpoint``."""
    iteration = resolve_iteration(root, iteration)
    if iteration is None:
        return None
    return dist_checkpointing.load_common_state_dict(str(iteration_dir(root, iteration)))

