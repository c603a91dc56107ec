"""Core attention on ``torch.nn.functional.scaled_dot_product_attention``.

megatron-core's own ``DotProductAttention`` allocates its score buffer on CUDA and builds its
causal mask on CUDA (docs/megatron_core.md), so CPU runs use this module in the layer spec
instead. It has the same constructor and forward signature, so it slots into megatron-core's
``SelfAttention``/``CrossAttention`` through a ``ModuleSpec``; torch picks the fused kernel
(flash / memory-efficient) on GPU when no transformer-engine spec is used.

Mask convention (megatron-core's): ``attention_mask`` is boolean, True where attention is
*forbidden*, broadcastable to ``[batch, heads, q_len, kv_len]``. With no mask and a causal mask
type, causality is applied inside SDPA (aligned to the end of the keys, which is what
incremental decoding with a KV cache needs). The LST's local layers use ``IntervalCoreAttention``
(local_attention.py), which shares this constructor: their windows are interval patterns.

Packed sequences (``packed_seq_params.qkv_format == "thd"``, megatron-core's packed-sequence
path, see ``models/packed_sequences.py``): query/key/value arrive as [T, heads, dim], each
``cu_seqlens`` segment is an independent sequence, causal (top-left aligned, which is TE's
``padding_causal``) for the causal mask types. This is the CPU twin of transformer-engine's
varlen kernels, so the packed path of the global model and the baseline runs end to end on CPU.
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


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_kv: torch.Tensor,
    *,
    causal: bool,
    scale: float,
    window_size: Optional[int] = None,
    dropout_p: float = 0.0,
    cu_seqlens_q_padded: Optional[torch.Tensor] = None,
    cu_seqlens_kv_padded: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Attention within each packed sequence: query [Tq, h, d], key/value [Tk, h, d] -> [Tq, h, d].

    Sequence i holds queries ``cu_seqlens_q[i] .. cu_seqlens_q[i+1]`` and keys likewise (or, with
    the ``*_padded`` offsets, starts at the padded offset; positions between sequences get zeros).
    Sequences are grouped by length into power-of-two buckets and each bucket runs as one padded
    SDPA call, so the work is at most 4x the exact sum of squared lengths with only O(log max_len)
    calls, instead of a dense [T, T] block-diagonal mask (quadratic in the whole pack) or one call
    per document.
    """
    lengths_q = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).tolist()
    lengths_kv = (cu_seqlens_kv[1:] - cu_seqlens_kv[:-1]).tolist()
    if len(lengths_q) != len(lengths_kv):
        raise ValueError(f"cu_seqlens_q has {len(lengths_q)} sequences, cu_seqlens_kv {len(lengths_kv)}")
    if causal and lengths_q != lengths_kv:
        raise ValueError("causal packed attention needs equal query and key lengths per sequence (self-attention)")
    starts_q = (cu_seqlens_q if cu_seqlens_q_padded is None else cu_seqlens_q_padded)[:-1].tolist()
    starts_kv = (cu_seqlens_kv if cu_seqlens_kv_padded is None else cu_seqlens_kv_padded)[:-1].tolist()
    device = query.device
    buckets: dict[int, list[int]] = {}
    for index, (length_q, length_kv) in enumerate(zip(lengths_q, lengths_kv)):
        if length_q > 0 and length_kv > 0:  # an empty sequence has nothing to compute
            buckets.setdefault(max(length_q, length_kv).bit_length(), []).append(index)
    destinations, outputs = [], []
    for members in buckets.values():
        len_q = torch.tensor([lengths_q[i] for i in members], device=device)
        len_kv = torch.tensor([lengths_kv[i] for i in members], device=device)
        span_q, span_kv = int(len_q.max()), int(len_kv.max())
        offsets_q = torch.arange(span_q, device=device)
        offsets_kv = torch.arange(span_kv, device=device)
        valid_q = offsets_q[None, :] < len_q[:, None]  # [n, Lq]
        valid_kv = offsets_kv[None, :] < len_kv[:, None]  # [n, Lk]
        index_q = torch.tensor([starts_q[i] for i in members], device=device)[:, None] + offsets_q
        index_kv = torch.tensor([starts_kv[i] for i in members], device=device)[:, None] + offsets_kv
        # padded slots read some in-range row; their scores are masked or their outputs dropped
        q = query[index_q.clamp(max=query.shape[0] - 1)].transpose(1, 2)  # [n, h, Lq, d]
        k = key[index_kv.clamp(max=key.shape[0] - 1)].transpose(1, 2)
        v = value[index_kv.clamp(max=value.shape[0] - 1)].transpose(1, 2)
        allowed = valid_kv[:, None, :].expand(-1, span_q, -1)  # [n, Lq, Lk]
        if causal:
            relative = offsets_kv[None, :] - offsets_q[:, None]  # key - query
            structural = relative <= 0
            if window_size is not None:
                structural = structural & (relative > -window_size)
            allowed = allowed & structural
        # a padded query row would see no key (NaN); let it see everything, its output is dropped
        allowed = allowed | ~valid_q[:, :, None]
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed[:, None], dropout_p=dropout_p, scale=scale
        ).transpose(1, 2)  # [n, Lq, h, d]
        destinations.append(index_q[valid_q])
        outputs.append(context[valid_q])
    out = query.new_zeros(query.shape[0], query.shape[1], value.shape[-1])
    if outputs:
        out = out.index_copy(0, torch.cat(destinations), torch.cat(outputs))
    return out


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
    ):
        super().__init__(config=config)
        assert config.context_parallel_size == 1, "SDPACoreAttention does not do context parallelism"
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
        """query [sq, b, heads, d], key/value [sk, b, groups, d] -> context [sq, b, heads * d];
        packed (THD): query [T, heads, d], key/value [T, groups, d] -> context [T, heads * d]."""
        assert attention_bias is None, "attention bias is not supported by SDPACoreAttention"
        if packed_seq_params is not None:
            return self._packed_forward(query, key, value, attention_mask, attn_mask_type, packed_seq_params)
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
        if is_causal_type and (forbidden is not None or q_len != kv_len):
            structural = causal_window_mask(q_len, kv_len, None, query.device)
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

    def _packed_forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType],
        packed_seq_params,
    ) -> torch.Tensor:
        """THD: every ``cu_seqlens`` segment attends only within itself (``varlen_attention``)."""
        if packed_seq_params.qkv_format != "thd":
            raise NotImplementedError(
                f"SDPACoreAttention packs only qkv_format='thd', got {packed_seq_params.qkv_format!r}"
            )
        if attention_mask is not None:
            # TE ignores the mask for THD; refusing it here keeps a caller from believing it applies
            raise ValueError("packed (THD) attention takes its boundaries from cu_seqlens: pass attention_mask=None")
        if query.dim() != 3:
            raise ValueError(f"packed query must be [T, heads, dim], got shape {tuple(query.shape)}")
        repeats = self.heads_per_partition // self.query_groups_per_partition
        if repeats > 1:
            key = key.repeat_interleave(repeats, dim=1)
            value = value.repeat_interleave(repeats, dim=1)
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        context = varlen_attention(
            query, key, value,
            packed_seq_params.cu_seqlens_q, packed_seq_params.cu_seqlens_kv,
            causal=mask_type in (AttnMaskType.causal, AttnMaskType.padding_causal),
            scale=self.softmax_scale,
            dropout_p=self.dropout_p if self.training else 0.0,
            cu_seqlens_q_padded=packed_seq_params.cu_seqlens_q_padded,
            cu_seqlens_kv_padded=packed_seq_params.cu_seqlens_kv_padded,
        )
        return context.reshape(query.shape[0], self.hidden_size_per_partition)
