"""Resumable batch sampling and collation for the packed datasets.

Every dataset here maps a sample index to a fixed sample, so the whole data-loader state is the
number of samples consumed: save ``state_dict()`` in the checkpoint, pass it back on resume, and
the next batch is the one the uninterrupted run would have drawn.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


class ResumableBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Consecutive batches of sample indices starting at ``consumed_samples``.

    With data parallelism each rank takes its slice of the global batch (Megatron's convention).
    """

    def __init__(self, total_samples: int, micro_batch_size: int, consumed_samples: int = 0,
                 data_parallel_rank: int = 0, data_parallel_size: int = 1):
        if micro_batch_size < 1 or data_parallel_size < 1 or not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError("invalid batch size or data-parallel rank/size")
        self.total_samples = total_samples
        self.micro_batch_size = micro_batch_size
        self.consumed_samples = consumed_samples
        self.rank = data_parallel_rank
        self.world = data_parallel_size

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.micro_batch_size * self.world
        while self.consumed_samples + global_batch <= self.total_samples:
            first = self.consumed_samples + self.rank * self.micro_batch_size
            self.consumed_samples += global_batch
            yield list(range(first, first + self.micro_batch_size))

    def __len__(self) -> int:
        return (self.total_samples - self.consumed_samples) // (self.micro_batch_size * self.world)

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples}

    def load_state_dict(self, state: dict) -> None:
        self.consumed_samples = int(state["consumed_samples"])


def collate_packed(samples: list[dict], pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Stack samples, right-padding to ``pad_to`` tokens (default: the longest in the batch).

    Padding is ``pad_id`` with is_speech/is_silence False and segment/document id -1;
    ``num_tokens`` holds each sample's real length.
    """
    length = pad_to or max(len(sample["tokens"]) for sample in samples)
    batch = len(samples)
    fill = {"tokens": pad_id, "is_speech": False, "is_silence": False, "segment_ids": -1, "document_ids": -1}
    dtypes = {"tokens": np.int64, "is_speech": bool, "is_silence": bool, "segment_ids": np.int32,
              "document_ids": np.int32}
    out = {name: np.full((batch, length), fill[name], dtype=dtypes[name]) for name in fill}
    for row, sample in enumerate(samples):
        count = len(sample["tokens"])
        if count > length:
            raise ValueError(f"sample of {count} tokens does not fit pad_to={length}")
        for name in fill:
            out[name][row, :count] = sample[name]
    tensors = {name: torch.from_numpy(array) for name, array in out.items()}
    tensors["num_tokens"] = torch.tensor([len(sample["tokens"]) for sample in samples])
    tensors["num_positions"] = torch.tensor([int(sample["num_positions"]) for sample in samples])
    if "dataset_id" in samples[0]:
        tensors["dataset_id"] = torch.tensor([int(sample["dataset_id"]) for sample in samples])
    return tensors
