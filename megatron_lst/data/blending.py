"""Building the train/valid/test datasets from ``--data-path`` (weights and prefixes).

Uses megatron-core's ``BlendedMegatronDatasetBuilder``: one prefix gives a ``PackedLSTDataset``,
several give a ``BlendedDataset`` that draws from each in proportion to its weight, e.g.
``--data-path 0.33 speech_prefix 0.67 text_prefix`` (the paper's 33% interleaved, 67% text). The
training tasks read the weights as shares of tokens (``--blend-weights tokens``, the paper's
sense), megatron-core as shares of samples: ``build_lst_datasets`` converts.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import get_args

from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.utils import get_blend_from_list

from megatron_lst.choices import BlendWeighting
from megatron_lst.data.datasets import LSTDatasetConfig, PackedLSTDataset
from megatron_lst.data.token_shares import sample_weights_for_token_shares

logger = logging.getLogger(__name__)

BLEND_WEIGHTINGS = get_args(BlendWeighting)


def blend_from_data_path(data_path: list[str]):
    """``["0.33", "a", "0.67", "b"]`` or ``["a"]`` -> megatron-core's (prefixes, weights)."""
    return get_blend_from_list(data_path)


def build_lst_datasets(config: LSTDatasetConfig, train_valid_test_samples: list[int],
                       weight_by: BlendWeighting = "samples") -> list:
    """[train, valid, test] datasets (``None`` for a split of size 0), each indexable by sample.

    ``weight_by="tokens"``: the blend weights are shares of *tokens*. Each dataset's tokens per
    sample is measured on a one-sample probe build (which builds its first epoch's packing plan,
    cached like any other), and the datasets are then built with the sample weights that give
    those token shares (``token_shares.py``).
    """
    if weight_by not in BLEND_WEIGHTINGS:
        raise ValueError(f"blend weighting must be one of {BLEND_WEIGHTINGS}, got {weight_by!r}")
    prefixes, weights = config.blend
    if weight_by == "tokens" and weights is not None and len(prefixes) > 1:
        sample_weights = token_share_sample_weights(config)
        logger.info("blend weights %s are token shares; sample weights %s", weights,
                    [round(w, 4) for w in sample_weights])
        config = dataclasses.replace(config, blend=(prefixes, sample_weights))
    return _build(config, train_valid_test_samples)


def token_share_sample_weights(config: LSTDatasetConfig) -> list[float]:
    """The sample weights that make ``config.blend``'s weights the datasets' shares of tokens."""
    prefixes, weights = config.blend
    probe = _build(config, [len(prefixes), 0, 0])[0]  # at least one sample of each: every first epoch planned
    tokens = [dataset.mean_tokens_per_sample() for dataset in probe.datasets]
    return sample_weights_for_token_shares(weights, tokens)


def _build(config: LSTDatasetConfig, train_valid_test_samples: list[int]) -> list:
    builder = BlendedMegatronDatasetBuilder(
        PackedLSTDataset, train_valid_test_samples, lambda: True, config
    )
    return builder.build()
