"""Which checkpoint of a ``--load``/``--save`` folder to use, and keeping the folder tidy.

* ``choose_checkpoint``: the iteration to load. ``latest_checkpointed_iteration.txt`` (or
  DeepSpeed's ``latest``) names the newest complete checkpoint; one that fails its manifest
  (checkpoint_manifest.py) is refused, and ``--load`` falls back to the newest older complete
  checkpoint that verifies, saying which was refused and why. Tools that were asked for one
  checkpoint (evaluation, generation, conversion) do not fall back: they refuse.
* ``check_save_folder``: a run that does not resume from its ``--save`` folder would overwrite
  the later checkpoints there and move ``latest`` back, so it is refused unless ``--overwrite-save``.
* ``remove_interrupted_saves``: the ``iter_*.tmp-*`` folders of saves that were killed half-way.
* ``prune_checkpoints``: ``--keep-last N``.

All of these act on rank 0's view of the (shared) file system; callers broadcast the outcome.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable, Optional

from megatron_lst.training.checkpoint_manifest import CheckpointError, verify_checkpoint

_ITERATION_DIR = re.compile(r"^iter_(\d{7})$")
_TEMP_DIR = re.compile(r"^iter_\d{7}\.tmp-[0-9a-z]+$")


def complete_iterations(root: str | os.PathLike) -> list[int]:
    """Iterations of the complete (renamed into place) checkpoint folders under ``root``, ascending."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = (_ITERATION_DIR.match(path.name) for path in root.iterdir() if path.is_dir())
    return sorted(int(match.group(1)) for match in found if match)


def pointed_iteration(root: str | os.PathLike, read_pointer: Callable[[], Optional[int]], fallback: bool,
                      log: Callable[[str], None] = print) -> Optional[int]:
    """The iteration the ``latest`` pointer names (None: no pointer). A pointer that cannot be read
    (garbage: edited by hand, or a file system that lost it) is a :class:`CheckpointError` naming
    it; with ``fallback`` (``--load``) the newest complete folder is tried instead, saying so, since
    folders appear only whole (an atomic rename after the manifest)."""
    try:
        return read_pointer()
    except CheckpointError as error:
        complete = complete_iterations(root)
        if not fallback or not complete:
            raise
        log(f"ignoring {error}; trying the newest complete checkpoint folder, iteration {complete[-1]}")
        return complete[-1]


def choose_checkpoint(root: str | os.PathLike, latest: Optional[int], folder_of: Callable[[int], Path],
                      fallback: bool, log: Callable[[str], None] = print) -> Optional[int]:
    """The iteration to load from ``root`` whose ``latest`` pointer says ``latest`` (None: nothing saved).

    The named checkpoint is verified; if it fails and ``fallback`` is set, older complete
    checkpoints are tried newest first, and the choice is logged with the refused folder's reason.
    Raises :class:`CheckpointError` when nothing verifies (or, without ``fallback``, when the named
    one does not).
    """
    if latest is None:
        return None
    candidates = [latest] + ([it for it in reversed(complete_iterations(root)) if it < latest] if fallback else [])
    refused: list[str] = []
    for iteration in candidates:
        try:
            verify_checkpoint(folder_of(iteration))
        except CheckpointError as error:
            refused.append(str(error))
            log(f"refusing checkpoint {folder_of(iteration)}: {error}")
            continue
        if refused:
            log(f"falling back to {folder_of(iteration)}, the newest checkpoint that verifies")
        return iteration
    if len(refused) == 1:
        raise CheckpointError(refused[0])
    raise CheckpointError(f"no checkpoint in {root} verifies (newest refused: {refused[0]})")


