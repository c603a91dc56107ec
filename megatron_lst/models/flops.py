"""Training FLOPs (forward + backward = 3 x forward) counted from matmul shapes.

Counted per token: the QKV, output, MLP and LM-head matmuls (2 FLOPs per multiply-add) and the
two attention matmuls over the keys a query actually sees (causal: on average (n + 1) / 2 of n;
sliding window: at most ``window``). Norms, softmax and embeddings lookups are ignored, as in
Megatron-LM's and torchtitan's MFU accounting. ``flops.py`` of LST adds the local modules with
their own widths and windows, so that compute-controlled runs are budgeted in real FLOPs.
"""

from __future__ import annotations

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


def lst_training_flops(
    model: ModelConfig,
    batch_size: int,
    num_tokens: int,
    num_patches: int,
    vocab_size: int,
) -> dict[str, float]:
    """Training FLOPs of an LST micro-batch, per module: {encoder, global, decoder, total}.

    ``num_tokens`` (N) and ``num_patches`` (P) are the per-row shapes the model computes on.
    Encoder: N tokens through windowed self-attention + MLP layers, P*k patch queries attending
    the N/P tokens of their patch on average. Global: P positions, causal, plus the projection
    into it. Decoder: N tokens through windowed layers, cross-attention of every token over on
    average (P + 1) / 2 earlier patches, the projections out of the global model, the LM head.
    """
    window = model.local_window_size
    gated = model.swiglu
    enc, dec, hid = model.encoder_hidden_size, model.decoder_hidden_size, model.hidden_size
    tokens_per_patch = num_tokens / max(num_patches, 1)
    encoder = num_tokens * model.encoder_num_layers * layer_forward_flops_per_token(
        enc, model.ffn_size(enc), model.encoder_num_attention_heads, None,
        mean_attended_keys(num_tokens, window), gated,
    ) + model.encoder_num_layers * cross_attention_forward_flops(
        num_patches * model.cross_attn_k, num_tokens, enc, tokens_per_patch
    )
    global_ = num_patches * (model.num_layers * layer_forward_flops_per_token(
        hid, model.ffn_size(), model.num_attention_heads, model.num_query_groups,
        mean_attended_keys(num_patches), gated,
    ) + 2 * model.cross_attn_k * enc * hid)
    decoder = num_tokens * model.decoder_num_layers * layer_forward_flops_per_token(
        dec, model.ffn_size(dec), model.decoder_num_attention_heads, None,
        mean_attended_keys(num_tokens, window), gated,
    ) + model.decoder_num_layers * cross_attention_forward_flops(
        num_tokens, num_patches, dec, (num_patches + 1) / 2
    ) + 2 * hid * dec * num_patches + (2 * enc * dec * num_tokens if enc != dec else 0) + 2 * dec * vocab_size * num_tokens
    per_module = {"encoder": encoder, "global": global_, "decoder": decoder}
    result = {name: TRAIN_MULTIPLIER * batch_size * value for name, value in per_module.items()}
    result["total"] = sum(result.values())
    return result
