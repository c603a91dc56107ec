"""SIGTERM / SIGUSR1 (SLURM preemption, ``scancel``, ``timeout``) and ``--exit-duration-in-mins``:
save (when the run has ``--save``), then exit 0.

The handler only records the signal; the loop checks it (and the wall time) after each step, and
every rank agrees through one all-reduce so that all ranks save the same iteration together (the
clocks of different hosts need not agree: one rank past the limit stops them all). The flag is
reduced through ``training/collectives.py``, on the device of the default group's backend (a CUDA
tensor under NCCL: NCCL takes no CPU tensors).
"""

from __future__ import annotations

import signal
import time
from typing import Optional

import torch

from megatron_lst.training import collectives

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionHandler:
    """Records SIGTERM / SIGUSR1 while installed; ``should_stop`` turns it, and a run longer than
    ``exit_duration_mins`` since ``start_time``, into a decision all ranks share."""

    def __init__(self, signals: tuple = HANDLED_SIGNALS, exit_duration_mins: Optional[float] = None,
                 start_time: Optional[float] = None):
        self.received: Optional[int] = None
        self.out_of_time = False
        self.exit_duration_mins = exit_duration_mins
        self.start_time = time.time() if start_time is None else start_time
        self._signals = signals
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def reinstall(self) -> None:
        """Point the signals at this handler again, at the C level too.

        A native library can replace the process's handler behind Python's back (``sigaction`` from
        C: Python's own table still names ours). On the GPU, a SIGUSR1 sent during the second step
        of an NCCL baseline run went unseen although the same run on gloo stops; communicators are
        created lazily at the first collective, inside the first step. ``signal.signal`` re-issues
        the ``sigaction``, so calling this after every step bounds such a loss to the step in which
        the library ran.
        """
        for sig in self._signals:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        self.received = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received else "no signal"

    def stop_reason(self, save_dir: Optional[str]) -> str:
        """Why the run stopped and what became of its state, in words that are true when they are
        printed (after the final save): a run without ``--save`` stops without saving, and says so."""
        cause = (f"ran past --exit-duration-in-mins {self.exit_duration_mins:g}" if self.out_of_time
                 else f"received {self.signal_name}")
        if save_dir:
            return f"{cause}: saved a checkpoint to {save_dir} and exited"
        return f"{cause}: exited without saving (no --save directory was given)"

    def time_is_up(self) -> bool:
        """This rank's clock says the run has lasted ``exit_duration_mins``."""
        return (self.exit_duration_mins is not None
                and (time.time() - self.start_time) / 60.0 > self.exit_duration_mins)

    def should_stop(self) -> bool:
        """True on every rank when any rank got a signal or ran out of time (every rank must call it at
        the same step). A signal is named as the reason before the time limit."""
        self.reinstall()
        flag = (1 if self.received else 0, int(self.time_is_up()))
        if torch.distributed.is_initialized():
            flag = collectives.all_reduce_values(list(flag), op=torch.distributed.ReduceOp.MAX, dtype=torch.int32,
                                                 what="the stop flags")
        signalled, out_of_time = flag
        if signalled and self.received is None:
            self.received = signal.SIGTERM  # another rank was signalled: stop as if this one had been
        self.out_of_time = bool(out_of_time) and not signalled
        return bool(signalled or out_of_time)

    def restore(self) -> None:
        """Put back the handlers that were installed before this one."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
