"""The paper's "Base SpeechLLM": megatron-core ``GPTModel`` over the joint token stream.

No patches and no local modules: every text token and every speech unit is one position of
the same global transformer that LST uses, so a flavour name fixes both models' global shape.
"""

from __future__ import annotations

from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_lst.models.config import ModelConfig
from megatron_lst.models.specs import gpt_layer_spec


def padded_vocab_size(vocab_size: int, tensor_model_parallel_size: int, divisible_by: int = 128) -> int:
    """Megatron pads the embedding so every TP shard has the same, aligned number of rows."""
    multiple = divisible_by * tensor_model_parallel_size
    return ((vocab_size + multiple - 1) // multiple) * multiple


def build_baseline_model(
    model: ModelConfig,
    config: TransformerConfig,
    vocab_size: int,
    max_sequence_length: int,
    use_te: bool,
    pre_process: bool = True,
    post_process: bool = True,
) -> GPTModel:
    """A GPTModel whose ``forward(..., labels=)`` returns the per-token loss [batch, seq]."""
    return GPTModel(
        config=config,
        transformer_layer_spec=gpt_layer_spec(use_te, model.normalization),
        vocab_size=padded_vocab_size(vocab_size, config.tensor_model_parallel_size),
        max_sequence_length=max_sequence_length,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
        rotary_base=int(model.rotary_base),
    )
