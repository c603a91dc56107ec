"""Resuming the LR / weight-decay schedule when the command line's differs from the checkpoint's.

Megatron-LM's semantics (``--override-opt_param-scheduler``, ``--use-checkpoint-opt_param-scheduler``):

* neither flag: the schedule values (peak and minimum LR, warm-up and decay lengths, decay style,
  weight decay and its schedule) must match; a mismatch is an error. Megatron asserts; here the
  error names each differing value and both flags.
* ``--override-opt-param-scheduler``: the command line's values are used;
* ``--use-checkpoint-opt-param-scheduler``: the checkpoint's values are used, the command line's ignored.

Either way the step count (samples consumed by the schedule) comes from the checkpoint, and the
choice is printed. megatron-core's ``OptimizerParamScheduler`` defaults to keeping the checkpoint's
values silently, which is how a ``--train-iters 10`` run resumed with ``--train-iters 20`` kept its
finished schedule (LR at its floor for the ten new steps).
"""

from __future__ import annotations

import math
from typing import Callable

from megatron_lst.training.checkpoint_manifest import CheckpointError

# state-dict key -> the flags that set it; step counts are in samples (iterations x --global-batch-size)
SCHEDULE_FIELDS = {
    "max_lr": "--lr",
    "min_lr": "--min-lr (or --lr x --min-lr-ratio)",
    "lr_warmup_steps": "--lr-warmup-iters, in samples",
    "lr_decay_steps": "--lr-decay-iters or --train-iters, in samples",
    "lr_decay_style": "--lr-decay-style",
    "start_wd": "--weight-decay",
    "end_wd": "--weight-decay",
    "wd_incr_steps": "--lr-decay-iters or --train-iters, in samples",
    "wd_incr_style": "weight-decay schedule",
}


def _same(current, saved) -> bool:
    if isinstance(current, float) or isinstance(saved, float):
        return math.isclose(float(current), float(saved), rel_tol=1e-9, abs_tol=0.0)
    return current == saved


def schedule_differences(scheduler, saved: dict) -> list[str]:
    """``name (flags): checkpoint X, command line Y`` for each schedule value that differs."""
    differences = []
    for key, flags in SCHEDULE_FIELDS.items():
        if key in saved and not _same(getattr(scheduler, key), saved[key]):
            differences.append(f"{key} ({flags}): checkpoint {saved[key]}, command line {getattr(scheduler, key)}")
    return differences


def load_scheduler_state(scheduler, saved: dict, override: bool, use_checkpoint: bool,
                         log: Callable[[str], None] = print) -> None:
    """Load ``saved`` into megatron-core's ``OptimizerParamScheduler`` with Megatron-LM's flag semantics."""
    if override and use_checkpoint:
        raise ValueError("--override-opt-param-scheduler and --use-checkpoint-opt-param-scheduler exclude each other")
    differences = schedule_differences(scheduler, saved)
    if differences and not (override or use_checkpoint):
        raise CheckpointError(
            "the checkpoint's LR schedule differs from the command line's (" + "; ".join(differences) + "): pass "
            "--override-opt-param-scheduler to use the command line's values or --use-checkpoint-opt-param-scheduler "
            "to keep the checkpoint's")
    if differences:
        which = "the command line's" if override else "the checkpoint's"
        log(f"LR schedule: using {which} values ({'; '.join(differences)}); the step count is the checkpoint's")
    # the values were compared above; megatron-core then only has to take the right side
    scheduler.override_opt_param_scheduler = override
    scheduler.use_checkpoint_opt_param_scheduler = not override
    scheduler.load_state_dict(saved)
