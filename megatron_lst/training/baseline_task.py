"""The interleaved baseline as a ``TrainingTask``: GPTModel over Megatron GPT indexed datasets.

Text-only corpora preprocessed by ``tools/preprocess_data.py`` (or Megatron-LM's own tool) are
read by megatron-core's ``GPTDataset`` and blended by weight with ``BlendedMegatronDatasetBuilder``.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterator, Optional

import torch

from megatron_lst.data.blending import build_lst_datasets
from megatron_lst.data.datasets import LSTDatasetConfig
from megatron_lst.data.input_checks import parse_blend  # strict: positive finite weights
from megatron_lst.data.sampler import collate_packed
from megatron_lst.data.speech_documents import is_speech_text_dataset
from megatron_lst.data.token_shares import dataset_names
from megatron_lst.models.baseline import build_baseline_model, padded_vocab_size
from megatron_lst.models.init import initialize_by_global_name
from megatron_lst.models.flops import gpt_training_flops
from megatron_lst.models.packed_sequences import pack_documents, thd_params, unpack_token_values
from megatron_lst.models.specs import resolve_use_te, transformer_config
from megatron_lst.tokenizer import JointTokenizer
from megatron_lst.training.arguments import Config
from megatron_lst.training.data_modes import answer_target_mask, interleave_config
from megatron_lst.training.task import TaskData, TrainingTask, dataset_token_shares
from megatron_lst.training.task_common import gpt_text_datasets, load_tokenizer, modality_token_loss


class BaselineTask(TrainingTask):
    """Plain next-token prediction with megatron-core's GPTModel.

    On packed speech-text samples attention is block-causal over documents. With
    ``pack_sequences`` (the default under the transformer-engine spec, whose core attention would
    drop a document mask) each micro-batch reaches GPTModel in megatron's packed-sequence layout:
    tokens [1, T] with every document its own ``cu_seqlens`` sequence and the rows' PAD tokens
    left out; otherwise as [B, S] rows with a [B, 1, S, S] document mask (SDPA).
    """

    name = "baseline"
    dataset_names: tuple[str, ...] = ()  # set by build_datasets for a blend: the realised token shares

    def __init__(self, config: Config, tokenizer: JointTokenizer | None = None,
                 pack_sequences: Optional[bool] = None):
        self.config = config
        self.tokenizer = tokenizer or load_tokenizer(config)
        self.use_te = resolve_use_te(config.train.transformer_impl)
        self.pack_sequences = self.use_te if pack_sequences is None else pack_sequences
        if self.use_te and not self.pack_sequences:
            raise ValueError("the transformer-engine spec ignores the document mask: the baseline must pack "
                             "documents (pack_sequences=True) to keep them apart")
        extra = {}
        if self.pack_sequences and config.parallel.pipeline_model_parallel_size > 1:
            # the packed length T changes every micro-batch; megatron-core 0.16.1 ties variable
            # lengths to the alltoall dispatcher setting (as for LST's global model)
            extra = dict(variable_seq_lengths=True, moe_token_dispatcher_type="alltoall")
        self.transformer_config = transformer_config(
            config.model_config,
            tensor_model_parallel_size=config.parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=config.parallel.pipeline_model_parallel_size,
            bf16=config.train.bf16,
            sequence_parallel=config.parallel.sequence_parallel,
            recompute=config.train.recompute_granularity,
            **extra,
        )

    def build_model(self, config: Config, pre_process: bool, post_process: bool) -> torch.nn.Module:
        model = build_baseline_model(
            config.model_config,
            self.transformer_config,
            vocab_size=self.tokenizer.vocab_size,
            max_sequence_length=config.data.seq_length,
            use_te=self.use_te,
            pre_process=pre_process,
            post_process=post_process,
        )
        shape = config.model_config
        initialize_by_global_name(model, config.data.seed, shape.init_method_std, shape.num_layers)
        return model

    def build_datasets(self, config: Config, train_samples: int, valid_samples: int) -> TaskData:
        """GPTDataset samples (the DataLoader's default stacking suits them), or for speech-text
        blends the packed interleaved samples of ``_interleaved_datasets``."""
        prefixes, weights = parse_blend(config.data.data_path)
        self.dataset_names = tuple(dataset_names(prefixes)) if len(prefixes) > 1 else ()
        if any(is_speech_text_dataset(prefix) for prefix in prefixes):
            return self._interleaved_datasets(config, prefixes, weights, train_samples, valid_samples)
        return TaskData(*gpt_text_datasets(config, self.tokenizer, (prefixes, weights), train_samples, valid_samples))

    def speech_dataset_options(self) -> dict:
        """Extra ``LSTDatasetConfig`` fields for speech-text corpora (the BPE baseline's unit BPE)."""
        return {}

    def _interleaved_datasets(self, config, prefixes, weights, train_samples: int, valid_samples: int) -> TaskData:
        """Speech-text blends: the same packed interleaved samples LST reads, one token per position.

        A sample holds ``seq_length + 1`` tokens (inputs plus the last target), like GPTDataset's.
        """
        dataset_config = LSTDatasetConfig(
            random_seed=config.data.seed,
            sequence_length=config.data.seq_length + 1,
            blend=(prefixes, weights),
            split=config.data.split,
            path_to_cache=config.data.data_cache_path,
            vocab=self.tokenizer.vocab,
            interleave=interleave_config(config.data.data_mode, config.data.seed,
                                         config.data.opening_speech_uniform, config.data.text_document_marker),
            patch_size=1,
            max_tokens=config.data.seq_length + 1,
            **self.speech_dataset_options(),
        )
        train, valid, _ = build_lst_datasets(dataset_config, [train_samples, valid_samples, 0],
                                             weight_by=config.data.blend_weights)
        # sequence parallelism splits the packed length across the TP ranks: pad it to a multiple
        pad_to_multiple = config.parallel.tensor_model_parallel_size if config.parallel.sequence_parallel else 1
        collate = partial(packed_to_gpt_batch, pad_id=self.tokenizer.pad_id, length=config.data.seq_length + 1,
                          data_mode=config.data.data_mode, vocab=self.tokenizer.vocab,
                          pack=self.pack_sequences, pad_to_multiple=pad_to_multiple)
        return TaskData(train, valid, collate)

    def forward_step(self, data_iterator: Iterator[dict], model: torch.nn.Module) -> tuple:
        batch = next(data_iterator)
        device = next(model.parameters()).device
        is_speech = batch.get("is_speech")
        # rows' tokens as batch_tokens counts them (targets in the loss), so shares x tokens add up
        shares = dataset_token_shares(batch.get("dataset_id"), batch["loss_mask"].sum(1), self.dataset_names, device)
        loss_func = partial(modality_token_loss, batch["loss_mask"].to(device),
                            None if is_speech is None else is_speech.to(device), extra=shares)
        if "cu_seqlens" in batch:  # packed documents (packed_to_gpt_batch with pack=True)
            output = model(
                batch["packed_tokens"].long().to(device),
                batch["packed_position_ids"].long().to(device),
                None,
                labels=batch["packed_labels"].long().to(device),
                packed_seq_params=thd_params(batch["cu_seqlens"], int(batch["max_seqlen"]), device),
            )
            batch_size, seq_len = batch["loss_mask"].shape
            return output, partial(packed_token_loss, batch["packed_index"].to(device), batch_size, seq_len, loss_func)
        mask = batch.get("attention_mask")
        output = model(batch["tokens"].long().to(device), batch["position_ids"].long().to(device),
                       None if mask is None else mask.to(device), labels=batch["labels"].long().to(device))
        return output, loss_func

    def batch_tokens(self, batch: dict) -> int:
        return int(batch["loss_mask"].sum())

    def batch_positions(self, batch: dict) -> int:
        return self.batch_tokens(batch)  # one position per token

    def batch_flops(self, batch: dict) -> float:
        model = self.config.model_config
        return gpt_training_flops(
            num_tokens=int(batch["tokens"].numel()),
            seq_len=int(batch["tokens"].shape[1]),
            num_layers=model.num_layers,
            hidden_size=model.hidden_size,
            ffn_hidden_size=model.ffn_size(),
            num_attention_heads=model.num_attention_heads,
            num_query_groups=model.num_query_groups,
            vocab_size=padded_vocab_size(self.tokenizer.vocab_size, 1),
            gated_mlp=model.swiglu,
        )


def packed_to_gpt_batch(samples: list[dict], pad_id: int, length: int, data_mode: str = "interleaved",
                        vocab=None, pack: bool = False, pad_to_multiple: int = 1) -> dict:
    """Packed interleaved samples -> the GPT batch fields (inputs, shifted labels, loss mask).

    Attention is block-causal over the packed documents, as in LST's global model, so that the two
    models differ only in patching (causality comes from the attention module's causal mask type).
    Without ``pack`` that is a [B, 1, S, S] document mask. With ``pack`` (computed here, in the
    DataLoader workers, so the training step does no packing work) the batch also holds
    megatron's packed-sequence form of the same rows: ``packed_tokens``/``packed_labels``/
    ``packed_position_ids`` [1, T] (every document its own sequence, positions restarting in each;
    PAD positions, document -1, left out), ``cu_seqlens`` [documents + 1] int32, ``max_seqlen``,
    and ``packed_index`` [T] (flat [B, S] index of each packed token) to map the per-token loss
    back; ``pad_to_multiple`` appends a filler sequence so T divides by it (sequence parallelism).
    The [B, S] fields stay for the loss mask and token counting; no attention mask is built.
    """
    packed = collate_packed(samples, pad_id=pad_id, pad_to=length)
    tokens = packed["tokens"]
    labels = tokens[:, 1:].contiguous()
    loss_mask = (labels != pad_id).float()
    answer_mask = None if vocab is None else answer_target_mask(tokens, packed["document_ids"], data_mode, vocab)
    if answer_mask is not None:  # asr / tts fine-tuning: only the answer's targets
        loss_mask = loss_mask * answer_mask
    documents = packed["document_ids"][:, :-1]
    batch = {
        "tokens": tokens[:, :-1].contiguous(),
        "labels": torch.where(labels == pad_id, torch.zeros_like(labels), labels),
        "loss_mask": loss_mask,
        "position_ids": torch.arange(length - 1).expand(tokens.shape[0], -1).contiguous(),
        "is_speech": packed["is_speech"][:, 1:].contiguous(),
    }
    if "dataset_id" in packed:  # which blended dataset each row came from (the realised token shares)
        batch["dataset_id"] = packed["dataset_id"]
    if not pack:
        batch["attention_mask"] = documents[:, None, :, None] != documents[:, None, None, :]  # True = forbidden
        return batch
    layout = pack_documents(documents, pad_to_multiple=pad_to_multiple)
    batch.update(
        packed_tokens=layout.pack_tokens(batch["tokens"], fill=pad_id),
        packed_labels=layout.pack_tokens(batch["labels"], fill=0),
        packed_position_ids=layout.position_ids(),
        cu_seqlens=layout.params.cu_seqlens_q,
        max_seqlen=torch.tensor(layout.max_seqlen),
        packed_index=layout.token_index,
    )
    return batch


def packed_token_loss(token_index: torch.Tensor, batch_size: int, seq_len: int, loss_func: Callable,
                      per_token_loss: torch.Tensor):
    """megatron loss_func for a packed micro-batch: the per-token loss [1, T + filler] back to the
    rows' [B, S] layout (zeros at PAD positions and for the filler), then ``loss_func``."""
    return loss_func(unpack_token_values(per_token_loss, token_index, batch_size, seq_len))
