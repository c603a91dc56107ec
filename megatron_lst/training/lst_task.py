"""The LST as a ``TrainingTask``: LSTModel over packed speech-text samples (or text-only corpora).

Batches reach ``forward_step`` as the N+1 tokens of each sample (inputs plus the last target)
with their per-token metadata; the patch boundaries are computed here, on every pipeline stage
and tensor-parallel rank alike (the C++ kernel is deterministic), and cached on the batch so that
FLOPs counting and the forward pass see the same patches. Text-only corpora are read with
megatron-core's GPTDataset, exactly as the baseline reads them: every text token is its own patch.
"""

from __future__ import annotations

from functools import partial
from typing import Iterator, Optional

import numpy as np
import torch
from megatron.core import parallel_state
from torch.utils.data import default_collate

from megatron_lst.data.blending import build_lst_datasets
from megatron_lst.data.datasets import LSTDatasetConfig
from megatron_lst.data.sampler import collate_packed
from megatron_lst.data.speech_documents import is_speech_text_dataset
from megatron_lst.models.baseline import padded_vocab_size
from megatron_lst.models.flops import lst_training_flops
from megatron_lst.models.init import initialize_by_global_name
from megatron_lst.models.lst import LSTModel, lst_transformer_configs
from megatron_lst.models.specs import resolve_use_te
from megatron_lst.patching import compute_patches
from megatron_lst.patching.padding import merge_padding_patches
from megatron_lst.tokenizer import JointTokenizer
from megatron_lst.training.arguments import Config
from megatron_lst.training.baseline_task import BaselineTask, load_tokenizer, modality_token_loss, parse_blend
from megatron_lst.training.data_modes import answer_target_mask, interleave_config


def gpt_samples_to_lst_batch(samples: list[dict]) -> dict:
    """GPTDataset items (tokens, labels) -> the N+1 text tokens of each sample, no speech."""
    stacked = default_collate(samples)
    full = torch.cat([stacked["tokens"], stacked["labels"][:, -1:]], dim=1).long()
    return {"tokens": full, "is_speech": torch.zeros_like(full, dtype=torch.bool)}


def open_documents_with_bos(sample: dict, bos_id: int) -> dict:
    """Prepend BOS to every document piece of a packed sample that does not start with one.

    The packer may start a sample with the tail of a split document; the patching schema (and
    the one-patch lag: token 0 must sit in a complete length-1 patch) needs BOS there.
    """
    documents = np.asarray(sample["document_ids"])
    starts = np.flatnonzero(np.r_[True, documents[1:] != documents[:-1]])
    missing = starts[np.asarray(sample["tokens"])[starts] != bos_id]
    if len(missing) == 0:
        return sample
    fill = {"tokens": bos_id, "is_speech": False, "segment_ids": -1, "is_silence": False}
    opened = dict(sample)
    for name, value in fill.items():
        opened[name] = np.insert(np.asarray(sample[name]), missing, value)
    opened["document_ids"] = np.insert(documents, missing, documents[missing])
    return opened


def collate_lst_samples(samples: list[dict], bos_id: int, pad_id: int) -> dict:
    """Packed samples, each document opened with BOS, right-padded to the longest."""
    return collate_packed([open_documents_with_bos(sample, bos_id) for sample in samples], pad_id=pad_id)


