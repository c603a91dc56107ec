"""Patch boundaries for a batch: the Python face of the C++ kernel (megatron_lst._patching).

Per-token metadata schema (shared with the data pipeline's interleaver). A sample is N tokens:

- ``tokens``: int64 joint-vocabulary ids (tokenizer.VocabLayout); every sample starts with BOS.
- ``is_speech``: bool, True exactly for speech-unit tokens.
- ``segment_ids``: int32, for speech units the id of their aligned segment (a word or a silence
  run), unique within the sample and non-decreasing along it; -1 for non-speech tokens.
- ``is_silence``: bool, True for speech units inside a silence segment.
- ``document_ids``: int32, index of the source document inside a packed sample; patches never
  cross documents.

A batch is [B, N] arrays. Padding: PAD tokens (is_speech False) are patched like text, one
length-1 patch each, so every row's lengths sum to N and a batch needs no lengths argument.

Training convention (docs/method.md §2): patch the N+1 tokens of a training sample (the N inputs plus
the last target, as Megatron GPT samples are drawn). The first patch is then BOS alone and the
lengths sum to N+1; ``ids.patch_ids_from_lengths(patch_lengths, N)`` and
``ids.decoder_patch_ids_from_lengths(patch_lengths, N)`` give the model's views of the N inputs.

Outputs are right-padded to the widest row (or ``max_num_patches``): lengths with 0, starts
with the row's total length, so ``starts[k + 1] == starts[k] + lengths[k]`` holds everywhere and
padded slots read as empty patches after the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch

from megatron_lst import _patching
from megatron_lst.patching.config import PatchingConfig
from megatron_lst.tokenizer import VocabLayout

ArrayLike = Union[np.ndarray, torch.Tensor]


@dataclass
class PatchBoundaries:
    """The kernel's answer for a batch (numpy arrays or torch tensors, as the input was).

    patch_lengths: [B, P] int64, right-padded with 0.
    patch_starts: [B, P] int64, first token of each patch; padded slots hold the row's total.
    num_patches: [B] int64, real patches per row.
    aligned: [B] bool, whether each row was patched aligned (else static).
    """

    patch_lengths: Any
    patch_starts: Any
    num_patches: Any
    aligned: Any


def _to_numpy(array: ArrayLike, dtype: type, name: str, shape: tuple, add_batch: bool = False) -> np.ndarray:
    """A contiguous numpy copy/view of ``array`` with the expected dtype and shape."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array, dtype=dtype)
    if add_batch:
        array = array[None]
    if array.shape != shape:
        raise ValueError(f"patching: {name} has shape {array.shape}, expected {shape} (as tokens)")
    return np.ascontiguousarray(array)


def aligned_probability(config: PatchingConfig, step: int) -> float:
    """Probability that a sequence is patched aligned at this optimizer step."""
    return _patching.aligned_probability(
        config.strategy_code, float(config.tau1), float(config.tau2), float(config.mixed_aligned_probability), int(step)
    )


def choose_aligned(config: PatchingConfig, step: int, sample_ids: ArrayLike) -> np.ndarray:
    """Which sequences are patched aligned: a hash of (seed, step, sample id) below P(step)."""
    if isinstance(sample_ids, torch.Tensor):
        sample_ids = sample_ids.detach().cpu().numpy()
    sample_ids = np.ascontiguousarray(sample_ids, dtype=np.int64)
    return _patching.choose_aligned_rows(
        sample_ids,
        config.strategy_code,
        float(config.tau1),
        float(config.tau2),
        float(config.mixed_aligned_probability),
        int(config.seed),
        int(step),
    )


def compute_patches(
    tokens: ArrayLike,
    is_speech: ArrayLike,
    config: PatchingConfig,
    layout: VocabLayout,
    *,
    segment_ids: Optional[ArrayLike] = None,
    is_silence: Optional[ArrayLike] = None,
    document_ids: Optional[ArrayLike] = None,
    step: int = 0,
    sample_ids: Optional[ArrayLike] = None,
    max_num_patches: Optional[int] = None,
) -> PatchBoundaries:
    """Patch a batch [B, N] (or one sample [N]) with the strategy of ``config``.

    segment_ids / is_silence are needed only when some row is patched aligned (static and
    post-tau2 curriculum runs may omit them); when given they are validated in every row.
    document_ids defaults to one document per row. ``step`` drives the curriculum; ``sample_ids``
    (default 0..B-1) key the per-sequence choice of mixed and curriculum, so pass the global
    sample indices to make the choice independent of batch layout and data-parallel rank.
    Raises ValueError, naming row and position, for input that breaks the schema.
    Torch input gives torch output on the input's device; CUDA tensors go through the CPU kernel
    (there is no GPU kernel yet).
    """
    as_torch = isinstance(tokens, torch.Tensor)
    device = tokens.device if as_torch else None
    single = len(tuple(tokens.shape)) == 1
    tokens_np = np.asarray(tokens.detach().cpu().numpy() if as_torch else tokens, dtype=np.int64)
    if single:
        tokens_np = tokens_np[None]
    if tokens_np.ndim != 2:
        raise ValueError(f"patching: tokens must be [B, N] or [N], got shape {tokens_np.shape}")
    shape = tokens_np.shape
    tokens_np = np.ascontiguousarray(tokens_np)
    is_speech_np = _to_numpy(is_speech, bool, "is_speech", shape, single)
    if is_silence is not None and segment_ids is None:
        raise ValueError("patching: is_silence was given without segment_ids")
    has_segments = segment_ids is not None
    segment_np = np.full(shape, -1, np.int32)
    silence_np = np.zeros(shape, bool)
    if has_segments:
        segment_np = _to_numpy(segment_ids, np.int32, "segment_ids", shape, single)
    if is_silence is not None:
        silence_np = _to_numpy(is_silence, bool, "is_silence", shape, single)
    documents_np = np.zeros(shape, np.int32)
    if document_ids is not None:
        documents_np = _to_numpy(document_ids, np.int32, "document_ids", shape, single)
    samples_np = np.arange(shape[0], dtype=np.int64)
    if sample_ids is not None:
        samples_np = _to_numpy(sample_ids, np.int64, "sample_ids", (shape[0],))
    patch_lengths, patch_starts, num_patches, aligned = _patching.patch_batch(
        tokens_np,
        is_speech_np,
        segment_np,
        silence_np,
        documents_np,
        samples_np,
        has_segments,
        layout.bos_id,
        layout.speech_marker_id,
        layout.unit_offset,
        layout.vocab_size,
        config.strategy_code,
        int(config.patch_size),
        config.silence_code,
        int(config.max_patch_length or 0),
        config.fold_code,
        float(config.tau1),
        float(config.tau2),
        float(config.mixed_aligned_probability),
        int(config.seed),
        int(step),
        -1 if max_num_patches is None else int(max_num_patches),
        config.patch_boundary == "causal",
    )
    outputs = [patch_lengths, patch_starts, num_patches, aligned]
    if single:
        outputs = [output[0] for output in outputs]
    if as_torch:
        outputs = [torch.from_numpy(np.asarray(output)).to(device) for output in outputs]
    return PatchBoundaries(*outputs)
