"""A bucketed run resumes only with the batch sizes it was trained with (training/loop.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from megatron_lst.training.loop import batch_layout, check_resumed_batch_layout
from megatron_lst.training.sampler import SamplingOptions

SAVED = {"micro_batch_size": 4, "global_batch_size": 8}


def data(micro: int, global_: int):
    return SimpleNamespace(micro_batch_size=micro, global_batch_size=global_)


def test_the_same_batch_sizes_resume():
    assert batch_layout(data(4, 8)) == SAVED
    check_resumed_batch_layout(SAVED, data(4, 8), SamplingOptions(attach_keys=True, bucket_window=16))


@pytest.mark.parametrize("micro,global_", [(2, 8), (4, 16)])
def test_other_batch_sizes_are_refused_when_bucketing(micro, global_):
    with pytest.raises(ValueError, match="--micro-batch-size 4 and --global-batch-size 8"):
        check_resumed_batch_layout(SAVED, data(micro, global_), SamplingOptions(attach_keys=True, bucket_window=16))


def test_unbucketed_runs_and_old_checkpoints_are_not_checked():
    check_resumed_batch_layout(SAVED, data(2, 16), SamplingOptions())  # order = consumed samples only
    check_resumed_batch_layout(None, data(2, 16), SamplingOptions(attach_keys=True, bucket_window=16))
    check_resumed_batch_layout(SAVED, data(2, 16), None)
