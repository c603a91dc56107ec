"""A :class:`~megatron_lst.evaluation.scoring.TokenScorer` backed by a trained checkpoint.

Evaluation runs in one process at TP = PP = 1 on the model, run config and tokenizer that
training/checkpoint_loading.py reads from the checkpoint (shared with generation and conversion).

Both model families reduce to one function, next-token logits of a right-padded batch:

* baseline and bpe-baseline (megatron-core GPTModel): the model reads all L tokens; logits at t
  predict t + 1. The BPE baseline's tokenizer encodes speech items with the run's unit BPE.
* LST: the model reads the first L - 1 tokens with the patch lengths of all L (the one-patch lag,
  docs/method.md §2). By default patched *static* with the run's patch size whatever the training
  strategy: static needs nothing but the tokens, and a curriculum run ends on static patches
  (docs/method.md §3). ``patching="aligned"`` patches every row aligned instead, from per-token
  segment metadata built from the benchmark's word times (scoring.SequenceBuilder), with the
  run's silence mode, ``--patch-boundary`` and ``--max-patch-length``: the same kernel call and
  settings as a training row that the curriculum or mixed draw patched aligned.

Padding goes after each sequence and attention is causal, so it cannot change a sequence's
log-probs; for LST the pad tokens are text-like, each its own patch after the real ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from megatron_lst.patching import PatchingConfig, compute_patches
from megatron_lst.patching.padding import merge_padding_patches
from megatron_lst.tokenizer import JointTokenizer
from megatron_lst.training.arguments import Config
from megatron_lst.training.checkpoint_loading import fixed_patching_config, load_model
from megatron_lst.training.registry import spec_of

# (tokens [B, L], segment_ids [B, L] or None, is_silence [B, L] or None) -> logits [B, L - 1, V]
NextTokenLogits = Callable[..., torch.Tensor]


def baseline_logits(model: torch.nn.Module) -> NextTokenLogits:
    """Baselines are not patched: any segment metadata is ignored."""

    def logits(tokens: torch.Tensor, segment_ids: Optional[torch.Tensor] = None,
               is_silence: Optional[torch.Tensor] = None) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)
        return model(tokens, positions, None)[:, :-1]

    return logits


def scoring_patch_lengths(tokens: torch.Tensor, patching: PatchingConfig, tokenizer: JointTokenizer,
                          segment_ids: Optional[torch.Tensor] = None,
                          is_silence: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Patch lengths [B, P] of right-padded rows [B, L], as the training collate computes them (one
    kernel call, then each row's padding merged into one patch). Aligned patching needs the rows'
    ``segment_ids`` / ``is_silence`` (PAD and text: -1 / False)."""
    if patching.strategy == "aligned" and segment_ids is None:
        raise ValueError("aligned patching needs segment ids: score with SequenceBuilder(word_times=True)")
    if patching.strategy == "static":
        segment_ids = is_silence = None  # static reads none, and then the kernel validates none
    is_speech = torch.as_tensor(tokenizer.vocab.is_unit(tokens.cpu().numpy()), device=tokens.device)
    # padding is no document (-1), so a causal run's open speech patch never takes a PAD
    document_ids = torch.where(tokens != tokenizer.pad_id, 0, -1).int()
    patch_lengths = compute_patches(tokens, is_speech, patching, tokenizer.vocab, segment_ids=segment_ids,
                                    is_silence=is_silence, document_ids=document_ids).patch_lengths.long()
    num_tokens = (tokens != tokenizer.pad_id).sum(dim=1)
    return merge_padding_patches(patch_lengths, num_tokens)


def patched_lst_logits(model: torch.nn.Module, patching: PatchingConfig, tokenizer: JointTokenizer) -> NextTokenLogits:
    """Next-token logits of an LST model under ``patching``; the model reads all but the last token
    with the patch lengths of the whole row (the one-patch lag)."""

    def logits(tokens: torch.Tensor, segment_ids: Optional[torch.Tensor] = None,
               is_silence: Optional[torch.Tensor] = None) -> torch.Tensor:
        patch_lengths = scoring_patch_lengths(tokens, patching, tokenizer, segment_ids, is_silence)
        return model(tokens[:, :-1].contiguous(), patch_lengths.to(tokens.device))

    return logits


