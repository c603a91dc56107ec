"""LSTModel: patch encoder -> global transformer over patches -> patch decoder (docs/method.md §2).

Pipeline parallelism (docs/design.md §2): the encoder lives on the first stage (``pre_process``), the
decoder, output head and loss on the last (``post_process``); the global layers are split by
megatron-core's ``TransformerBlock``. One tensor crosses each stage boundary:
``cat([patch_states (P), token_states (N)])`` in [seq, batch, width] layout, each part
zero-padded to the wider of the global and encoder widths, so the decoder on the last stage gets
the encoder's token states. P changes every micro-batch, hence ``variable_seq_lengths``.
Every stage reads the micro-batch, so each knows N and P to split the tensor it receives.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.enums import ModelType
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_lst.models.config import ModelConfig
from megatron_lst.models.local import PatchDecoder, PatchEncoder
from megatron_lst.models.packed_sequences import pack_documents
from megatron_lst.models.specs import gpt_layer_spec
from megatron_lst.patching.masks import patch_documents


def global_document_mask(patch_lengths: torch.Tensor, document_ids: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """[B, 1, P, P] True where two patches belong to different documents (block-causal global)."""
    if document_ids is None:
        return None
    documents = patch_documents(patch_lengths, document_ids)
    return (documents[:, :, None] != documents[:, None, :])[:, None]


def global_packing_documents(patch_lengths: torch.Tensor, document_ids: torch.Tensor) -> torch.Tensor:
    """[B, P] patch documents for packing the global model (``models/packed_sequences.py``).

    Same documents as ``global_document_mask``, except that patches after a row's last non-empty
    patch (the zero-length slots of shorter rows) get -1 and are left out of the pack: they hold
    no token, no decoder query reads them, and every patch they could attend lies before them,
    so dropping them changes no kept patch. Right padding already has document -1 (its own
    patch, read only by PAD tokens, whose loss is masked), so it is left out too.
    """
    documents = patch_documents(patch_lengths, document_ids)
    nonempty_from_here = torch.flip(torch.cumsum(torch.flip(patch_lengths > 0, [1]).long(), 1), [1]) > 0
    return documents.masked_fill(~nonempty_from_here, -1)


class LSTModel(MegatronModule):
    """One pipeline stage of the LST; ``forward`` returns the per-token loss [B, N] on the last stage."""

    def __init__(
        self,
        shape: ModelConfig,
        global_config: TransformerConfig,
        encoder_config: TransformerConfig,
        decoder_config: TransformerConfig,
        vocab_size: int,
        use_te: bool = False,
        pre_process: bool = True,
        post_process: bool = True,
        pack_global: Optional[bool] = None,
    ):
        super().__init__(config=global_config)
        # the global model over packed documents: THD (cu_seqlens) under the TE spec, whose core
        # attention would drop a document mask; on CPU only when asked (SDPA + mask is the default)
        self.pack_global = use_te if pack_global is None else pack_global
        if use_te and not self.pack_global:
            raise ValueError("the transformer-engine spec ignores the document mask: the global model must pack "
                             "(pack_global=True) to keep documents apart")
        self.model_type = ModelType.encoder_or_decoder
        # read by finalize_model_grads under PP: the LST ties no weights across stages
        self.share_embeddings_and_output_weights = False
        self.pre_process = pre_process
        self.post_process = post_process
        self.global_width = global_config.hidden_size
        self.encoder_width = encoder_config.hidden_size
        self.boundary_width = max(self.global_width, self.encoder_width)
        self.input_tensor: Optional[torch.Tensor] = None
        # the width-changing projections are plain linears, replicated across TP ranks (their
        # inputs are identical there, and megatron's column-parallel layers after them all-reduce
        # the input gradients, so their gradients agree too)
        dtype = global_config.params_dtype
        if pre_process:
            self.patch_encoder = PatchEncoder(
                encoder_config, vocab_size, shape.local_window_size, shape.normalization,
                shape.rotary_base, shape.cross_attn_k, earlier_patches=shape.earlier_patches("encoder"),
            )
            self.encoder_to_global = torch.nn.Linear(
                shape.cross_attn_k * encoder_config.hidden_size, global_config.hidden_size, bias=False, dtype=dtype
            )
        self.global_rotary = RotaryEmbedding(
            kv_channels=global_config.kv_channels, rotary_percent=1.0, rotary_base=int(shape.rotary_base),
            use_cpu_initialization=global_config.use_cpu_initialization,
        )
        self.global_block = TransformerBlock(
            config=global_config, spec=gpt_layer_spec(use_te, shape.normalization),
            pre_process=True, post_process=post_process,
        )
        if post_process:
            self.global_to_decoder = torch.nn.Linear(
                global_config.hidden_size, decoder_config.hidden_size, bias=False, dtype=dtype
            )
            self.token_to_decoder = (
                torch.nn.Linear(encoder_config.hidden_size, decoder_config.hidden_size, bias=False, dtype=dtype)
                if encoder_config.hidden_size != decoder_config.hidden_size else None
            )
            self.patch_decoder = PatchDecoder(
                decoder_config, vocab_size, shape.local_window_size, shape.normalization, shape.rotary_base,
                earlier_patches=shape.earlier_patches("decoder"),
            )

    def set_input_tensor(self, input_tensor) -> None:
        """Called by megatron's schedules with the tensor received from the previous stage."""
        if isinstance(input_tensor, (list, tuple)):
            input_tensor = input_tensor[0]
        self.input_tensor = input_tensor

    def _pack(self, patch_states: torch.Tensor, token_states: torch.Tensor) -> torch.Tensor:
        width = self.boundary_width
        return torch.cat([F.pad(patch_states, (0, width - patch_states.shape[-1])),
                          F.pad(token_states, (0, width - token_states.shape[-1]))], dim=0)

    def _unpack(self, boundary: torch.Tensor, num_patches: int) -> tuple[torch.Tensor, torch.Tensor]:
        return boundary[:num_patches, :, : self.global_width], boundary[num_patches:, :, : self.encoder_width]

    def _global_forward(self, patch_states: torch.Tensor, patch_lengths: torch.Tensor,
                        document_ids: Optional[torch.Tensor]) -> torch.Tensor:
        """The global block, block-causal over documents: [P, B, H] in and out on every stage.

        Packed (``pack_global`` and documents given): this stage packs its patch states by
        document, runs megatron's THD path (rotary restarting per document) and unpacks, so what
        crosses a pipeline boundary keeps its [P + N, B, W] shape; patches outside every
        document come back as zeros. Otherwise the [B, 1, P, P] document mask (SDPA).
        """
        num_patches = patch_lengths.shape[1]
        if not self.pack_global or document_ids is None:
            # no documents: plain causal attention, which every spec applies on its own
            return self.global_block(
                patch_states,
                attention_mask=global_document_mask(patch_lengths, document_ids),
                rotary_pos_emb=self.global_rotary(num_patches),
            )
        packed = pack_documents(global_packing_documents(patch_lengths, document_ids))
        output = self.global_block(
            packed.pack(patch_states),
            attention_mask=None,
            rotary_pos_emb=self.global_rotary(packed.max_seqlen, packed_seq=True),
            packed_seq_params=packed.params,
        )
        return packed.unpack(output)

    def forward(
        self,
        tokens: torch.Tensor,
        patch_lengths: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        document_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """tokens [B, N], patch_lengths [B, P] (patching the N+1 tokens), labels [B, N].

        Returns the per-token loss [B, N] with labels on the last stage, the vocab-parallel
        logits [B, N, V/tp] without, and the boundary tensor on every other stage.
        """
        num_patches = patch_lengths.shape[1]
        if self.pre_process:
            token_states, patch_states = self.patch_encoder(tokens, patch_lengths, document_ids)
            patch_states = self.encoder_to_global(patch_states)
        else:
            patch_states, token_states = self._unpack(self.input_tensor, num_patches)
        patch_states = self._global_forward(patch_states, patch_lengths, document_ids)
        if not self.post_process:
            return self._pack(patch_states, token_states)
        decoder_patches = self.global_to_decoder(patch_states)
        if self.token_to_decoder is not None:
            token_states = self.token_to_decoder(token_states)
        logits = self.patch_decoder(token_states, decoder_patches, patch_lengths, document_ids)  # [N, B, V/tp]
        if labels is None:
            return logits.transpose(0, 1).contiguous()
        loss = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), labels.transpose(0, 1).contiguous())
        return loss.transpose(0, 1).contiguous()


