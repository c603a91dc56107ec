"""Building the train/valid/test datasets from ``--data-path`` (weights and prefixes).

Uses megatron-core's ``BlendedMegatronDatasetBuilder``: one prefix gives a ``PackedLSTDataset``,
several give a ``BlendedDataset`` that draws from each in proportion to its weight, e.g.
``--data-path 0.33 speech_prefix 0.67 text_prefix`` (the paper's 33% interleaved, 67% text).
"""

from __future__ import annotations

from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.utils import get_blend_from_list

from megatron_lst.data.datasets import LSTDatasetConfig, PackedLSTDataset


def blend_from_data_path(data_path: list[str]):
    """``["0.33", "a", "0.67", "b"]`` or ``["a"]`` -> megatron-core's (prefixes, weights)."""
    return get_blend_from_list(data_path)


def build_lst_datasets(config: LSTDatasetConfig, train_valid_test_samples: list[int]) -> list:
    """[train, valid, test] datasets (``None`` for a split of size 0), each indexable by sample."""
    builder = BlendedMegatronDatasetBuilder(
        PackedLSTDataset, train_valid_test_samples, lambda: True, config
    )
    return builder.build()
