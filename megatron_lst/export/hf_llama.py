"""The baseline (megatron-core ``GPTModel``) as a Hugging Face Llama: its config and tensor names.

The baseline is Llama-shaped: RMSNorm before attention and MLP, SwiGLU, RoPE applied to whole heads
with rotate-half (megatron-core's non-interleaved rotary is Llama's), no biases, an untied output
layer. Only two tensors are laid out differently, and both are split here rather than approximated:

* megatron-core fuses Q, K and V into ``linear_qkv`` *per query group*: for each of the ``g`` key/value
  groups, its ``h / g`` query heads, then its key head, then its value head (``head_dim`` rows each).
  Llama keeps ``q_proj`` (heads in order, group by group), ``k_proj`` and ``v_proj`` apart.
* ``linear_fc1`` stacks ``[gate; up]``: megatron's gated unit applies SiLU to the first half.

Both directions are given, so an exported folder also loads back into our own model (tested).
"""

from __future__ import annotations

import torch
from megatron.core.transformer.transformer_config import TransformerConfig

LAYER_NORMS = {"input_layernorm.weight": "input_layernorm.weight",
               "pre_mlp_layernorm.weight": "post_attention_layernorm.weight"}
# transformer-engine's spec (GPU) fuses the pre-attention / pre-MLP norms into the next linear layer
TE_FUSED_NORMS = {"self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
                  "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight"}
LINEARS = {"self_attention.linear_proj.weight": "self_attn.o_proj.weight",
           "mlp.linear_fc2.weight": "mlp.down_proj.weight"}


class NotLlamaShaped(ValueError):
    """The run's model has a feature Llama cannot express (LayerNorm, GELU, biases, tied or interleaved ...)."""


def check_llama_shaped(model: torch.nn.Module) -> TransformerConfig:
    """The GPTModel's TransformerConfig, after checking every property the Llama export relies on."""
    config: TransformerConfig = model.config
    problems = []
    if config.normalization != "RMSNorm":
        problems.append(f"normalization {config.normalization} (Llama: RMSNorm)")
    if not config.gated_linear_unit or config.activation_func is not torch.nn.functional.silu:
        problems.append("the MLP is not SwiGLU (--swiglu)")
    if config.add_bias_linear or config.add_qkv_bias:
        problems.append("linear layers have biases")
    if getattr(model, "position_embedding_type", "rope") != "rope" or getattr(model, "rotary_percent", 1.0) != 1.0:
        problems.append("positions are not RoPE on whole heads")
    if config.rotary_interleaved:
        problems.append("interleaved rotary (Llama rotates halves)")
    if config.qk_layernorm:
        problems.append("query/key layer norms")
    if model.share_embeddings_and_output_weights:
        problems.append("tied input and output embeddings")  # Llama can tie, but the export maps untied
    if problems:
        raise NotLlamaShaped("the model is not Llama-shaped: " + "; ".join(problems))
    return config


def head_layout(config: TransformerConfig) -> tuple[int, int, int]:
    """(query heads, key/value groups, head size)."""
    heads = config.num_attention_heads
    groups = config.num_query_groups or heads
    return heads, groups, config.kv_channels or config.hidden_size // heads


def llama_config(model: torch.nn.Module, rotary_base: float, max_positions: int, special_ids: dict,
                 real_vocab_size: int) -> dict:
    """``config.json`` of ``LlamaForCausalLM`` for the baseline ``model``.

    ``vocab_size`` is the embedding's row count, megatron's padded vocabulary (a multiple of 128):
    Llama's embedding must hold every row. Ids from ``real_vocab_size`` up are padding the model was
    never trained to emit (``generation_config.json`` suppresses them)."""
    config = check_llama_shaped(model)
    heads, groups, head_dim = head_layout(config)
    dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[config.params_dtype]
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": int(model.vocab_size),
        "hidden_size": config.hidden_size,
        "intermediate_size": config.ffn_hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": groups,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(max_positions),
        "rms_norm_eps": config.layernorm_epsilon,
        "rope_theta": float(rotary_base),  # transformers 4.x reads this key, 5.x rope_parameters
        "rope_parameters": {"rope_type": "default", "rope_theta": float(rotary_base)},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": config.init_method_std,
        "use_cache": True,
        "dtype": dtype,
        **special_ids,
        "megatron_lst": {"real_vocab_size": int(real_vocab_size),
                         "note": f"vocab_size is megatron's padded embedding size; ids >= {real_vocab_size} are "
                                 "padding rows that training never targets"},
    }


