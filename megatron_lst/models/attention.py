"""Core attention on ``torch.nn.functional.scaled_dot_product_attention``.

megatron-core's own ``DotProductAttention`` allocates its score buffer on CUDA and builds its
causal mask on CUDA (MEGATRON_NOTES.md), so CPU runs use this module in the layer spec
instead. It has the same constructor and forward signature, so it slots into megatron-core's
``SelfAttention``/``CrossAttention`` through a ``ModuleSpec``; torch picks the fused kernel
(flash / memory-efficient) on GPU when no transformer-engine spec is used.

Mask convention (megatron-core's): ``attention_mask`` is boolean, True where attention is
*forbidden*, broadcastable to ``[batch, heads, q_len, kv_len]``. With no mask and a causal mask
type, causality is applied inside SDPA (aligned to the end of the keys, which is what
incremental decoding with a KV cache needs). ``window_size`` (from the spec's params) limits a
causal query to the last ``window_size`` keys, for the local encoder/decoder's sliding window.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide


def causal_window_mask(
    q_len: int, kv_len: int, window_size: Optional[int], device: torch.device
) -> torch.Tensor:
    """Boolean [q_len, kv_len] mask, True = forbidden; queries are the last q_len keys."""
    query_positions = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    key_positions = torch.arange(kv_len, device=device)[None, :]
    forbidden = key_positions > query_positions
    if window_size is not None:
        forbidden |= key_positions <= query_positions - window_size
    return forbidden


class SDPACoreAttention(MegatronModule):
    """Drop-in for megatron-core's ``DotProductAttention`` that runs anywhere torch runs."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
        window_size: Optional[int] = None,
    ):
        super().__init__(config=config)
        assert config.context_parallel_size == 1, "SDPACoreAttention does not do context parallelism"
        if window_size is not None and window_size < 1:
            raise ValueError(f"window_size must be >= 1 or None, got {window_size}")
        from megatron.core import parallel_state

        tp_size = (
            pg_collection.tp.size()
            if pg_collection is not None
            else parallel_state.get_tensor_model_parallel_world_size()
        )
        projection_size = config.kv_channels * config.num_attention_heads
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.attention_type = attention_type
        self.window_size = window_size
        self.hidden_size_per_partition = divide(projection_size, tp_size)
        self.heads_per_partition = divide(config.num_attention_heads, tp_size)
        self.query_groups_per_partition = divide(config.num_query_groups, tp_size)
        head_dim = divide(projection_size, config.num_attention_heads)
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        """query [sq, b, heads, d], key/value [sk, b, groups, d] -> context [sq, b, heads * d]."""
        assert packed_seq_params is None, "packed sequences need the transformer-engine spec"
        assert attention_bias is None, "attention bias is not supported by SDPACoreAttention"
        q_len, batch = query.shape[0], query.shape[1]
        kv_len = key.shape[0]
        repeats = self.heads_per_partition // self.query_groups_per_partition
        if repeats > 1:
            key = key.repeat_interleave(repeats, dim=2)
            value = value.repeat_interleave(repeats, dim=2)
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))

        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        is_causal_type = mask_type in (AttnMaskType.causal, AttnMaskType.padding_causal)
        forbidden = attention_mask
        if is_causal_type and (self.window_size is not None or forbidden is not None or q_len != kv_len):
            structural = causal_window_mask(q_len, kv_len, self.window_size, query.device)
            forbidden = structural if forbidden is None else (forbidden | structural)
        use_builtin_causal = is_causal_type and forbidden is None

        allowed = None if forbidden is None else ~forbidden
        context = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=allowed,
            dropout_p=self.dropout_p if self.training else 0.0,
            is_causal=use_builtin_causal,
            scale=self.softmax_scale,
        )
        # [b, h, sq, d] -> [sq, b, h * d]
        return context.permute(2, 0, 1, 3).reshape(q_len, batch, self.hidden_size_per_partition)
