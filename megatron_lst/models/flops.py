"""Training FLOPs (forward + backward = 3 x forward) counted from matmul shapes.

Counted per token: the QKV, output, MLP and LM-head matmuls (2 FLOPs per multiply-add) and the
two attention matmuls over the keys a query actually sees (causal: on average (n + 1) / 2 of n;
sliding window: at most ``window``). Norms, softmax and embeddings lookups are ignored, as in
Megatron-LM's and torchtitan's MFU accounting. ``flops.py`` of LST adds the local modules with
their own widths and windows, so that compute-controlled runs are budgeted in real FLOPs.
"""

from __future__ import annotations

from typing import Optional

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
