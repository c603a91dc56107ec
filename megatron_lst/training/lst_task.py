"""The LST as a ``TrainingTask``: LSTModel over packed speech-text samples (or text-only corpora).

Batches reach ``forward_step`` as the N+1 tokens of each sample (inputs plus the last target)
with their per-token metadata and their ``patch_lengths``. The patch boundaries are computed once
per sample by the collate, in the DataLoader workers (the C++ kernel), keyed by the sample's
global index and the optimizer step that trains it (``training/sampler.py``'s ``SampleKey``), so
mixed and curriculum draws are a pure function of (seed, step, sample). Only tensor-parallel
rank 0 of each TP group reads; the others receive the batch by broadcast
(``training/batch_broadcast.py``), and no stage recomputes patches. Speech-text samples are
bucketed by token count (``data/bucketing.py``) so that rows of one micro-batch need little
padding. Text-only corpora are read with megatron-core's GPTDataset, exactly as the baseline
reads them: every text token is its own patch.
"""

from __future__ import annotations

from functools import partial
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import default_collate

from megatron_lst.data.blending import build_lst_datasets
from megatron_lst.data.datasets import LSTDatasetConfig
from megatron_lst.data.input_checks import parse_blend
from megatron_lst.data.sampler import collate_packed
from megatron_lst.data.speech_documents import is_speech_text_dataset
from megatron_lst.data.token_shares import dataset_names
from megatron_lst.models.baseline import padded_vocab_size
from megatron_lst.models.flops import lst_training_flops
from megatron_lst.models.init import initialize_by_global_name
from megatron_lst.models.local_patterns import local_attention_pairs
from megatron_lst.models.lst import LSTModel, lst_transformer_configs
from megatron_lst.models.specs import resolve_use_te
from megatron_lst.patching import PatchingConfig, compute_patches
from megatron_lst.patching.padding import merge_padding_patches
from megatron_lst.tokenizer import JointTokenizer, VocabLayout
from megatron_lst.training.arguments import Config, run_patching_config
from megatron_lst.training.data_modes import answer_target_mask, interleave_config
from megatron_lst.training.sampler import SamplingOptions
from megatron_lst.training.task import TaskData, TrainingTask, dataset_token_shares
from megatron_lst.training.task_common import gpt_text_datasets, load_tokenizer, modality_token_loss

SAMPLE_KEY_FIELDS = ("sample_index", "step")


def pop_sample_keys(samples: list[dict]) -> tuple[list[dict], Optional[np.ndarray], Optional[int]]:
    """Split the ``SampleKey`` fields off the items: (items, global sample indices, step).

    All samples of a micro-batch belong to one optimizer step; a mix is a sampler bug. Items read
    without keys (tests, tools) give ``(items, None, None)``.
    """
    if not samples or SAMPLE_KEY_FIELDS[0] not in samples[0]:
        return samples, None, None
    indices = np.asarray([int(sample["sample_index"]) for sample in samples], dtype=np.int64)
    steps = {int(sample["step"]) for sample in samples}
    if len(steps) != 1:
        raise ValueError(f"a micro-batch mixes samples of steps {sorted(steps)}; each must belong to one step")
    stripped = [{k: v for k, v in sample.items() if k not in SAMPLE_KEY_FIELDS} for sample in samples]
    return stripped, indices, steps.pop()


def gpt_samples_to_lst_batch(samples: list[dict]) -> dict:
    """GPTDataset items (tokens, labels) -> the N+1 text tokens of each sample, no speech.

    Every token is its own patch (the kernel agrees on text), so ``patch_lengths`` is all ones.
    """
    samples, _, _ = pop_sample_keys(samples)
    stacked = default_collate(samples)
    full = torch.cat([stacked["tokens"], stacked["labels"][:, -1:]], dim=1).long()
    batch = {"tokens": full, "is_speech": torch.zeros_like(full, dtype=torch.bool), "patch_lengths": torch.ones_like(full)}
    if "dataset_id" in stacked:  # a blend of text corpora: which one each row came from
        batch["dataset_id"] = stacked["dataset_id"]
    return batch


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


