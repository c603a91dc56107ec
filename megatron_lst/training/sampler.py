"""Which samples each data-parallel rank reads at each step: a pure function of consumed samples.

Step ``k`` of a run reads global sample indices ``[c, c + global_batch)`` with ``c`` the samples
consumed before it; micro-batch ``m`` of data-parallel rank ``r`` takes
``c + m * micro * dp + r * micro + [0, micro)``. Because the order depends on nothing but
``consumed_samples``, a resumed run reads exactly what the uninterrupted one would have, and
the checkpoint only needs to store that one number (plus whatever the dataset keys on it).
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset


class PretrainingBatchSampler:
    """Yields this rank's micro-batch index lists, starting after ``consumed_samples``."""

    def __init__(
        self,
        total_samples: int,
        consumed_samples: int,
        micro_batch_size: int,
        data_parallel_rank: int,
        data_parallel_size: int,
    ):
        if total_samples <= 0:
            raise ValueError(f"no samples to train on (total_samples={total_samples})")
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(f"data-parallel rank {data_parallel_rank} not in [0, {data_parallel_size})")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size

    def __iter__(self) -> Iterator[list[int]]:
        stride = self.micro_batch_size * self.data_parallel_size
        start = self.consumed_samples
        while start + stride <= self.total_samples:
            first = start + self.data_parallel_rank * self.micro_batch_size
            yield list(range(first, first + self.micro_batch_size))
            start += stride

    def __len__(self) -> int:
        stride = self.micro_batch_size * self.data_parallel_size
        return max(0, (self.total_samples - self.consumed_samples) // stride)


def stack_collate(samples: list[dict]) -> dict:
    """Stack per-sample dicts of arrays/tensors into batch tensors."""
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = torch.as_tensor(__import__("numpy").stack(values))
    return batch


def build_data_iterator(
    dataset: Dataset,
    consumed_samples: int,
    micro_batch_size: int,
    data_parallel_rank: int,
    data_parallel_size: int,
    num_workers: int = 0,
    collate_fn: Optional[Callable] = None,
) -> Iterator[dict]:
    """A DataLoader over ``dataset`` in the order fixed by ``PretrainingBatchSampler``."""
    sampler = PretrainingBatchSampler(
        len(dataset), consumed_samples, micro_batch_size, data_parallel_rank, data_parallel_size
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn or stack_collate,
        persistent_workers=num_workers > 0,
    )
    return iter(loader)
