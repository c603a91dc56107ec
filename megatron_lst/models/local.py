"""The LST's local modules: the patch encoder (tokens -> patch states) and patch decoder (-> logits).

Both are stacks of megatron-core ``TransformerLayer``s built from ``ModuleSpec``s, so they shard
under tensor parallelism exactly like the global transformer:

- a *window layer*: causal self-attention limited to the last ``local_window_size`` tokens (RoPE
  over token positions), then a SwiGLU MLP (the GPT local spec with a windowed SDPA core);
- a *cross layer*: cross-attention only (no self-attention, no MLP), queries from one sequence,
  keys/values from the other, with an explicit boolean mask.

Encoder: embed, then per layer ``window -> cross`` where patch queries (initialised by max-pooling
the token states of their patch after the first window layer) attend the tokens of their own patch.
Decoder: per layer ``cross -> window`` where token queries attend the global outputs of the patches
up to their decoder patch id (the one-patch lag of docs/method.md §2), then a final norm and the
vocabulary-parallel output head.

Every local attention is an interval pattern (each query sees one contiguous run of keys: the
window, the patch, the lagged patches of its document), built once per forward pass by
``local_patterns.py`` and computed by ``interval_attention.py`` in O(N x window) time and memory
(blocked SDPA on CPU, FlexAttention on CUDA), never as an N x N mask. The transformer-engine spec
is not used here: its core attention takes no such patterns.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from megatron.core import tensor_parallel
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import CrossAttention, CrossAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityFuncOp, IdentityOp
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules
from megatron.core.transformer.utils import sharded_state_dict_default

from megatron_lst.models.interval_attention import IntervalMask
from megatron_lst.models.local_attention import IntervalCoreAttention
from megatron_lst.models.local_patterns import decoder_cross_mask, encoder_cross_mask, sliding_window_mask
from megatron_lst.patching import max_pool_patches


def _norm_spec(normalization: str):
    return get_gpt_layer_local_spec(normalization=normalization).submodules.input_layernorm


def window_layer_spec(normalization: str) -> ModuleSpec:
    """Causal sliding-window self-attention + MLP (the GPT local spec, interval core attention;
    the window is part of the ``IntervalMask`` each forward pass builds)."""
    spec = copy.deepcopy(get_gpt_layer_local_spec(normalization=normalization))
    spec.submodules.self_attention.submodules.core_attention = IntervalCoreAttention
    return spec


def cross_layer_spec(normalization: str) -> ModuleSpec:
    """Cross-attention only: pre-norm, CrossAttention over an interval pattern, residual add.

    A layer without self-attention needs ``IdentityFuncOp`` for its bias-dropout-add
    (docs/megatron_core.md); the MLP is left out, so its bda is ``IdentityFuncOp`` as well.
    """
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            self_attn_bda=IdentityFuncOp,
            pre_cross_attn_layernorm=_norm_spec(normalization),
            cross_attention=ModuleSpec(
                module=CrossAttention,
                params={"attn_mask_type": AttnMaskType.padding},
                submodules=CrossAttentionSubmodules(
                    linear_q=ColumnParallelLinear,
                    linear_kv=ColumnParallelLinear,
                    core_attention=IntervalCoreAttention,
                    linear_proj=RowParallelLinear,
                ),
            ),
            cross_attn_bda=get_bias_dropout_add,
            mlp=IdentityOp,
            mlp_bda=IdentityFuncOp,
        ),
    )


class LocalStack(MegatronModule):
    """``num_layers`` pairs of (window, cross) layers in a fixed order; shared by encoder and decoder."""

    def __init__(self, config: TransformerConfig, window_size: int, normalization: str, rotary_base: float):
        super().__init__(config=config)
        self.window_size = window_size
        window_spec = window_layer_spec(normalization)
        cross_spec = cross_layer_spec(normalization)
        self.window_layers = torch.nn.ModuleList(
            build_module(window_spec, config=config, layer_number=i + 1) for i in range(config.num_layers)
        )
        self.cross_layers = torch.nn.ModuleList(
            build_module(cross_spec, config=config, layer_number=i + 1) for i in range(config.num_layers)
        )
        self.rotary = RotaryEmbedding(
            kv_channels=config.kv_channels, rotary_percent=1.0, rotary_base=int(rotary_base),
            use_cpu_initialization=config.use_cpu_initialization,
        )

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Optional[dict] = None) -> dict:
        """Each layer's own sharded state (TP axes included); a plain ``ModuleList`` would be saved
        as if replicated, which breaks TP resharding of checkpoints."""
        state = {}
        for name, layers in (("window_layers", self.window_layers), ("cross_layers", self.cross_layers)):
            for index, layer in enumerate(layers):
                state.update(layer.sharded_state_dict(f"{prefix}{name}.{index}.", sharded_offsets, metadata))
        state.update(sharded_state_dict_default(self.rotary, f"{prefix}rotary.", sharded_offsets, metadata))
        return state

    def window(self, index: int, states: torch.Tensor, self_mask: IntervalMask) -> torch.Tensor:
        rotary = self.rotary(states.shape[0])
        output, _ = self.window_layers[index](states, attention_mask=self_mask, rotary_pos_emb=rotary)
        return output

    def cross(self, index: int, queries: torch.Tensor, keys: torch.Tensor, mask: IntervalMask) -> torch.Tensor:
        output, _ = self.cross_layers[index](queries, attention_mask=None, context=keys, context_mask=mask)
        return output

    def self_mask(self, seq_len: int, document_ids: Optional[torch.Tensor], batch: int, device: torch.device,
                  implementation: str) -> IntervalMask:
        return sliding_window_mask(seq_len, self.window_size, document_ids, batch, device, implementation)


class PatchEncoder(MegatronModule):
    """Tokens [B, N] -> (token states [N, B, E], patch states [P, B, k*E]) for [B, P] patch lengths."""

    def __init__(self, config: TransformerConfig, vocab_size: int, window_size: int, normalization: str,
                 rotary_base: float, cross_attn_k: int = 1, earlier_patches: Optional[int] = 0):
        super().__init__(config=config)
        self.earlier_patches = earlier_patches
        if cross_attn_k < 1:
            raise ValueError(f"cross_attn_k must be >= 1, got {cross_attn_k}")
        self.cross_attn_k = cross_attn_k
        self.embedding = tensor_parallel.VocabParallelEmbedding(
            vocab_size, config.hidden_size, init_method=config.init_method, config=config
        )
        self.stack = LocalStack(config, window_size, normalization, rotary_base)
        # k > 1: the k queries of a patch start from the same pooled state plus a learned offset each
        self.query_offsets = None
        if cross_attn_k > 1:
            self.query_offsets = torch.nn.Parameter(torch.zeros(cross_attn_k, config.hidden_size, dtype=config.params_dtype))
        # the attention kernel (interval_attention.py): "auto" picks by device; tests set "dense"
        self.attention_implementation = "auto"

    def attention_masks(self, patch_lengths: torch.Tensor, seq_len: int,
                        document_ids: Optional[torch.Tensor]) -> tuple[IntervalMask, IntervalMask]:
        """(sliding-window self-attention, patch cross-attention) patterns of one forward pass."""
        implementation = self.attention_implementation
        self_mask = self.stack.self_mask(seq_len, document_ids, patch_lengths.shape[0], patch_lengths.device,
                                         implementation)
        cross_mask = encoder_cross_mask(patch_lengths, seq_len, self.earlier_patches, document_ids,
                                        self.cross_attn_k, implementation)
        return self_mask, cross_mask

    def _initial_queries(self, token_states: torch.Tensor, patch_lengths: torch.Tensor) -> torch.Tensor:
        pooled = max_pool_patches(token_states.transpose(0, 1), patch_lengths)  # [B, P, E]
        if self.query_offsets is not None:
            pooled = (pooled[:, :, None, :] + self.query_offsets).flatten(1, 2)  # [B, P*k, E]
        return pooled.transpose(0, 1).contiguous()

    def forward(self, tokens: torch.Tensor, patch_lengths: torch.Tensor,
                document_ids: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        batch, seq_len = tokens.shape
        num_patches = patch_lengths.shape[1]
        token_states = self.embedding(tokens).transpose(0, 1).contiguous()  # [N, B, E]
        self_mask, cross_mask = self.attention_masks(patch_lengths, seq_len, document_ids)
        # a patch with no input token (the last, target-only patch; right padding) has a zero state
        keep = None
        if cross_mask.empty is not None:
            keep = (~cross_mask.empty).T[:, :, None].to(token_states.dtype)  # [P*k, B, 1]
        patch_states = None
        for index in range(len(self.stack.window_layers)):
            token_states = self.stack.window(index, token_states, self_mask)
            if patch_states is None:
                patch_states = self._initial_queries(token_states, patch_lengths)
            patch_states = self.stack.cross(index, patch_states, token_states, cross_mask)
            if keep is not None:
                patch_states = patch_states * keep
        width = self.config.hidden_size
        patch_states = patch_states.view(num_patches, self.cross_attn_k, batch, width)
        patch_states = patch_states.permute(0, 2, 1, 3).reshape(num_patches, batch, self.cross_attn_k * width)
        return token_states, patch_states


class PatchDecoder(MegatronModule):
    """(token states [N, B, D], global patch outputs [P, B, D]) -> vocab-parallel logits [N, B, V/tp]."""

    def __init__(self, config: TransformerConfig, vocab_size: int, window_size: int, normalization: str,
                 rotary_base: float, earlier_patches: Optional[int] = None):
        super().__init__(config=config)
        self.earlier_patches = earlier_patches
        self.stack = LocalStack(config, window_size, normalization, rotary_base)
        self.final_norm = build_module(
            _norm_spec(normalization), config=config, hidden_size=config.hidden_size, eps=config.layernorm_epsilon
        )
        self.output_layer = ColumnParallelLinear(
            config.hidden_size, vocab_size, config=config, init_method=config.init_method,
            bias=False, gather_output=False,
        )
        self.attention_implementation = "auto"  # as PatchEncoder's

    def attention_masks(self, patch_lengths: torch.Tensor, seq_len: int,
                        document_ids: Optional[torch.Tensor]) -> tuple[IntervalMask, IntervalMask]:
        """(sliding-window self-attention, lagged cross-attention to patches) of one forward pass.

        A token whose document has no complete patch yet (a document that does not open with BOS)
        sees no patch: its cross-attention adds nothing (zero), as in incremental decoding.
        """
        implementation = self.attention_implementation
        self_mask = self.stack.self_mask(seq_len, document_ids, patch_lengths.shape[0], patch_lengths.device,
                                         implementation)
        cross_mask = decoder_cross_mask(patch_lengths, seq_len, self.earlier_patches, document_ids, implementation)
        return self_mask, cross_mask

    def forward(self, token_states: torch.Tensor, patch_states: torch.Tensor, patch_lengths: torch.Tensor,
                document_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        self_mask, cross_mask = self.attention_masks(patch_lengths, token_states.shape[0], document_ids)
        for index in range(len(self.stack.window_layers)):
            token_states = self.stack.cross(index, token_states, patch_states, cross_mask)
            token_states = self.stack.window(index, token_states, self_mask)
        logits, _ = self.output_layer(self.final_norm(token_states))
        return logits
