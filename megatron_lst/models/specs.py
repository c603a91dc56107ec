"""Layer specs and ``TransformerConfig``s: the one place that picks CPU (SDPA) or GPU (TE) modules.

megatron-core composes layers from ``ModuleSpec``s. On GPU images with transformer-engine the
TE spec (fused attention, fused norm+linear) is used; elsewhere megatron-core's local spec with
this project's ``SDPACoreAttention`` in place of its CUDA-only ``DotProductAttention``.
"""

from __future__ import annotations

import copy
import functools
import importlib
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_lst.models.attention import SDPACoreAttention
from megatron_lst.models.config import ModelConfig


@functools.lru_cache(maxsize=1)
def transformer_engine_available() -> bool:
    """True when transformer-engine imports and a GPU is present (its kernels need CUDA)."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # TE raises more than ImportError when its CUDA libs mismatch
        return False
    return True


@functools.lru_cache(maxsize=None)
def apex_kernels() -> dict[str, bool]:
    """Which of apex's CUDA extensions import (NGC images carry apex; it is never installed from PyPI)."""
    found = {}
    for name in ("fused_layer_norm_cuda", "fused_weight_gradient_mlp_cuda"):
        try:
            importlib.import_module(name)
            found[name] = torch.cuda.is_available()
        except Exception:  # a CUDA-version mismatch raises more than ImportError
            found[name] = False
    return found


def fused_kernel_options() -> dict:
    """TransformerConfig switches for fused kernels this machine has (all off on CPU).

    Weight-gradient accumulation fused into the GEMM needs apex's ``fused_weight_gradient_mlp_cuda``
    (the local modules use megatron's own linears even when the global block uses TE) and a
    ``main_grad`` buffer, which megatron's DDP provides; the DeepSpeed engine turns it off.
    Norms need nothing here: megatron-core picks apex's or TE's fused norms itself when they import.
    """
    if not torch.cuda.is_available():
        return {}
    return {
        "bias_dropout_fusion": True,
        "gradient_accumulation_fusion": apex_kernels()["fused_weight_gradient_mlp_cuda"],
    }


def resolve_use_te(transformer_impl: str) -> bool:
    """``--transformer-impl``: ``auto`` (TE when available), ``local`` (SDPA) or ``transformer_engine``."""
    if transformer_impl == "auto":
        return transformer_engine_available()
    if transformer_impl == "transformer_engine" and not transformer_engine_available():
        raise RuntimeError("--transformer-impl transformer_engine asked for, but TE/CUDA is unavailable")
    return transformer_impl == "transformer_engine"


def gpt_layer_spec(use_te: bool, normalization: str = "RMSNorm") -> ModuleSpec:
    """A causal self-attention + MLP layer spec for the global transformer (and the baseline).

    Both specs are ``causal``. The TE core attention reads ``attention_mask`` only for
    padding/arbitrary mask types, so under ``use_te`` a document mask would be ignored: callers
    pack their documents instead (``models/packed_sequences.py``, megatron's THD path, where TE
    runs ``padding_causal`` per ``cu_seqlens`` sequence). The local spec's ``SDPACoreAttention``
    takes both the [B, 1, S, S] mask and the packed form.
    """
    if use_te:
        return get_gpt_layer_with_transformer_engine_spec()
    spec = copy.deepcopy(get_gpt_layer_local_spec(normalization=normalization))
    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return spec


def transformer_config(
    model: ModelConfig,
    *,
    num_layers: Optional[int] = None,
    hidden_size: Optional[int] = None,
    num_attention_heads: Optional[int] = None,
    num_query_groups: Optional[int] = None,
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    bf16: bool = False,
    sequence_parallel: bool = False,
    recompute: Optional[str] = None,
    **extra,
) -> TransformerConfig:
    """The ``TransformerConfig`` of one block (global by default; pass sizes for a local one).

    The global block takes the flavour's grouped-query attention (``num_query_groups``); local
    blocks (a ``hidden_size`` given) use one key/value head per query head unless told otherwise.
    """
    hidden = hidden_size or model.hidden_size
    if num_query_groups is None and hidden_size is None:
        num_query_groups = model.num_query_groups
    params_dtype = torch.bfloat16 if bf16 else torch.float32
    config = dict(
        num_layers=num_layers if num_layers is not None else model.num_layers,
        hidden_size=hidden,
        num_attention_heads=num_attention_heads or model.num_attention_heads,
        num_query_groups=num_query_groups,
        ffn_hidden_size=model.ffn_size(hidden),
        normalization=model.normalization,
        gated_linear_unit=model.swiglu,
        activation_func=F.silu if model.swiglu else F.gelu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=model.init_method_std,
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        sequence_parallel=sequence_parallel,
        bf16=bf16,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        use_cpu_initialization=not torch.cuda.is_available(),
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        masked_softmax_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        calculate_per_token_loss=True,
        deallocate_pipeline_outputs=False,
    )
    config.update(fused_kernel_options())
    if recompute:
        config.update(recompute_granularity=recompute, recompute_method="uniform" if recompute == "full" else None,
                      recompute_num_layers=1 if recompute == "full" else None)
    config.update(extra)
    return TransformerConfig(**config)
