"""SIGTERM / SIGUSR1 (SLURM preemption, ``scancel``, ``timeout``): save, then exit 0.

The handler only records the signal; the loop checks it after each step, and every rank
agrees through an all-reduce so that all ranks save the same iteration together.
"""

from __future__ import annotations

import signal
from typing import Optional

import torch

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionHandler:
    def __init__(self, signals: tuple = HANDLED_SIGNALS):
        self.received: Optional[int] = None
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        self.received = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received else "no signal"

    def should_stop(self) -> bool:
        """True on every rank when any rank got a signal."""
        flag = torch.tensor([1 if self.received else 0], dtype=torch.int32)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and self.received is None:
            self.received = signal.SIGTERM
        return bool(flag.item())

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