class LSTTask:
    """Next-token prediction with the Latent Speech-Text Transformer."""

    name = "lst"

    def __init__(self, config: Config, tokenizer: Optional[JointTokenizer] = None):
        self.config = config
        self.tokenizer = tokenizer or load_tokenizer(config)
        self.patching = config.patching.to_patching_config(config.train.train_iters, config.data.seed)
        self.use_te = resolve_use_te(config.train.transformer_impl)
        self.global_config, self.encoder_config, self.decoder_config = lst_transformer_configs(
            config.model_config,
            tensor_model_parallel_size=config.parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=config.parallel.pipeline_model_parallel_size,
            first_stage_layers=config.parallel.decoder_first_pipeline_num_layers,
            last_stage_layers=config.parallel.decoder_last_pipeline_num_layers,
            bf16=config.train.bf16,
            sequence_parallel=config.parallel.sequence_parallel,
            recompute=config.train.recompute_granularity,
        )
        self.transformer_config = self.global_config
        self.collate = None
        self.reports_modalities = False  # text and speech losses, for speech-text corpora
        self.step = 0
        self.microbatch_in_step = 0

    # ------------------------------------------------------------------ model and data
    def build_model(self, config: Config, pre_process: bool, post_process: bool) -> torch.nn.Module:
        model = LSTModel(
            config.model_config, self.global_config, self.encoder_config, self.decoder_config,
            vocab_size=padded_vocab_size(self.tokenizer.vocab_size, config.parallel.tensor_model_parallel_size),
            use_te=self.use_te, pre_process=pre_process, post_process=post_process,
        )
        shape = config.model_config
        initialize_by_global_name(model, config.data.seed, shape.init_method_std, shape.num_layers)
        return model

    def build_datasets(self, config: Config, train_samples: int, valid_samples: int) -> tuple:
        """``--seq-length`` counts global positions.

        Text-only blends: megatron's GPTDataset, seq_length tokens (+1 target), one patch each,
        exactly the baseline's samples. Speech-text blends: packed samples of seq_length + 1
        positions counted with static ``--patch-size`` patches and at most ``patch_size`` times
        as many tokens (compute-controlled: same positions, more raw tokens); aligned patching
        and the BOS that opens a split document's tail make the real patch count differ a little,
        which variable sequence lengths absorb.
        """
        prefixes, weights = parse_blend(config.data.data_path)
        if not any(is_speech_text_dataset(prefix) for prefix in prefixes):
            train, valid = BaselineTask(config, self.tokenizer).build_datasets(config, train_samples, valid_samples)
            self.collate = gpt_samples_to_lst_batch
            return train, valid
        positions = config.data.seq_length + 1
        dataset_config = LSTDatasetConfig(
            random_seed=config.data.seed,
            sequence_length=positions,
            blend=(prefixes, weights),
            split=config.data.split,
            path_to_cache=config.data.data_cache_path,
            vocab=self.tokenizer.vocab,
            interleave=interleave_config(config.data.data_mode, config.data.seed),
            patch_size=self.patching.patch_size,
            max_tokens=positions * self.patching.patch_size,
        )
        train, valid, _ = build_lst_datasets(dataset_config, [train_samples, valid_samples, 0])
        self.reports_modalities = True
        self.collate = partial(collate_lst_samples, bos_id=self.tokenizer.bos_id, pad_id=self.tokenizer.pad_id)
        return train, valid

    # ------------------------------------------------------------------ patching
    def set_step(self, iteration: int) -> None:
        """The curriculum's clock; also restarts the micro-batch count that keys per-sample choices."""
        self.step = iteration
        self.microbatch_in_step = 0

    def _sample_ids(self, batch_size: int) -> torch.Tensor:
        """Ids unique within a step across micro-batches and data-parallel ranks (mixed/curriculum)."""
        per_rank = self.config.data.global_batch_size
        base = parallel_state.get_data_parallel_rank() * per_rank + self.microbatch_in_step * batch_size
        self.microbatch_in_step += 1
        return torch.arange(base, base + batch_size)

    def patched(self, batch: dict) -> dict:
        """Add ``patch_lengths`` [B, P] (patching the N+1 tokens) to the batch, once.

        A row's right-padding becomes a single patch (patching/padding.py), so the global model
        runs on the longest row's real patches plus one, not on one position per PAD token.
        """
        if "patch_lengths" in batch:
            return batch
        tokens, is_speech = batch["tokens"].long(), batch["is_speech"].bool()
        if not is_speech.any():  # text only: every token its own patch (the kernel agrees)
            patch_lengths = torch.ones_like(tokens)
        else:
            patch_lengths = compute_patches(
                tokens, is_speech, self.patching, self.tokenizer.vocab,
                segment_ids=batch.get("segment_ids"), is_silence=batch.get("is_silence"),
                document_ids=batch.get("document_ids"), step=self.step, sample_ids=self._sample_ids(tokens.shape[0]),
            ).patch_lengths.long()
        if "num_tokens" in batch:
            patch_lengths = merge_padding_patches(patch_lengths, batch["num_tokens"])
        batch["patch_lengths"] = patch_lengths
        return batch

    # ------------------------------------------------------------------ training hooks
    def forward_step(self, data_iterator: Iterator[dict], model: torch.nn.Module) -> tuple:
        batch = self.patched(next(data_iterator))
        tokens = batch["tokens"].long()
        inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        pad_id = self.tokenizer.pad_id
        loss_mask = (targets != pad_id).float()
        labels = torch.where(targets == pad_id, torch.zeros_like(targets), targets)
        documents = batch.get("document_ids")
        answer_mask = answer_target_mask(tokens, documents, self.config.data.data_mode, self.tokenizer.vocab)
        if answer_mask is not None:
            loss_mask = loss_mask * answer_mask
        if documents is not None:
            documents = documents[:, :-1].contiguous()
        device = next(model.parameters()).device
        output = model(inputs.to(device), batch["patch_lengths"].to(device), labels=labels.to(device),
                       document_ids=None if documents is None else documents.to(device))
        # decided per run, not per micro-batch: every rank must report the same metric names
        is_speech_target = batch["is_speech"][:, 1:].to(device) if self.reports_modalities else None
        return output, partial(modality_token_loss, loss_mask.to(device), is_speech_target)

    def batch_tokens(self, batch: dict) -> int:
        return int((batch["tokens"][:, 1:] != self.tokenizer.pad_id).sum())

    def batch_positions(self, batch: dict) -> int:
        """Real patches: a padded row's last patch holds its padding and is not counted."""
        batch = self.patched(batch)
        padded_rows = int((batch["tokens"][:, -1] == self.tokenizer.pad_id).sum())
        return int((batch["patch_lengths"] > 0).sum()) - padded_rows

    def flops_breakdown(self, batch: dict) -> dict[str, float]:
        """Training FLOPs of a micro-batch per module (encoder, global, decoder, total)."""
        batch = self.patched(batch)
        batch_size, num_tokens = batch["tokens"].shape
        return lst_training_flops(
            self.config.model_config, batch_size, num_tokens - 1, batch["patch_lengths"].shape[1],
            padded_vocab_size(self.tokenizer.vocab_size, 1),
        )

    def batch_flops(self, batch: dict) -> float:
        return self.flops_breakdown(batch)["total"]
