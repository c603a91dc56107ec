"""What the training tasks share: the run's tokenizer, megatron's GPT datasets for text-only
corpora, and the loss that reports text and speech separately.

The baseline reads text-only corpora with megatron-core's ``GPTDataset`` as Megatron-LM does,
and LST reads the very same samples (every text token its own patch), so that the two models of
a text-only comparison see identical data; both build them here rather than one task building
the other.
"""

from __future__ import annotations

from typing import Optional

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from megatron_lst.tokenizer import JointTokenizer
from megatron_lst.training.arguments import Config
from megatron_lst.training.task import masked_token_loss


class MegatronTokenizerAdapter:
    """The few tokenizer attributes megatron-core's GPTDataset reads."""

    def __init__(self, tokenizer: JointTokenizer):
        self.vocab_size = tokenizer.vocab_size
        self.eod = tokenizer.eos_id
        self.pad = tokenizer.pad_id
        self.bos = tokenizer.bos_id
        # megatron-core hashes this into the dataset cache key: a new vocabulary, a new cache
        self.unique_identifiers = {"class": "JointTokenizer", **tokenizer.layout()}


def load_tokenizer(config: Config) -> JointTokenizer:
    if not config.data.tokenizer_model:
        raise ValueError("--tokenizer-model is required (a SentencePiece .model or .tiktoken file)")
    return JointTokenizer.from_file(config.data.tokenizer_model, config.data.tokenizer_type,
                                    num_units=config.data.num_units)


def gpt_text_datasets(config: Config, tokenizer: JointTokenizer, blend: tuple, train_samples: int,
                      valid_samples: int) -> tuple:
    """(train, valid) megatron ``GPTDataset`` blends of text-only corpora: ``--seq-length`` tokens
    and the next one per sample (megatron's tokens / labels)."""
    dataset_config = GPTDatasetConfig(
        random_seed=config.data.seed,
        sequence_length=config.data.seq_length,
        blend=blend,
        split=config.data.split,
        path_to_cache=config.data.data_cache_path,
        tokenizer=MegatronTokenizerAdapter(tokenizer),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        mmap_bin_files=True,
    )
    train, valid, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [train_samples, valid_samples, 0], lambda: True, dataset_config
    ).build()
    return train, valid


def modality_token_loss(loss_mask: torch.Tensor, is_speech_target, per_token_loss: torch.Tensor,
                        extra: Optional[dict] = None):
    """The mean-over-tokens loss plus separate text and speech losses when the batch has speech,
    and any ``extra`` reported metrics (the blend's token shares)."""
    extra = dict(extra or {})
    if is_speech_target is not None:
        losses = per_token_loss.float()
        speech = loss_mask * is_speech_target.float()
        text = loss_mask - speech
        extra["speech loss"] = torch.stack([(losses * speech).sum().detach(), speech.sum()])
        extra["text loss"] = torch.stack([(losses * text).sum().detach(), text.sum()])
    return masked_token_loss(loss_mask, per_token_loss, extra)
