"""Collation of packed samples into right-padded batches.

Which samples make a batch is ``training/sampler.py``'s job (a pure function of the samples
consumed, so a resumed run reads what the uninterrupted one would have); this module only stacks them.
"""

from __future__ import annotations

import numpy as np
import torch


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
