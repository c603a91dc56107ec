"""Which samples each data-parallel rank reads at each step: a pure function of consumed samples.

Step ``s`` reads the global sample indices ``[s * G, (s + 1) * G)`` (``G`` the global batch
size), cut into ``G / micro`` micro-batches; micro-batch ``m`` of data-parallel rank ``r`` is the
step's micro-batch ``m * dp + r``. Without bucketing these are consecutive: rank ``r`` reads
``c + m * micro * dp + r * micro + [0, micro)`` with ``c`` the samples consumed before the step.
With bucketing (``data/bucketing.py``) the samples of a window of consecutive steps are
regrouped into micro-batches of similar token counts, which are dealt to the window's steps: a
sample then trains at some step of its own window, fixed by (seed, micro-batch size, global batch
size, window), and the samples of a step do not depend on the data-parallel size.

Every sample is yielded as a ``SampleKey`` (its global index and the optimizer step that trains
it; validation uses the step at which it runs), so per-sample choices made in the DataLoader
workers (the curriculum's patching draw) depend on nothing but (seed, step, sample index): not
on the micro-batch size, the number of workers, the data-parallel size or the micro-batches
that ran before. Because the order depends on nothing but ``consumed_samples``, a resumed run
reads exactly what the uninterrupted one would have, and the checkpoint only stores that number.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from megatron_lst.data.bucketing import bucketed_microbatches, sample_token_counts
from megatron_lst.training.arguments import micro_batches_per_step


class SampleKey(NamedTuple):
    """One sample to read: its global index in the dataset and the optimizer step it serves."""

    index: int
    step: int


@dataclass(frozen=True)
class SamplingOptions:
    """How a task wants its samples delivered (``TrainingTask.sampling``; default: neither).

    attach_keys: items carry ``sample_index`` and ``step`` for the collate (LST patches there).
    bucket_window: > 0 groups the samples of that many consecutive global batches into
        micro-batches of similar token counts (``data/bucketing.py``); 0 keeps index order.
    seed: keys the shuffle of the bucketed micro-batches.
    """

    attach_keys: bool = False
    bucket_window: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.bucket_window < 0:
            raise ValueError(f"bucket_window must be >= 0, got {self.bucket_window}")


class PretrainingBatchSampler:
    """Yields this rank's micro-batches as lists of ``SampleKey``, starting after ``consumed_samples``.

    ``step`` (validation) keys every sample with that step instead of the step that reads it;
    ``token_counts`` (sample indices -> token counts) is required when ``bucket_window > 0``.
    Only whole global batches are read: trailing samples short of one are never yielded.
    """

    def __init__(
        self,
        total_samples: int,
        consumed_samples: int,
        micro_batch_size: int,
        data_parallel_rank: int,
        data_parallel_size: int,
        global_batch_size: int,
        *,
        step: Optional[int] = None,
        bucket_window: int = 0,
        seed: int = 0,
        token_counts: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    ):
        if total_samples <= 0:
            raise ValueError(f"no samples to train on (total_samples={total_samples})")
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(f"data-parallel rank {data_parallel_rank} not in [0, {data_parallel_size})")
        micro_batches_per_step(global_batch_size, micro_batch_size, data_parallel_size)
        if consumed_samples % global_batch_size:
            raise ValueError(f"consumed samples {consumed_samples} is not a whole number of global batches of "
                             f"{global_batch_size}: steps would not line up with the data order")
        if bucket_window and token_counts is None:
            raise ValueError("bucketing needs token_counts (sample indices -> token counts)")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size
        self.global_batch_size = global_batch_size
        self.fixed_step = step
        self.bucket_window = bucket_window
        self.seed = seed
        self.token_counts = token_counts
        self.num_steps = total_samples // global_batch_size
        self._window: tuple[int, np.ndarray] = (-1, np.empty((0, micro_batch_size), dtype=np.int64))

    def step_microbatches(self, step: int) -> np.ndarray:
        """All micro-batches of ``step`` (every DP rank's): [G / micro, micro] global sample indices."""
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} is outside the {self.num_steps} steps of {self.total_samples} samples")
        per_step = self.global_batch_size // self.micro_batch_size
        if not self.bucket_window:
            first = step * self.global_batch_size
            return np.arange(first, first + self.global_batch_size, dtype=np.int64).reshape(per_step, -1)
        window_id, offset = divmod(step, self.bucket_window)
        if self._window[0] != window_id:
            first_step = window_id * self.bucket_window
            steps = min(self.bucket_window, self.num_steps - first_step)
            first, count = first_step * self.global_batch_size, steps * self.global_batch_size
            counts = np.asarray(self.token_counts(np.arange(first, first + count, dtype=np.int64)))
            if counts.shape != (count,):
                raise ValueError(f"token_counts returned shape {counts.shape} for {count} samples")
            self._window = (window_id, bucketed_microbatches(first, counts, self.micro_batch_size, self.seed,
                                                             window_id))
        return self._window[1][offset * per_step:(offset + 1) * per_step]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for step in range(self.consumed_samples // self.global_batch_size, self.num_steps):
            key_step = step if self.fixed_step is None else self.fixed_step
            microbatches = self.step_microbatches(step)
            for micro in microbatches[self.data_parallel_rank::self.data_parallel_size]:
                yield [SampleKey(int(index), key_step) for index in micro]

    def __len__(self) -> int:
        per_rank = self.global_batch_size // (self.micro_batch_size * self.data_parallel_size)
        return max(0, self.num_steps - self.consumed_samples // self.global_batch_size) * per_rank


class KeyedDataset(Dataset):
    """Reads a dataset by ``SampleKey``; with ``attach_keys`` the item also carries the key.

    The key's fields go into the item as ``sample_index`` and ``step`` so that a collate running in
    a DataLoader worker can make per-sample choices keyed on them.
    """

    def __init__(self, dataset: Dataset, attach_keys: bool = False):
        self.dataset = dataset
        self.attach_keys = attach_keys

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> dict:
        item = self.dataset[key.index]
        if not self.attach_keys:
            return item
        return {**item, "sample_index": key.index, "step": key.step}


def stack_collate(samples: list[dict]) -> dict:
    """Stack per-sample dicts of arrays/tensors into batch tensors."""
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = torch.as_tensor(np.stack(values))
    return batch


def build_data_iterator(
    dataset: Dataset,
    consumed_samples: int,
    micro_batch_size: int,
    data_parallel_rank: int,
    data_parallel_size: int,
    global_batch_size: int,
    num_workers: int = 0,
    collate_fn: Optional[Callable] = None,
    sampling: Optional[SamplingOptions] = None,
    step: Optional[int] = None,
) -> Iterator[dict]:
    """A DataLoader over ``dataset`` in the order fixed by ``PretrainingBatchSampler``.

    ``step`` keys every sample with that step (validation: the step at which it runs); otherwise
    each sample is keyed with the step that trains it.
    """
    sampling = sampling or SamplingOptions()
    sampler = PretrainingBatchSampler(
        len(dataset), consumed_samples, micro_batch_size, data_parallel_rank, data_parallel_size, global_batch_size,
        step=step, bucket_window=sampling.bucket_window, seed=sampling.seed,
        token_counts=partial(sample_token_counts, dataset) if sampling.bucket_window else None,
    )
    loader = DataLoader(
        KeyedDataset(dataset, attach_keys=sampling.attach_keys),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn or stack_collate,
        persistent_workers=num_workers > 0,
    )
    return iter(loader)