def batch_patch_lengths(batch: dict, patching: PatchingConfig, vocab: VocabLayout, step: int = 0,
                        sample_ids: Optional[np.ndarray] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(``patch_lengths`` [B, P], ``aligned`` [B]) of a collated batch of N+1-token rows.

    ``sample_ids`` (global sample indices) and ``step`` key the mixed/curriculum draw; ``aligned``
    says which rows it patched aligned (the curriculum's progress, logged per step). A row's
    right-padding becomes a single patch (patching/padding.py), so the global model runs on the
    longest row's real patches plus one, not on one position per PAD token.
    """
    tokens, is_speech = batch["tokens"].long(), batch["is_speech"].bool()
    if not is_speech.any():  # text only: every token its own patch (the kernel agrees)
        patch_lengths, aligned = torch.ones_like(tokens), torch.zeros(tokens.shape[0], dtype=torch.bool)
    else:
        patches = compute_patches(
            tokens, is_speech, patching, vocab,
            segment_ids=batch.get("segment_ids"), is_silence=batch.get("is_silence"),
            document_ids=batch.get("document_ids"), step=step, sample_ids=sample_ids,
        )
        patch_lengths, aligned = patches.patch_lengths.long(), patches.aligned.bool()
    if "num_tokens" in batch:
        patch_lengths = merge_padding_patches(patch_lengths, batch["num_tokens"])
    return patch_lengths, aligned


def aligned_speech_rows(aligned: torch.Tensor, is_speech: torch.Tensor, device: torch.device) -> torch.Tensor:
    """[rows patched aligned, rows with speech] of a micro-batch: summed over the step, the share of
    speech rows the mixed or curriculum draw patched aligned (a text-only row has nothing to patch)."""
    has_speech = is_speech.bool().any(dim=1)
    counts = torch.stack([(aligned.bool() & has_speech).sum(), has_speech.sum()])
    return counts.to(device=device, dtype=torch.float32)


def collate_lst_samples(samples: list[dict], bos_id: int, pad_id: int, patching: PatchingConfig,
                        vocab: VocabLayout) -> dict:
    """Packed samples, each document opened with BOS, right-padded to the longest, and patched.

    Runs in the DataLoader workers: the patch boundaries are computed here, once per sample, keyed
    by the items' ``sample_index`` and ``step`` (attached by ``training/sampler.KeyedDataset``).
    """
    samples, sample_ids, step = pop_sample_keys(samples)
    batch = collate_packed([open_documents_with_bos(sample, bos_id) for sample in samples], pad_id=pad_id)
    batch["patch_lengths"], batch["aligned"] = batch_patch_lengths(batch, patching, vocab, step=step or 0,
                                                                   sample_ids=sample_ids)
    if sample_ids is not None:  # which sample each row is: ties a row to its draw (tests, debugging)
        batch["sample_index"] = torch.from_numpy(sample_ids)
    return batch


def patch_lengths_of(batch: dict) -> torch.Tensor:
    """The batch's ``patch_lengths``, which the collate computes; a clear error when it did not."""
    if "patch_lengths" not in batch:
        raise KeyError("LST batch has no 'patch_lengths': LST batches are patched in the DataLoader's collate "
                       "(collate_lst_samples / gpt_samples_to_lst_batch), not in the task")
    return batch["patch_lengths"]


class LSTTask(TrainingTask):
    """Next-token prediction with the Latent Speech-Text Transformer."""

    name = "lst"
    dataset_names: tuple[str, ...] = ()  # set by build_datasets for a blend: the realised token shares

    def __init__(self, config: Config, tokenizer: Optional[JointTokenizer] = None):
        self.config = config
        self.tokenizer = tokenizer or load_tokenizer(config)
        self.patching = run_patching_config(config)
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
        self.reports_modalities = False  # text and speech losses, for speech-text corpora

    # ------------------------------------------------------------------ model and data
    def build_model(self, config: Config, pre_process: bool, post_process: bool) -> torch.nn.Module:
        model = LSTModel(
            config.model_config, self.global_config, self.encoder_config, self.decoder_config,
            vocab_size=padded_vocab_size(self.tokenizer.vocab_size, config.parallel.tensor_model_parallel_size),
            use_te=self.use_te, pre_process=pre_process, post_process=post_process,
        )
        shape = config.model_config
        initialize_by_global_name(model, config.data.seed, shape.init_method_std, shape.num_layers)
        for local in (getattr(model, "patch_encoder", None), getattr(model, "patch_decoder", None)):
            if local is not None:
                local.attention_implementation = config.train.local_attention_impl
        return model

    def build_datasets(self, config: Config, train_samples: int, valid_samples: int) -> TaskData:
        """``--seq-length`` counts global positions.

        Text-only blends: megatron's GPTDataset, seq_length tokens (+1 target), one patch each,
        exactly the baseline's samples. Speech-text blends: packed samples of seq_length + 1
        positions counted with static ``--patch-size`` patches and at most ``patch_size`` times
        as many tokens (compute-controlled: same positions, more raw tokens); aligned patching
        and the BOS that opens a split document's tail make the real patch count differ a little,
        which variable sequence lengths absorb.
        """
        prefixes, weights = parse_blend(config.data.data_path)
        self.dataset_names = tuple(dataset_names(prefixes)) if len(prefixes) > 1 else ()
        if not any(is_speech_text_dataset(prefix) for prefix in prefixes):
            train, valid = gpt_text_datasets(config, self.tokenizer, (prefixes, weights), train_samples, valid_samples)
            # rows of seq_length + 1 tokens: nothing to key or bucket
            return TaskData(train, valid, gpt_samples_to_lst_batch)
        positions = config.data.seq_length + 1
        dataset_config = LSTDatasetConfig(
            random_seed=config.data.seed,
            sequence_length=positions,
            blend=(prefixes, weights),
            split=config.data.split,
            path_to_cache=config.data.data_cache_path,
            vocab=self.tokenizer.vocab,
            interleave=interleave_config(config.data.data_mode, config.data.seed,
                                         config.data.opening_speech_uniform, config.data.text_document_marker),
            patch_size=self.patching.patch_size,
            max_tokens=positions * self.patching.patch_size,
        )
        train, valid, _ = build_lst_datasets(dataset_config, [train_samples, valid_samples, 0],
                                             weight_by=config.data.blend_weights)
        self.reports_modalities = True
        collate = partial(collate_lst_samples, bos_id=self.tokenizer.bos_id, pad_id=self.tokenizer.pad_id,
                          patching=self.patching, vocab=self.tokenizer.vocab)
        return TaskData(train, valid, collate, SamplingOptions(attach_keys=True, bucket_window=config.data.bucket_window,
                                                               seed=config.data.seed))

    # ------------------------------------------------------------------ training hooks
    def forward_step(self, data_iterator: Iterator[dict], model: torch.nn.Module) -> tuple:
        batch = next(data_iterator)
        tokens = batch["tokens"].long()
        inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        pad_id = self.tokenizer.pad_id
        loss_mask = self.loss_mask(batch)
        labels = torch.where(targets == pad_id, torch.zeros_like(targets), targets)
        documents = batch.get("document_ids")
        if documents is not None:
            documents = documents[:, :-1].contiguous()
        device = next(model.parameters()).device
        output = model(inputs.to(device), patch_lengths_of(batch).to(device), labels=labels.to(device),
                       document_ids=None if documents is None else documents.to(device))
        # decided per run, not per micro-batch: every rank must report the same metric names
        is_speech_target = batch["is_speech"][:, 1:].to(device) if self.reports_modalities else None
        shares = dataset_token_shares(batch.get("dataset_id"), (targets != pad_id).sum(1), self.dataset_names, device)
        if self.config.patching.patching != "static" and "aligned" in batch:
            shares["aligned rows"] = aligned_speech_rows(batch["aligned"], batch["is_speech"], device)
        return output, partial(modality_token_loss, loss_mask.to(device), is_speech_target, extra=shares)

    def loss_mask(self, batch: dict) -> torch.Tensor:
        """[B, N] float: the targets the loss averages over (not PAD; only the answer's in asr/tts modes)."""
        tokens = batch["tokens"].long()
        loss_mask = (tokens[:, 1:] != self.tokenizer.pad_id).float()
        answer_mask = answer_target_mask(tokens, batch.get("document_ids"), self.config.data.data_mode,
                                         self.tokenizer.vocab)
        return loss_mask if answer_mask is None else loss_mask * answer_mask

    def batch_tokens(self, batch: dict) -> int:
        return int((batch["tokens"][:, 1:] != self.tokenizer.pad_id).sum())

    def loss_tokens(self, batch: dict) -> int:
        return int(self.loss_mask(batch).sum())

    def batch_positions(self, batch: dict) -> int:
        """Real patches: a padded row's last patch holds its padding and is not counted."""
        padded_rows = int((batch["tokens"][:, -1] == self.tokenizer.pad_id).sum())
        return int((patch_lengths_of(batch) > 0).sum()) - padded_rows

    def flops_breakdown(self, batch: dict) -> dict[str, float]:
        """Training FLOPs of a micro-batch per module (encoder, global, decoder, total), with the
        attention score pairs the local kernels compute on this very batch's patterns."""
        batch_size, num_tokens = batch["tokens"].shape
        patch_lengths = patch_lengths_of(batch)
        documents = batch.get("document_ids")
        shape = self.config.model_config
        pairs = local_attention_pairs(patch_lengths, num_tokens - 1,
                                      None if documents is None else documents[:, :-1], shape)
        return lst_training_flops(shape, batch_size, num_tokens - 1, patch_lengths.shape[1],
                                  padded_vocab_size(self.tokenizer.vocab_size, 1), pairs)

    def batch_flops(self, batch: dict) -> float:
        return self.flops_breakdown(batch)["total"]