def lst_logits(model: torch.nn.Module, config: Config, tokenizer: JointTokenizer,
               patching: str = "static") -> NextTokenLogits:
    """The run's patching settings with the strategy ``static`` (default) or ``aligned``. Rows are
    right-padded with PAD (``CheckpointScorer``); a row's padding is one patch, as in training."""
    return patched_lst_logits(model, fixed_patching_config(config, patching), tokenizer)


def next_token_logits(model: torch.nn.Module, config: Config, tokenizer: JointTokenizer,
                      patching: str = "static") -> NextTokenLogits:
    """``patching`` applies to patched models (LST) only; the others ignore it."""
    if spec_of(config).patched:
        return lst_logits(model, config, tokenizer, patching)
    return baseline_logits(model)


class CheckpointScorer:
    """Log-probs of token t given tokens < t from a trained checkpoint, batch by batch."""

    def __init__(self, logits_of: NextTokenLogits, model: torch.nn.Module, tokenizer: JointTokenizer,
                 device: torch.device, max_length: Optional[int] = None):
        self.logits_of = logits_of
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        # Tokens per sequence: the run's --seq-length. For LST that counts patches, so the cap is
        # conservative (never more global positions than in training), tight for text, loose for speech.
        self.max_length = max_length

    @classmethod
    def from_checkpoint(cls, root: str | Path, iteration: Optional[int] = None,
                        tokenizer_model: Optional[str] = None, unit_bpe: Optional[str] = None,
                        patching: str = "static") -> "CheckpointScorer":
        """``patching`` (static / aligned) applies to LST checkpoints; baselines ignore it."""
        return cls.from_loaded(*load_model(root, iteration, tokenizer_model, unit_bpe), patching=patching)

    @classmethod
    def from_loaded(cls, model: torch.nn.Module, config, tokenizer: JointTokenizer, device: torch.device,
                    patching: str = "static") -> "CheckpointScorer":
        """A scorer over a model ``load_model`` already returned: a second patching of the same
        checkpoint needs no second read of it."""
        return cls(next_token_logits(model, config, tokenizer, patching), model, tokenizer, device,
                   max_length=config.data.seq_length)

    @torch.no_grad()
    def token_logprobs(self, sequences: list[np.ndarray],
                       alignments: Optional[list[Optional[tuple[np.ndarray, np.ndarray]]]] = None
                       ) -> list[np.ndarray]:
        """``alignments``: per sequence its (segment_ids, is_silence), for aligned LST scoring."""
        lengths = [len(sequence) for sequence in sequences]
        tokens = torch.full((len(sequences), max(lengths)), self.tokenizer.pad_id, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            tokens[row, :len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
        segment_ids = is_silence = None
        if alignments is not None:
            if len(alignments) != len(sequences) or any(a is None for a in alignments):
                raise ValueError("alignments must give (segment_ids, is_silence) for every sequence")
            segment_ids = torch.full(tokens.shape, -1, dtype=torch.int32)
            is_silence = torch.zeros(tokens.shape, dtype=torch.bool)
            for row, (row_segments, row_silence) in enumerate(alignments):
                if len(row_segments) != lengths[row] or len(row_silence) != lengths[row]:
                    raise ValueError(f"sequence {row}: {lengths[row]} tokens but alignment of "
                                     f"{len(row_segments)} / {len(row_silence)}")
                segment_ids[row, :lengths[row]] = torch.as_tensor(np.asarray(row_segments), dtype=torch.int32)
                is_silence[row, :lengths[row]] = torch.as_tensor(np.asarray(row_silence), dtype=torch.bool)
        tokens = tokens.to(self.device)
        if segment_ids is None:
            logits = self.logits_of(tokens)
        else:
            logits = self.logits_of(tokens, segment_ids.to(self.device), is_silence.to(self.device))
        logits = logits[..., :self.tokenizer.vocab_size].float()
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
        return [logprobs[row, :length - 1].cpu().numpy().astype(np.float64)
                for row, length in enumerate(lengths)]
