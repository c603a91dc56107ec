"""Length bucketing: micro-batches of samples with similar token counts, in a resumable order.

An LST micro-batch is right-padded to its longest row. A packed speech-text sample holds 1-4
tokens per global position and a text sample one, so a micro-batch that mixes them pads its text
rows with hundreds of PAD tokens (about half the tokens of the demo blend when rows are batched
in sample order). Here the samples of a *window* of consecutive global batches are sorted by
token count, cut into micro-batches in that order, and the micro-batches are shuffled (keyed by
seed and window) and dealt to the window's steps. Only the few micro-batches that straddle a jump
in length (text -> speech) still mix lengths, so the padding falls to a few percent.

Everything is a pure function of (seed, micro-batch size, global batch size, window, the
dataset's per-sample token counts), with windows aligned to multiples of the window size: a run
resumed at any step recomputes its window from scratch and reads exactly the micro-batches the
uninterrupted run read. The samples of a step do not depend on the data-parallel size (only the
dealing of its micro-batches to ranks does), and no sample is dropped or repeated.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# a tag mixed into the window shuffle's seed, so it never shares a stream with the datasets' RNGs
_SHUFFLE_TAG = 0x6275636B  # "buck"


def _blend_indices(dataset) -> tuple[np.ndarray, np.ndarray]:
    """A megatron ``BlendedDataset``'s (dataset_index, dataset_sample_index), loading deferred ones."""
    if dataset.dataset_index is None:  # defer_npy_index_mmap: loaded on first access, as __getitem__ does
        dataset.dataset_index = np.load(dataset.path_to_dataset_index, allow_pickle=True, mmap_mode="r")
        dataset.dataset_sample_index = np.load(dataset.path_to_dataset_sample_index, allow_pickle=True,
                                               mmap_mode="r")
    return dataset.dataset_index, dataset.dataset_sample_index


def _is_gpt_dataset(dataset) -> bool:
    try:
        from megatron.core.datasets.gpt_dataset import GPTDataset
    except ImportError:  # pragma: no cover - megatron-core is a hard dependency of training
        return False
    return isinstance(dataset, GPTDataset)


def sample_token_counts(dataset, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Tokens of each sample ``indices`` of ``dataset``, as cheaply as the dataset allows.

    - megatron ``BlendedDataset``: each index is mapped to its dataset and sample through the
      blend's index arrays, then counted there;
    - datasets with ``num_tokens(idx)`` (``PackedLSTDataset``, from its packing plan) ask it;
    - megatron ``GPTDataset``: every sample holds ``sequence_length + 1`` tokens;
    - anything else: ``len(dataset[idx]["tokens"])``, which reads the sample (slow, but correct).
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size == 0:
        return np.zeros(0, dtype=np.int64)
    if hasattr(dataset, "dataset_index") and hasattr(dataset, "datasets"):
        which, local = _blend_indices(dataset)
        which, local = np.asarray(which[indices]), np.asarray(local[indices], dtype=np.int64)
        counts = np.empty(indices.size, dtype=np.int64)
        for dataset_id in np.unique(which):
            rows = which == dataset_id
            counts[rows] = sample_token_counts(dataset.datasets[int(dataset_id)], local[rows])
        return counts
    num_tokens = getattr(dataset, "num_tokens", None)
    if callable(num_tokens):
        return np.fromiter((num_tokens(int(i)) for i in indices), dtype=np.int64, count=indices.size)
    if _is_gpt_dataset(dataset):
        return np.full(indices.size, dataset.config.sequence_length + 1, dtype=np.int64)
    return np.fromiter((len(dataset[int(i)]["tokens"]) for i in indices), dtype=np.int64, count=indices.size)


def bucketed_microbatches(first_sample: int, token_counts: np.ndarray, micro_batch_size: int,
                          seed: int, window_id: int) -> np.ndarray:
    """The micro-batches of one window: [num_micro_batches, micro_batch_size] global sample indices.

    ``token_counts[i]`` is the token count of sample ``first_sample + i``. Samples are sorted by
    count (ties by index, so the order is total), cut into micro-batches in that order, and the
    micro-batches are permuted by an RNG keyed on (seed, window_id): each step of the window then
    gets micro-batches of all lengths, not the window's shortest first and its longest last.
    Rows inside a micro-batch are in index order.
    """
    counts = np.asarray(token_counts, dtype=np.int64)
    if counts.size % micro_batch_size:
        raise ValueError(f"a window of {counts.size} samples is not a whole number of micro-batches of "
                         f"{micro_batch_size}")
    order = np.argsort(counts, kind="stable")  # stable: equal counts keep index order
    micro = np.sort((first_sample + order).reshape(-1, micro_batch_size), axis=1)
    shuffle = np.random.default_rng([_SHUFFLE_TAG, seed, window_id]).permutation(len(micro))
    return micro[shuffle]


def padding_fraction(token_counts_per_microbatch: Sequence[np.ndarray]) -> float:
    """PAD tokens / all tokens when each micro-batch is right-padded to its longest row."""
    padded = real = 0
    for counts in token_counts_per_microbatch:
        counts = np.asarray(counts, dtype=np.int64)
        if counts.size:
            padded += int(counts.max()) * counts.size
            real += int(counts.sum())
    return 1.0 - real / padded if padded else 0.0
