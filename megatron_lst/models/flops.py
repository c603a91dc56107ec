"""Training FLOPs (forward + backward = 3 x forward) counted from matmul shapes.

Counted per token: the QKV, output, MLP and LM-head matmuls (2 FLOPs per multiply-add) and the
two attention matmuls over the keys a query sees (causal: on average (n + 1) / 2 of n). Norms,
softmax and embeddings lookups are ignored, as in Megatron-LM's and torchtitan's MFU accounting.
The LST's local modules are counted with their own widths and with the attention score pairs
their blocked kernels actually compute (query blocks times key spans, masked pairs included), so
that compute-controlled runs are budgeted in the FLOPs the machine spends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from megatron_lst.models.config import ModelConfig

TRAIN_MULTIPLIER = 3  # backward costs twice the forward


def mean_attended_keys(seq_len: int, window: Optional[int] = None) -> float:
    """Average number of keys a causal query attends to in a sequence of ``seq_len``."""
    if seq_len <= 0:
        return 0.0
    if window is None or window >= seq_len:
        return (seq_len + 1) / 2
    # first `window` queries see 1..window keys, the rest see exactly `window`
    ramp = window * (window + 1) / 2
    return (ramp + (seq_len - window) * window) / seq_len


def layer_forward_flops_per_token(
    hidden_size: int,
    ffn_hidden_size: int,
    num_attention_heads: int,
    num_query_groups: Optional[int],
    attended_keys: float,
    gated_mlp: bool = True,
) -> float:
    """Forward FLOPs of one self-attention + MLP transformer layer, per token."""
    head_dim = hidden_size // num_attention_heads
    kv_width = head_dim * (num_query_groups or num_attention_heads)
    qkv = 2 * hidden_size * (hidden_size + 2 * kv_width)
    projection = 2 * hidden_size * hidden_size
    mlp = 2 * hidden_size * ffn_hidden_size * (3 if gated_mlp else 2)
    attention = 2 * 2 * attended_keys * hidden_size
    return qkv + projection + mlp + attention


def gpt_training_flops(
    num_tokens: int,
    seq_len: int,
    num_layers: int,
    hidden_size: int,
    ffn_hidden_size: int,
    num_attention_heads: int,
    vocab_size: int,
    num_query_groups: Optional[int] = None,
    gated_mlp: bool = True,
    window: Optional[int] = None,
) -> float:
    """Training FLOPs of a decoder-only model over ``num_tokens`` tokens in sequences of ``seq_len``."""
    per_token = num_layers * layer_forward_flops_per_token(
        hidden_size, ffn_hidden_size, num_attention_heads, num_query_groups,
        mean_attended_keys(seq_len, window), gated_mlp,
    ) + 2 * hidden_size * vocab_size
    return TRAIN_MULTIPLIER * per_token * num_tokens


def cross_attention_forward_flops(num_queries: float, num_keys: float, hidden_size: int,
                                  attended_keys: float) -> float:
    """Forward FLOPs of one cross-attention layer (no MLP): Q and output projections per query,
    K and V projections per key, and the two attention matmuls over the keys each query sees."""
    projections = 2 * hidden_size * hidden_size * (2 * num_queries + 2 * num_keys)
    attention = 2 * 2 * attended_keys * hidden_size * num_queries
    return projections + attention


@dataclass(frozen=True)
class LocalAttentionPairs:
    """(query, key) score pairs per row that LST's local attention kernels compute, masked ones
    included (the blocked kernel's query blocks times their key spans, interval_attention.py)."""

    local_self: float  # one sliding-window layer over the N tokens (encoder and decoder alike)
    encoder_cross: float  # one encoder cross-attention layer: P*k patch queries over tokens
    decoder_cross: float  # one decoder cross-attention layer: N token queries over P patches


def _blocked_pairs(num_queries: float, block: int, keys_per_block: float, num_keys: float) -> float:
    blocks = math.ceil(num_queries / block) if num_queries else 0
    return blocks * block * min(keys_per_block, num_keys)


def estimated_local_attention_pairs(model: ModelConfig, num_tokens: int, num_patches: int) -> LocalAttentionPairs:
    """The pairs of ``LocalAttentionPairs`` for one row of N tokens and P patches, from the shapes
    alone (uniform patches, one document); training counts the exact ones of each batch
    (``local_patterns.local_attention_pairs``)."""
    from megatron_lst.models.local_patterns import PATCH_QUERY_BLOCK, TOKEN_QUERY_BLOCK

    tokens_per_patch = num_tokens / max(num_patches, 1)
    encoder_window = model.earlier_patches("encoder")
    decoder_window = model.earlier_patches("decoder")
    encoder_patches = PATCH_QUERY_BLOCK + (num_patches if encoder_window is None else encoder_window)
    decoder_patches = TOKEN_QUERY_BLOCK / tokens_per_patch + 1 + (
        num_patches if decoder_window is None else decoder_window)
    return LocalAttentionPairs(
        local_self=_blocked_pairs(num_tokens, TOKEN_QUERY_BLOCK, model.local_window_size + TOKEN_QUERY_BLOCK - 1,
                                  num_tokens),
        encoder_cross=_blocked_pairs(num_patches * model.cross_attn_k, PATCH_QUERY_BLOCK,
                                     math.ceil(encoder_patches * tokens_per_patch), num_tokens),
        decoder_cross=_blocked_pairs(num_tokens, TOKEN_QUERY_BLOCK, math.ceil(decoder_patches), num_patches),
    )


def _local_stack_flops(num_layers: int, width: int, ffn: int, heads: int, gated: bool, num_tokens: float,
                       self_pairs: float, cross_queries: float, cross_keys: float, cross_pairs: float) -> float:
    """Forward FLOPs of ``num_layers`` (sliding-window layer + cross-attention layer) pairs."""
    window_layer = num_tokens * layer_forward_flops_per_token(width, ffn, heads, None, 0.0, gated) \
        + 2 * 2 * self_pairs * width
    cross_layer = cross_attention_forward_flops(cross_queries, cross_keys, width, 0.0) + 2 * 2 * cross_pairs * width
    return num_layers * (window_layer + cross_layer)


def lst_training_flops(
    model: ModelConfig,
    batch_size: int,
    num_tokens: int,
    num_patches: int,
    vocab_size: int,
    attention_pairs: Optional[LocalAttentionPairs] = None,
) -> dict[str, float]:
    """Training FLOPs of an LST micro-batch, per module: {encoder, global, decoder, total}.

    ``num_tokens`` (N) and ``num_patches`` (P) are the per-row shapes the model computes on.
    Encoder: N tokens through sliding-window layers + MLPs, P*k patch queries cross-attending
    tokens. Global: P positions, causal (as the baseline's tokens: flash kernels skip the masked
    half), plus the projection into it. Decoder: N tokens through sliding-window layers, N token
    queries cross-attending patches, the projections out of the global model, the LM head.
    The local attentions count the score pairs their kernels compute (``attention_pairs``, per
    row; estimated from the shapes when not given), not the ideal window.
    """
    pairs = attention_pairs or estimated_local_attention_pairs(model, num_tokens, num_patches)
    gated = model.swiglu
    enc, dec, hid = model.encoder_hidden_size, model.decoder_hidden_size, model.hidden_size
    encoder = _local_stack_flops(
        model.encoder_num_layers, enc, model.ffn_size(enc), model.encoder_num_attention_heads, gated, num_tokens,
        pairs.local_self, num_patches * model.cross_attn_k, num_tokens, pairs.encoder_cross)
    global_ = num_patches * (model.num_layers * layer_forward_flops_per_token(
        hid, model.ffn_size(), model.num_attention_heads, model.num_query_groups,
        mean_attended_keys(num_patches), gated,
    ) + 2 * model.cross_attn_k * enc * hid)
    decoder = _local_stack_flops(
        model.decoder_num_layers, dec, model.ffn_size(dec), model.decoder_num_attention_heads, gated, num_tokens,
        pairs.local_self, num_tokens, num_patches, pairs.decoder_cross,
    ) + 2 * hid * dec * num_patches + (2 * enc * dec * num_tokens if enc != dec else 0) + 2 * dec * vocab_size * num_tokens
    per_module = {"encoder": encoder, "global": global_, "decoder": decoder}
    result = {name: TRAIN_MULTIPLIER * batch_size * value for name, value in per_module.items()}
    result["total"] = sum(result.values())
    return result
