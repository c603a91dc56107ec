"""One decoding step of a megatron-core ``TransformerLayer`` on its own weights, with a KV cache.

megatron-core's inference path (``inference_context``) is written around its CUDA kernels and
its own core attention; the project's layers use ``SDPACoreAttention`` and arbitrary masks, so
decoding re-runs the layer's pieces in the layer's own order instead: norms, ``linear_qkv`` /
``linear_q`` + ``linear_kv``, megatron's rotary function, ``linear_proj``, the MLP, and the
residual adds (dropout is 0 at inference, and the layers carry no bias). Attention itself reads
the cache (kv_cache.py). The teacher-forced equivalence tests (tests/inference/) pin these steps
to the full forward pass.

Shapes follow megatron: hidden states [S, B, H]; per-row rotary frequencies [S, B, 1, D].
"""

from __future__ import annotations

import math

import torch
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.transformer.transformer_layer import TransformerLayer

from megatron_lst.inference.kv_cache import KVCache, attend_cache


def _softmax_scale(attention: torch.nn.Module) -> float:
    scale = getattr(attention.core_attention, "softmax_scale", None)
    return scale if scale is not None else 1.0 / math.sqrt(attention.hidden_size_per_attention_head)


def _heads_first(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """[S, B, G, D] -> [B, heads, S, D], repeating key/value groups for GQA."""
    if tensor.shape[2] != heads:
        tensor = tensor.repeat_interleave(heads // tensor.shape[2], dim=2)
    return tensor.permute(1, 2, 0, 3)


def _merge_heads(context: torch.Tensor) -> torch.Tensor:
    """[B, H, S, D] -> [S, B, H * D]."""
    batch, heads, steps, dim = context.shape
    return context.permute(2, 0, 1, 3).reshape(steps, batch, heads * dim)


def self_attention_layer_step(layer: TransformerLayer, hidden: torch.Tensor, rotary_freqs: torch.Tensor,
                              cache: KVCache, valid: torch.Tensor | None = None) -> torch.Tensor:
    """A causal self-attention + MLP layer for one new position per row: [1, B, H] -> [1, B, H].

    ``valid`` [B, 1] marks the rows whose new position is real (None: all); the others still
    compute (their output is discarded) but leave no visible slot in the cache.
    """
    attention = layer.self_attention
    normed = layer.input_layernorm(hidden)
    query, key, value = attention.get_query_key_value_tensors(normed)
    query = apply_rotary_pos_emb(query, rotary_freqs, config=attention.config)
    key = apply_rotary_pos_emb(key, rotary_freqs, config=attention.config)
    heads = query.shape[2]
    cache.append(_heads_first(key, heads), _heads_first(value, heads), valid)
    context = attend_cache(_heads_first(query, heads), cache, _softmax_scale(attention))
    projected, _ = attention.linear_proj(_merge_heads(context))
    hidden = hidden + projected
    mlp_output, _ = layer.mlp(layer.pre_mlp_layernorm(hidden))
    return hidden + mlp_output


def cross_keys_values(layer: TransformerLayer, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [B, H, S, D] of a cross-attention layer for context states [S, B, C]."""
    attention = layer.cross_attention
    mixed, _ = attention.linear_kv(context)
    mixed = mixed.view(*mixed.shape[:2], attention.num_attention_heads_per_partition,
                       2 * attention.hidden_size_per_attention_head)
    key, value = mixed.chunk(2, dim=-1)
    return key.permute(1, 2, 0, 3), value.permute(1, 2, 0, 3)


def cross_attention_layer_step(layer: TransformerLayer, hidden: torch.Tensor, keys: torch.Tensor,
                               values: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """A cross-attention-only layer (local.py's cross layer): hidden + attend(norm(hidden), context).

    hidden [S, B, H]; keys/values [B, heads, K, D]; allowed [B, 1, S, K] or None. Rows whose
    queries see nothing get a zero attention output (they are discarded by the caller).
    """
    attention = layer.cross_attention
    query, _ = attention.linear_q(layer.pre_cross_attn_layernorm(hidden))
    query = query.view(*query.shape[:2], attention.num_attention_heads_per_partition,
                       attention.hidden_size_per_attention_head).permute(1, 2, 0, 3)
    context = torch.nn.functional.scaled_dot_product_attention(
        query, keys, values, attn_mask=allowed, scale=_softmax_scale(attention))
    if allowed is not None:
        context = torch.nan_to_num(context)
    projected, _ = attention.linear_proj(_merge_heads(context))
    return hidden + projected


def cached_cross_attention_layer_step(layer: TransformerLayer, hidden: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """A cross layer whose keys/values are the cache's valid slots (decoder -> global outputs)."""
    allowed = None if cache.all_valid else cache.valid[:, None, None, :]
    return cross_attention_layer_step(layer, hidden, cache.keys, cache.values, allowed)
