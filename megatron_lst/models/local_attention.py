"""The core attention of the patch encoder and decoder layers: ``interval_attention`` behind megatron's API.

It slots into megatron-core's ``SelfAttention`` / ``CrossAttention`` through a ``ModuleSpec`` (same
constructor and forward signature as megatron's ``DotProductAttention``), so the local layers keep
megatron's projections, rotary embedding and tensor-parallel sharding (each TP rank attends its own
heads). Instead of a boolean mask the layer receives, as ``attention_mask``, the ``IntervalMask``
its module built once for the whole forward pass (``local_patterns.py``).
"""

from __future__ import annotations

from typing import Optional

import torch
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_lst.models.attention import SDPACoreAttention
from megatron_lst.models.interval_attention import IntervalMask, interval_attention


class IntervalCoreAttention(SDPACoreAttention):
    """Core attention over an ``IntervalMask``: query [sq, b, heads, d] -> context [sq, b, heads * d].

    Takes ``SDPACoreAttention``'s constructor (head and TP geometry, softmax scale); only the
    attention itself differs. The sliding window lives in the mask (``LocalStack.window_size``
    for incremental decoding's caches).
    """

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str, attention_dropout: Optional[float] = None, **kwargs):
        super().__init__(config, layer_number, attn_mask_type, attention_type, attention_dropout, **kwargs)
        if self.dropout_p:
            raise ValueError(f"the LST's local attention has no dropout (got attention_dropout={self.dropout_p})")

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
