"""The data order is a pure function of consumed samples: what exact resume relies on."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_lst.data.bucketing import bucketed_microbatches, padding_fraction
from megatron_lst.training.sampler import KeyedDataset, PretrainingBatchSampler, SampleKey


def indices(batches) -> list[list[int]]:
    return [[key.index for key in batch] for batch in batches]


def synthetic_counts(total: int, seed: int = 0) -> np.ndarray:
    """Token counts like the demo blend: a third long speech-text rows, the rest short text rows."""
    rng = np.random.default_rng(seed)
    speech = rng.random(total) < 0.33
    return np.where(speech, rng.integers(600, 1029, total), rng.integers(200, 258, total))


def bucketed(total: int, consumed: int, micro: int, rank: int, dp: int, global_batch: int, window: int,
             counts: np.ndarray, **kwargs) -> PretrainingBatchSampler:
    return PretrainingBatchSampler(total, consumed, micro, rank, dp, global_batch, bucket_window=window, seed=3,
                                   token_counts=lambda idx: counts[idx], **kwargs)


def test_ranks_split_each_micro_batch_stride_without_overlap():
    rank0 = list(PretrainingBatchSampler(16, 0, 2, 0, 2, 4))
    rank1 = list(PretrainingBatchSampler(16, 0, 2, 1, 2, 4))
    assert indices(rank0) == [[0, 1], [4, 5], [8, 9], [12, 13]]
    assert indices(rank1) == [[2, 3], [6, 7], [10, 11], [14, 15]]
    assert [[key.step for key in batch] for batch in rank1] == [[0, 0], [1, 1], [2, 2], [3, 3]]


def test_every_sample_is_keyed_with_the_step_that_trains_it():
    batches = list(PretrainingBatchSampler(24, 0, 2, 0, 1, 8))
    assert len(batches) == 12
    for batch in batches:
        for key in batch:
            assert key.step == key.index // 8


def test_resume_from_consumed_samples_continues_the_same_order():
    straight = list(PretrainingBatchSampler(40, 0, 4, 0, 1, 4))
    resumed = list(PretrainingBatchSampler(40, 12, 4, 0, 1, 4))
    assert resumed == straight[3:]
    assert len(PretrainingBatchSampler(40, 12, 4, 0, 1, 4)) == 7


def test_only_whole_global_batches_are_read_and_misaligned_resume_is_refused():
    sampler = PretrainingBatchSampler(21, 0, 2, 0, 1, 4)
    assert len(sampler) == len(list(sampler)) == 10  # 5 steps; the last sample is never read
    with pytest.raises(ValueError, match="whole number of global batches"):
        PretrainingBatchSampler(40, 6, 2, 0, 1, 4)
    with pytest.raises(ValueError, match="is not divisible by --micro-batch-size x data-parallel size"):
        PretrainingBatchSampler(40, 0, 3, 0, 1, 4)
    with pytest.raises(ValueError, match="token_counts"):
        PretrainingBatchSampler(40, 0, 2, 0, 1, 4, bucket_window=2)


def test_validation_keys_every_sample_with_the_given_step():
    batches = list(PretrainingBatchSampler(16, 0, 4, 0, 1, 8, step=37))
    assert indices(batches) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert {key.step for batch in batches for key in batch} == {37}


@pytest.mark.parametrize("window", [1, 3, 4])
def test_bucketing_reads_each_sample_once_with_steps_fixed_whatever_the_dp_size(window):
    """Samples move between the steps of their window only; a step's samples do not depend on DP."""
    total, micro, global_batch = 8 * 11, 2, 8
    counts = synthetic_counts(total)
    layouts = {}
    for dp in (1, 2, 4):
        per_rank = [list(bucketed(total, 0, micro, rank, dp, global_batch, window, counts)) for rank in range(dp)]
        steps: dict[int, list[int]] = {}
        for batches in per_rank:
            assert len(batches) == 11 * global_batch // (micro * dp)
            for batch in batches:
                assert len({key.step for key in batch}) == 1
                steps.setdefault(batch[0].step, []).extend(key.index for key in batch)
        assert sorted(steps) == list(range(11))
        assert sorted(i for read in steps.values() for i in read) == list(range(total))  # none dropped or repeated
        for step, read in steps.items():
            assert len(read) == global_batch
            first_step = step // window * window  # the window's samples stay in the window
            assert all(first_step * global_batch <= i < (first_step + window) * global_batch for i in read)
        layouts[dp] = {step: sorted(read) for step, read in steps.items()}
    assert layouts[1] == layouts[2] == layouts[4]
    if window == 1:  # one global batch per window: a step reads exactly its own global batch
        assert all(read == list(range(s * global_batch, (s + 1) * global_batch)) for s, read in layouts[1].items())


def test_bucketing_groups_similar_lengths_into_micro_batches():
    total, micro, global_batch = 8 * 64, 4, 8
    counts = synthetic_counts(total)
    plain = [counts[i] for i in indices(PretrainingBatchSampler(total, 0, micro, 0, 1, global_batch))]
    grouped = [counts[i] for i in indices(bucketed(total, 0, micro, 0, 1, global_batch, 16, counts))]
    assert padding_fraction(plain) > 0.3
    assert padding_fraction(grouped) < 0.05
    # the micro-batches of a window are dealt to its steps in shuffled order, not shortest first
    maxima = [int(c.max()) for c in grouped[:32]]
    assert maxima != sorted(maxima)


@pytest.mark.parametrize("resume_step", [5, 6, 8, 13])
def test_bucketed_resume_inside_a_window_reads_what_the_straight_run_reads(resume_step):
    total, micro, global_batch, window = 8 * 20, 2, 8, 4
    counts = synthetic_counts(total, seed=5)
    for dp in (1, 2):
        for rank in range(dp):
            straight = list(bucketed(total, 0, micro, rank, dp, global_batch, window, counts))
            resumed = list(bucketed(total, resume_step * global_batch, micro, rank, dp, global_batch, window, counts))
            per_step = global_batch // (micro * dp)
            assert resumed == straight[resume_step * per_step:]


def test_bucketed_order_depends_on_seed_and_window_only():
    counts = synthetic_counts(64, seed=1)
    first = bucketed_microbatches(64, counts, 4, seed=3, window_id=2)
    assert np.array_equal(first, bucketed_microbatches(64, counts, 4, seed=3, window_id=2))
    assert not np.array_equal(first, bucketed_microbatches(64, counts, 4, seed=4, window_id=2))
    assert sorted(first.reshape(-1).tolist()) == list(range(64, 128))
    with pytest.raises(ValueError, match="whole number of micro-batches"):
        bucketed_microbatches(0, counts[:10], 4, seed=3, window_id=0)


def test_keyed_dataset_attaches_the_key_only_when_asked():
    data = [{"tokens": np.arange(i + 1)} for i in range(4)]
    assert KeyedDataset(data)[SampleKey(2, 5)].keys() == {"tokens"}
    item = KeyedDataset(data, attach_keys=True)[SampleKey(2, 5)]
    assert item["sample_index"] == 2 and item["step"] == 5 and len(item["tokens"]) == 3