def lst_transformer_configs(
    shape: ModelConfig,
    first_stage_layers: Optional[int] = None,
    last_stage_layers: Optional[int] = None,
    **parallel,
) -> tuple[TransformerConfig, TransformerConfig, TransformerConfig]:
    """(global, encoder, decoder) ``TransformerConfig``s for one LST.

    ``parallel`` holds ``transformer_config`` keywords (TP/PP sizes, bf16, ...). Under PP the
    first and last stages may get fewer global layers (``first_stage_layers``,
    ``last_stage_layers``), since they also run the patch encoder and decoder. The local configs
    keep pipeline size 1 so their layers are numbered from 1 on whichever stage builds them;
    PP > 1 switches the global config to variable sequence lengths (the patch count changes
    every micro-batch), which megatron-core 0.16.1 ties to the alltoall dispatcher setting.
    """
    from megatron_lst.models.specs import transformer_config

    if shape.encoder_num_layers < 1 or shape.decoder_num_layers < 1:
        raise ValueError(
            "LST needs at least one patch encoder and one patch decoder layer "
            f"(got --encoder-num-layers {shape.encoder_num_layers}, --decoder-num-layers {shape.decoder_num_layers}); "
            "a model without local modules is the baseline: use --model baseline"
        )
    global_extra = {}
    if parallel.get("pipeline_model_parallel_size", 1) > 1:
        global_extra = dict(variable_seq_lengths=True, moe_token_dispatcher_type="alltoall",
                            num_layers_in_first_pipeline_stage=first_stage_layers,
                            num_layers_in_last_pipeline_stage=last_stage_layers)
    global_config = transformer_config(shape, **parallel, **global_extra)
    local = dict(parallel, pipeline_model_parallel_size=1, sequence_parallel=False, recompute=None)
    encoder_config = transformer_config(
        shape, num_layers=shape.encoder_num_layers, hidden_size=shape.encoder_hidden_size,
        num_attention_heads=shape.encoder_num_attention_heads, **local,
    )
    decoder_config = transformer_config(
        shape, num_layers=shape.decoder_num_layers, hidden_size=shape.decoder_hidden_size,
        num_attention_heads=shape.decoder_num_attention_heads, **local,
    )
    return global_config, encoder_config, decoder_config
