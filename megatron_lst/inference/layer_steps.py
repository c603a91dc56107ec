"""One decoding step of a megatron-core ``TransformerLayer`` on its own weights, with a KV cache.

megatron-core's inference path (``inference_context``) is written around its CUDA kernels and
its own core attention; the project's layers use ``SDPACoreAttention`` and arbitrary masks, so
decoding re-runs the layer's pieces in the layer's own order instead: norms, ``linear_qkv`` /
``linear_q`` + ``linear_kv``, megatron's rotary function, ``linear_proj``, the MLP, and the
residual adds (dropout is 0 at inference, and the layers carry no bias). Attention itself reads
the cache (kv_cache.py). The teacher-forced equivalence tests (tests/inference/) pin these steps
to the full forward pass.

Shapes follow megatron: hidden states [S, B, H]; per-row rotary frequencies [S, B, 1, D].

At TP = 1 the plain parallel linears and the MLP run as ``F.linear`` on the modules' own weights:
decoding is a long chain of tiny matrix products, and megatron's autograd wrappers and process-group
look-ups cost more than the products themselves. Any other module (transformer-engine's fused
norm+linear, TP > 1) is called as it is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.mlp import MLP
from megatron.core.transformer.transformer_layer import TransformerLayer

from megatron_lst.inference.kv_cache import KVCache, attend_cache


def _is_plain_linear(module: torch.nn.Module) -> bool:
    return type(module) in (ColumnParallelLinear, RowParallelLinear) and \
        parallel_state.get_tensor_model_parallel_world_size() == 1


def linear(module: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """A megatron linear's output (its bias added, as the bias-dropout-add would)."""
    if _is_plain_linear(module):
        return F.linear(inputs, module.weight, module.bias)
    output, bias = module(inputs)
    return output if bias is None else output + bias


