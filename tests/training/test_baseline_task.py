"""The baseline on packed interleaved samples: shifted labels, masks, block-causal documents."""

from __future__ import annotations

import numpy as np
import torch

from megatron_lst.models.baseline import build_baseline_model
from megatron_lst.models.config import model_flavour
from megatron_lst.models.specs import transformer_config
from megatron_lst.training.baseline_task import packed_to_gpt_batch

PAD = 7


def packed_sample(tokens: list[int], documents: list[int]) -> dict:
    count = len(tokens)
    return {"tokens": np.array(tokens, np.int64), "is_speech": np.array([t >= 50 for t in tokens]),
            "segment_ids": np.full(count, -1, np.int32), "is_silence": np.zeros(count, bool),
            "document_ids": np.array(documents, np.int32), "num_positions": np.int64(count)}


def test_packed_batch_shifts_labels_and_masks_padding_and_documents():
    batch = packed_to_gpt_batch([packed_sample([1, 2, 60, 3, 1, 4], [0, 0, 0, 0, 1, 1])], pad_id=PAD, length=8)
    assert batch["tokens"].tolist() == [[1, 2, 60, 3, 1, 4, PAD]]
    assert batch["labels"].tolist() == [[2, 60, 3, 1, 4, 0, 0]]
    assert batch["loss_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0]]
    assert batch["is_speech"].tolist() == [[False, True, False, False, False, False, False]]
    forbidden = batch["attention_mask"][0, 0]
    assert not forbidden[5, 4] and forbidden[5, 3] and forbidden[3, 5]  # document 1 never sees document 0


def test_second_document_is_independent_of_the_first(single_rank_parallel_state):
    shape = model_flavour("debug")
    model = build_baseline_model(shape, transformer_config(shape), vocab_size=100, max_sequence_length=16, use_te=False)
    model.eval()
    documents = [0] * 5 + [1] * 5
    first = packed_to_gpt_batch([packed_sample([1, 11, 12, 13, 2, 1, 21, 22, 23, 2], documents)], PAD, 10)
    second = packed_to_gpt_batch([packed_sample([1, 31, 32, 33, 2, 1, 21, 22, 23, 2], documents)], PAD, 10)
    with torch.no_grad():
        logits = [model(b["tokens"], b["position_ids"], b["attention_mask"]) for b in (first, second)]
    assert not torch.allclose(logits[0][:, :5], logits[1][:, :5])
    torch.testing.assert_close(logits[0][:, 5:], logits[1][:, 5:], rtol=0, atol=1e-6)
