"""The core attention of the patch encoder and decoder layers: ``interval_attention`` behind megatron's API.

It slots into megatron-core's ``SelfAttention`` / ``CrossAttention`` through a ``ModuleSpec`` (same
constructor and forward signature as megatron's ``DotProductAttention``), so the local layers keep
megatron's projections, rotary embedding and tensor-parallel sharding (each TP rank attends its own
heads). Instead of a boolean mask the layer receives, as ``attention_mask``, the ``IntervalMask``
its module built once for the whole forward pass (``local_patterns.py``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide

from megatron_lst.models.interval_attention import IntervalMask, interval_attention


class IntervalCoreAttention(MegatronModule):
    """Core attention over an ``IntervalMask``: query [sq, b, heads, d] -> context [sq, b, heads * d].

    ``window_size`` is recorded for incremental decoding (its KV caches keep that many tokens); in
    training the window is part of the mask the layer is given.
    """

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
        if config.context_parallel_size != 1:
            raise ValueError("the LST's local layers do not support context parallelism")
        from megatron.core import parallel_state

        tp_size = (pg_collection.tp.size() if pg_collection is not None
                   else parallel_state.get_tensor_model_parallel_world_size())
        projection_size = config.kv_channels * config.num_attention_heads
        self.layer_number = max(1, layer_number)
        self.attention_type = attention_type
        self.window_size = window_size
        self.hidden_size_per_partition = divide(projection_size, tp_size)
        head_dim = divide(projection_size, config.num_attention_heads)
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        if dropout:
            raise ValueError(f"the LST's local attention has no dropout (got attention_dropout={dropout})")

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: IntervalMask,
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if not isinstance(attention_mask, IntervalMask):
            raise TypeError(f"local layers take an IntervalMask as attention_mask, got {type(attention_mask).__name__}")
        if attention_bias is not None or packed_seq_params is not None:
            raise ValueError("local attention takes neither an attention bias nor packed sequences")
        context = interval_attention(query, key, value, attention_mask, self.softmax_scale)
        return context.reshape(query.shape[0], query.shape[1], self.hidden_size_per_partition)
