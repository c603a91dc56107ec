"""Patching: which tokens form each patch of the LST global model (docs/method.md §2-3).

- config.py      PatchingConfig (strategy, patch size, silence mode, cap, marker folding, paper/causal
                 boundaries, curriculum)
- strategies.py  compute_patches over the C++ kernel megatron_lst._patching; the metadata schema
- alignment.py   per-token segment metadata from word/silence alignment spans
- ids.py         encoder and decoder (one-patch lag) patch ids from patch lengths
- masks.py       encoder and decoder cross-attention masks
- pooling.py     max-pooling of token states into patch slots
- reference.py   pure-numpy reference of every strategy (tests and bench only)
"""

from megatron_lst.patching.alignment import segment_metadata_from_spans
from megatron_lst.patching.config import PATCH_BOUNDARIES, SILENCE_MODES, STRATEGIES, PatchingConfig
from megatron_lst.patching.ids import decoder_patch_ids_from_lengths, patch_ids_from_lengths
from megatron_lst.patching.masks import decoder_cross_attention_mask, encoder_cross_attention_mask
from megatron_lst.patching.pooling import max_pool_patches
from megatron_lst.patching.strategies import PatchBoundaries, aligned_probability, choose_aligned, compute_patches

__all__ = [
    "PATCH_BOUNDARIES",
    "PatchBoundaries",
    "PatchingConfig",
    "SILENCE_MODES",
    "STRATEGIES",
    "aligned_probability",
    "choose_aligned",
    "compute_patches",
    "decoder_cross_attention_mask",
    "decoder_patch_ids_from_lengths",
    "encoder_cross_attention_mask",
    "max_pool_patches",
    "patch_ids_from_lengths",
    "segment_metadata_from_spans",
]