def mlp_forward(mlp: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """megatron's MLP (gated or not, no fused activation) on its own weights."""
    config = mlp.config
    plain = (type(mlp) is MLP and _is_plain_linear(mlp.linear_fc1) and _is_plain_linear(mlp.linear_fc2)
             and not config.use_te_activation_func and not config.bias_activation_fusion
             and config.activation_func_clamp_value is None)
    if not plain:
        output, bias = mlp(inputs)
        return output if bias is None else output + bias
    intermediate = linear(mlp.linear_fc1, inputs)
    if config.gated_linear_unit:
        gate, value = torch.chunk(intermediate, 2, dim=-1)
        intermediate = config.activation_func(gate) * (value + config.glu_linear_offset)
    else:
        intermediate = mlp.activation_func(intermediate)
    return linear(mlp.linear_fc2, intermediate)


def query_key_value(attention: torch.nn.Module, normed: torch.Tensor):
    """``SelfAttention.get_query_key_value_tensors`` with a plain linear_qkv at TP = 1."""
    if not _is_plain_linear(attention.linear_qkv):
        return attention.get_query_key_value_tensors(normed)
    groups = attention.num_query_groups_per_partition
    head_dim = attention.hidden_size_per_attention_head
    per_group = attention.num_attention_heads_per_partition // groups
    mixed = linear(attention.linear_qkv, normed).view(*normed.shape[:2], groups, (per_group + 2) * head_dim)
    query, key, value = torch.split(mixed, [per_group * head_dim, head_dim, head_dim], dim=3)
    query = query.reshape(*query.shape[:2], -1, head_dim)
    if attention.q_layernorm is not None:
        query = attention.q_layernorm(query)
    if attention.k_layernorm is not None:
        key = attention.k_layernorm(key)
    return query, key, value


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


def _rotated_query_key_value(layer: TransformerLayer, hidden: torch.Tensor, rotary_freqs: torch.Tensor):
    """The layer's query, key, value of ``hidden`` [S, B, H] (normed, projected), RoPE applied."""
    attention = layer.self_attention
    query, key, value = query_key_value(attention, layer.input_layernorm(hidden))
    query = apply_rotary_pos_emb(query, rotary_freqs, config=attention.config)
    key = apply_rotary_pos_emb(key, rotary_freqs, config=attention.config)
    return query, key, value


def self_attention_layer_step(layer: TransformerLayer, hidden: torch.Tensor, rotary_freqs: torch.Tensor,
                              cache: KVCache, valid: torch.Tensor | None = None) -> torch.Tensor:
    """A causal self-attention + MLP layer for one new position per row: [1, B, H] -> [1, B, H].

    ``valid`` [B, 1] marks the rows whose new position is real (None: all); the others still
    compute (their output is discarded) but leave no visible slot in the cache.
    """
    attention = layer.self_attention
    query, key, value = _rotated_query_key_value(layer, hidden, rotary_freqs)
    heads = query.shape[2]
    cache.append(_heads_first(key, heads), _heads_first(value, heads), valid)
    context = attend_cache(_heads_first(query, heads), cache, _softmax_scale(attention))
    hidden = hidden + linear(attention.linear_proj, _merge_heads(context))
    return hidden + mlp_forward(layer.mlp, layer.pre_mlp_layernorm(hidden))


def cross_keys_values(layer: TransformerLayer, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [B, H, S, D] of a cross-attention layer for context states [S, B, C]."""
    attention = layer.cross_attention
    mixed = linear(attention.linear_kv, context)
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
    query = linear(attention.linear_q, layer.pre_cross_attn_layernorm(hidden))
    query = query.view(*query.shape[:2], attention.num_attention_heads_per_partition,
                       attention.hidden_size_per_attention_head).permute(1, 2, 0, 3)
    context = torch.nn.functional.scaled_dot_product_attention(
        query, keys, values, attn_mask=allowed, scale=_softmax_scale(attention))
    if allowed is not None:
        context = torch.nan_to_num(context)
    return hidden + linear(attention.linear_proj, _merge_heads(context))


def cached_cross_attention_layer_step(layer: TransformerLayer, hidden: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """A cross layer whose keys/values are the cache's valid slots (decoder -> global outputs)."""
    allowed = None if cache.all_valid else cache.valid[:, None, None, :]
    return cross_attention_layer_step(layer, hidden, cache.keys, cache.values, allowed)


def chunk_attention_mask(cache: KVCache, steps: int, valid: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """[B, 1, S, L0 + S]: which of the cache's L0 visible slots and the chunk's own S slots each
    of the chunk's S queries may read: causal within the chunk, the cache's window counted in
    slots as ``KVCache`` keeps it (a query sees itself and the ``window - 1`` slots before it),
    and never an invalid slot (``valid`` [B, S] for the chunk's, the cache's own for the rest)."""
    cached = cache.length
    query = torch.arange(steps, device=device)[:, None]  # [S, 1]
    slot = torch.arange(cached + steps, device=device)[None] - cached  # chunk-relative slot index
    allowed = slot <= query  # causal (every cached slot lies before the chunk)
    if cache.window_size is not None:
        allowed = allowed & (query - slot < cache.window_size)
    batch = valid.shape[0] if valid is not None else (cache.valid.shape[0] if cached else 1)
    allowed = allowed[None].expand(batch, steps, cached + steps)
    parts = [cache.valid if cached else torch.ones(batch, 0, dtype=torch.bool, device=device),
             valid if valid is not None else torch.ones(batch, steps, dtype=torch.bool, device=device)]
    return (allowed & torch.cat(parts, dim=1)[:, None, :])[:, None]


def self_attention_chunk_step(layer: TransformerLayer, hidden: torch.Tensor, rotary_freqs: torch.Tensor,
                              cache: KVCache, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``self_attention_layer_step`` for S new positions per row at once: [S, B, H] -> [S, B, H].

    A prompt is read in one chunk instead of one token per step (prefill); rotary_freqs
    [S, B, 1, D]; ``valid`` [B, S] marks real positions (None: all), the rest leave invisible
    slots. The chunk's queries read the cache as it was plus the chunk's own keys (causally),
    then the chunk is appended, so a windowed cache keeps only what later steps can reach.
    """
    attention = layer.self_attention
    query, key, value = _rotated_query_key_value(layer, hidden, rotary_freqs)
    heads = query.shape[2]
    key, value = _heads_first(key, heads), _heads_first(value, heads)
    mask = chunk_attention_mask(cache, hidden.shape[0], valid, hidden.device)
    if cache.length:
        keys, values = torch.cat([cache.keys, key], dim=2), torch.cat([cache.values, value], dim=2)
    else:
        keys, values = key, value
    context = F.scaled_dot_product_attention(_heads_first(query, heads), keys, values, attn_mask=mask,
                                             scale=_softmax_scale(attention))
    cache.append(key, value, valid)
    hidden = hidden + linear(attention.linear_proj, _merge_heads(torch.nan_to_num(context)))
    return hidden + mlp_forward(layer.mlp, layer.pre_mlp_layernorm(hidden))
