"""The step's reported metrics from reduced [sum, count] pairs (training/loop.py counted_means)."""

from __future__ import annotations

import pytest

from megatron_lst.training.loop import counted_means


def test_means_divide_each_sum_by_its_count():
    means = counted_means(["lm loss", "speech loss", "aligned rows"], [[12.0, 4.0], [9.0, 2.0], [1.0, 3.0]])
    assert means == {"lm loss": 3.0, "speech loss": 4.5, "aligned rows": pytest.approx(1 / 3)}


def test_a_metric_nothing_counted_is_left_out_not_reported_as_zero():
    """A step whose rows hold no speech has no speech loss and no share of aligned speech rows."""
    means = counted_means(["lm loss", "speech loss", "aligned rows", "text loss"],
                          [[8.0, 2.0], [0.0, 0.0], [0.0, 0.0], [8.0, 2.0]])
    assert means == {"lm loss": 4.0, "text loss": 4.0}


def test_names_and_sums_must_pair_up():
    with pytest.raises(ValueError):
        counted_means(["lm loss", "speech loss"], [[1.0, 1.0]])
