"""Data-parallel scoring under torchrun: ranks split the items, results come back in item order.

Each rank holds the whole model (TP = PP = 1, model_scorer.load_model) and scores items
``rank, rank + world, ...``; items are independent, so gathering the per-item records and putting
them back in item order gives exactly what one process gives. Without an initialised process
group (a plain ``python tools/evaluate.py``) there is one rank and nothing is gathered.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator, Optional

import torch

from megatron_lst.training import collectives


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_in_order(records: dict[int, Optional[dict]], count: int) -> list[Optional[dict]]:
    """``records`` {item index: record (None: skipped)} of this rank -> every item's record in
    item order, on every rank (all_gather_object: the records are small python objects)."""
    rank, world = rank_and_world()
    if world > 1:
        merged: dict[int, Optional[dict]] = {}
        for part in collectives.all_gather_object(records):
            merged.update(part)
        records = merged
    missing = [index for index in range(count) if index not in records]
    if missing:
        raise RuntimeError(f"no rank scored item {missing[0]} ({len(missing)} items missing)")
    return [records[index] for index in range(count)]


class _Silent:
    n = 0

    def update(self, count: int = 1) -> None:
        self.n += count


@contextlib.contextmanager
def progress_bar(total: int, label: str, enabled: bool, world: int = 1) -> Iterator:
    """A tqdm bar over this rank's ``total`` items on stderr when ``enabled`` (rank 0 of an
    interactive run), else a counter that prints nothing."""
    if not enabled:
        yield _Silent()
        return
    from tqdm import tqdm

    desc = label if world == 1 else f"{label} (rank 0 of {world})"
    with tqdm(total=total, desc=desc, unit="item", file=sys.stderr, leave=False) as bar:
        yield bar