def _layers(state: dict[str, torch.Tensor], prefix: str) -> list[int]:
    return sorted({int(name[len(prefix):].split(".")[0]) for name in state if name.startswith(prefix)})


def renamed_tensors(layers: list[int]) -> list[tuple[str, str]]:
    """(our name, Llama name) of every tensor that is only renamed (QKV and fc1 are split instead)."""
    pairs = [("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
             ("decoder.final_layernorm.weight", "model.norm.weight"), ("output_layer.weight", "lm_head.weight")]
    for layer in layers:
        pairs += [(f"decoder.layers.{layer}.{ours}", f"model.layers.{layer}.{theirs}")
                  for ours, theirs in {**LAYER_NORMS, **LINEARS}.items()]
    return pairs


def rename_norms(state: dict[str, torch.Tensor], to_te: bool) -> dict[str, torch.Tensor]:
    """The layer norms under transformer-engine's fused names (``to_te``) or the local spec's (the names
    the Llama mapping is written for); other tensors unchanged."""
    pairs = [(local, te) if to_te else (te, local) for te, local in TE_FUSED_NORMS.items()]
    out = {}
    for name, value in state.items():
        for old, new in pairs:
            if name.endswith("." + old):
                name = name[: -len(old)] + new
        out[name] = value
    return out


def to_llama_state(state: dict[str, torch.Tensor], config: TransformerConfig) -> dict[str, torch.Tensor]:
    """megatron-core GPTModel tensors (TP = 1; local or transformer-engine spec) -> LlamaForCausalLM tensors."""
    state = rename_norms(state, to_te=False)
    heads, groups, head_dim = head_layout(config)
    per_group = heads // groups
    layers = _layers(state, "decoder.layers.")
    out = {theirs: state[ours] for ours, theirs in renamed_tensors(layers)}
    for layer in layers:
        source, target = f"decoder.layers.{layer}.", f"model.layers.{layer}."
        qkv = state[source + "self_attention.linear_qkv.weight"]
        grouped = qkv.view(groups, per_group + 2, head_dim, qkv.shape[-1])
        out[target + "self_attn.q_proj.weight"] = grouped[:, :per_group].reshape(heads * head_dim, -1)
        out[target + "self_attn.k_proj.weight"] = grouped[:, per_group].reshape(groups * head_dim, -1)
        out[target + "self_attn.v_proj.weight"] = grouped[:, per_group + 1].reshape(groups * head_dim, -1)
        gate, up = state[source + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        out[target + "mlp.gate_proj.weight"], out[target + "mlp.up_proj.weight"] = gate, up
    return {name: value.contiguous() for name, value in out.items()}


def from_llama_state(state: dict[str, torch.Tensor], config: TransformerConfig) -> dict[str, torch.Tensor]:
    """The inverse of :func:`to_llama_state`: an exported folder's tensors back into our GPTModel."""
    heads, groups, head_dim = head_layout(config)
    per_group = heads // groups
    layers = _layers(state, "model.layers.")
    out = {ours: state[theirs] for ours, theirs in renamed_tensors(layers)}
    for layer in layers:
        source, target = f"model.layers.{layer}.", f"decoder.layers.{layer}."
        hidden = state[source + "self_attn.q_proj.weight"].shape[-1]
        q = state[source + "self_attn.q_proj.weight"].view(groups, per_group, head_dim, hidden)
        k = state[source + "self_attn.k_proj.weight"].view(groups, 1, head_dim, hidden)
        v = state[source + "self_attn.v_proj.weight"].view(groups, 1, head_dim, hidden)
        out[target + "self_attention.linear_qkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, hidden)
        out[target + "mlp.linear_fc1.weight"] = torch.cat([state[source + "mlp.gate_proj.weight"],
                                                           state[source + "mlp.up_proj.weight"]], dim=0)
    return {name: value.contiguous() for name, value in out.items()}
