"""The data order is a pure function of consumed samples: what exact resume relies on."""

from __future__ import annotations

from megatron_lst.training.sampler import PretrainingBatchSampler


def test_ranks_split_each_micro_batch_stride_without_overlap():
    rank0 = list(PretrainingBatchSampler(16, 0, 2, 0, 2))
    rank1 = list(PretrainingBatchSampler(16, 0, 2, 1, 2))
    assert rank0 == [[0, 1], [4, 5], [8, 9], [12, 13]]
    assert rank1 == [[2, 3], [6, 7], [10, 11], [14, 15]]


def test_resume_from_consumed_samples_continues_the_same_order():
    straight = list(PretrainingBatchSampler(40, 0, 4, 0, 1))
    resumed = list(PretrainingBatchSampler(40, 12, 4, 0, 1))
    assert resumed == straight[3:]
    assert len(PretrainingBatchSampler(40, 12, 4, 0, 1)) == 7