def remove_interrupted_saves(root: str | os.PathLike, log: Callable[[str], None] = print) -> list[Path]:
    """Delete the ``iter_NNNNNNN.tmp-*`` folders that saves killed half-way left under ``root``.
    Call before this run saves anything (its own temp folder would match too)."""
    root = Path(root)
    removed = [path for path in sorted(root.iterdir()) if path.is_dir() and _TEMP_DIR.match(path.name)] \
        if root.is_dir() else []
    for path in removed:
        shutil.rmtree(path)
    if removed:
        log(f"removed {len(removed)} interrupted save(s) from {root}: {', '.join(p.name for p in removed)}")
    return removed


def later_checkpoints(root: str | os.PathLike, start_iteration: int, latest: Optional[int]) -> list[int]:
    """Checkpoints in ``root`` after ``start_iteration`` (complete folders, and what ``latest`` names)."""
    later = {it for it in complete_iterations(root) if it > start_iteration}
    if latest is not None and latest > start_iteration:
        later.add(latest)
    return sorted(later)


def check_save_folder(save: str, later: list[int], start_iteration: int, overwrite: bool) -> Optional[str]:
    """Why this run must not write into ``save`` (None when it may)."""
    if not later or overwrite:
        return None
    return (f"--save {save} already holds checkpoint(s) {', '.join(map(str, later))}, later than this run's "
            f"start (iteration {start_iteration}); saving there would overwrite them and move "
            "'latest' back: resume with --load pointing at it, choose another --save, or pass --overwrite-save")


def discard_later_checkpoints(root: str | os.PathLike, later: Iterable[int], folder_of: Callable[[int], Path],
                              write_latest: Callable[[Optional[int]], None], log: Callable[[str], None] = print) -> None:
    """``--overwrite-save``: delete the checkpoints this run replaces and point ``latest`` at the
    newest one left (or remove it), so the folder holds one coherent history."""
    later = sorted(later)
    for iteration in later:
        if folder_of(iteration).is_dir():
            shutil.rmtree(folder_of(iteration))
    remaining = [it for it in complete_iterations(root) if it not in later]
    write_latest(remaining[-1] if remaining else None)
    log(f"--overwrite-save: removed checkpoint(s) {', '.join(map(str, later))} from {root}")


def prune_checkpoints(root: str | os.PathLike, keep_last: int, folder_of: Callable[[int], Path],
                      protect: Iterable[Optional[int]] = (), log: Callable[[str], None] = print) -> list[int]:
    """``--keep-last N``: delete complete checkpoints older than the newest ``keep_last``. The
    newest is never deleted, nor any iteration in ``protect`` (the checkpoint this run loaded)."""
    if keep_last < 1:
        raise ValueError(f"--keep-last must be >= 1, got {keep_last}")
    iterations = complete_iterations(root)
    kept = set(iterations[-keep_last:]) | {it for it in protect if it is not None}
    removed = [it for it in iterations if it not in kept]
    for iteration in removed:
        shutil.rmtree(folder_of(iteration))
    if removed:
        log(f"--keep-last {keep_last}: removed checkpoint(s) {', '.join(map(str, removed))} from {root}")
    return removed


def prepare_save_folder(save: str, start_iteration: int, resumes_it: bool, overwrite: bool, latest: Callable[[], Optional[int]],
                        folder_of: Callable[[int], Path], write_latest: Callable[[Optional[int]], None],
                        log: Callable[[str], None] = print) -> Optional[str]:
    """Rank 0, before training: the refusal of a ``--save`` folder with later checkpoints (None when
    the run may write there); else removes interrupted saves, and with ``--overwrite-save`` the
    later checkpoints. ``resumes_it``: the run loaded from this folder (not --finetune)."""
    try:
        later = [] if resumes_it else later_checkpoints(save, start_iteration, latest())
    except CheckpointError as error:
        return str(error)
    problem = check_save_folder(save, later, start_iteration, overwrite)
    if problem is None:
        remove_interrupted_saves(save, log=log)
        if later:
            discard_later_checkpoints(save, later, folder_of, write_latest, log=log)
    return problem


def same_folder(load: Optional[str], save: Optional[str]) -> bool:
    return bool(load and save and Path(load).resolve() == Path(save).resolve())
