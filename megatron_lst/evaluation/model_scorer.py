"""A :class:`~megatron_lst.evaluation.scoring.TokenScorer` backed by a trained checkpoint.

Evaluation runs in one process at TP = PP = 1: the model is built as the training task builds it
and ``load_checkpoint`` reads the weights through ``dist_checkpointing``, which reshards a checkpoint
saved at any TP/PP to this layout. The run's own configuration is read from the checkpoint's common
state (``config``, the repr of ``Config.to_dict()``), so the evaluator needs no training flags;
only the tokenizer path may be overridden when the checkpoint moved machines.

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

import ast
import dataclasses
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from megatron.core import dist_checkpointing

from megatron_lst.models.config import ModelConfig
from megatron_lst.patching import PatchingConfig, compute_patches
from megatron_lst.patching.padding import merge_padding_patches
from megatron_lst.tokenizer import JointTokenizer, text_model_difference
from megatron_lst.training.arguments import SECTIONS, Config, config_from_values
from megatron_lst.training.checkpoint_manifest import CheckpointError
from megatron_lst.training.checkpointing import iteration_dir, load_checkpoint, resolve_iteration
from megatron_lst.training.initialize import initialize_distributed
from megatron_lst.unit_bpe_tokenizer import UnitBPETokenizer, check_saved_layout
from megatron_lst.validation import InputError

# (tokens [B, L], segment_ids [B, L] or None, is_silence [B, L] or None) -> logits [B, L - 1, V]
NextTokenLogits = Callable[..., torch.Tensor]
SCORING_PATCHINGS = ("static", "aligned")


def checkpoint_iteration_dir(root: str | Path, iteration: Optional[int] = None) -> Path:
    """The latest (or given) checkpoint folder of ``root``, verified against its manifest before
    anything in it is read; a tool asked for one checkpoint does not fall back to another
    (``CheckpointError`` names the file that failed)."""
    iteration = resolve_iteration(root, iteration)
    if iteration is None:
        what = "holds no checkpoint (no 'latest' pointer)" if Path(root).is_dir() else "no such checkpoint folder"
        raise CheckpointError(what, file=root)
    return iteration_dir(root, iteration)


def read_common_state(root: str | Path, iteration: Optional[int] = None) -> dict:
    return dist_checkpointing.load_common_state_dict(str(checkpoint_iteration_dir(root, iteration)))


def check_vocabulary(common: dict, tokenizer: JointTokenizer) -> None:
    """Refuse a tokenizer whose id layout differs from the one the model was trained with."""
    if "vocab_layout" not in common:
        if isinstance(tokenizer, UnitBPETokenizer):
            raise InputError("the checkpoint records no vocab_layout, so its unit BPE cannot be checked")
        return
    saved = ast.literal_eval(common["vocab_layout"])
    # the unit BPE first: another BPE also changes num_units, and its error names the BPE
    check_saved_layout(saved, tokenizer, "checkpoint")
    for name in ("text_vocab_size", "num_units", "spare_units"):
        if saved.get(name) != getattr(tokenizer.vocab, name):
            raise InputError(f"the tokenizer gives {name} = {getattr(tokenizer.vocab, name)} but the model "
                             f"was trained with {saved.get(name)}: pass the run's --tokenizer-model",
                             field="--tokenizer-model")
    check_text_model(saved.get("text_model", {}), tokenizer)


def check_text_model(saved: dict, tokenizer: JointTokenizer) -> None:
    """Same pieces, not just the same size: a tokenizer of equal size but other pieces would score
    (or generate) silently wrong. Checkpoints saved before the fingerprint existed get a warning."""
    current = tokenizer.text_model.describe()
    difference = text_model_difference(saved, current)
    if difference is not None:
        raise InputError(f"the text tokenizer differs from the one the model was trained with: {difference}; "
                         "pass the run's --tokenizer-model", field="--tokenizer-model")
    if "pieces_sha256" in current and "pieces_sha256" not in saved:
        print(f"warning: the checkpoint records no tokenizer fingerprint (saved by an older version): cannot check "
              f"that {current.get('path')} has the pieces the model was trained with", file=sys.stderr)


def check_checkpoint_shapes(checkpoint_dir: str | Path, model: torch.nn.Module) -> None:
    """Every tensor the model expects must be in the checkpoint with the same global shape; a run
    config that builds another model (edited, or another version's defaults) is named tensor by
    tensor instead of failing deep inside the loader."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    saved = dist_checkpointing.load_tensors_metadata(str(checkpoint_dir))
    for expected in nested_values(model.sharded_state_dict()):
        if not isinstance(expected, ShardedTensor):
            continue
        stored = saved.get(expected.key)
        if stored is None:
            raise CheckpointError(f"not in the checkpoint, but the model built from its run config has it "
                                  f"(shape {tuple(expected.global_shape)})", file=checkpoint_dir, field=expected.key)
        if tuple(stored.global_shape) != tuple(expected.global_shape):
            raise CheckpointError(f"checkpoint shape {tuple(stored.global_shape)}, model shape "
                                  f"{tuple(expected.global_shape)} (the run config builds another model)",
                                  file=checkpoint_dir, field=expected.key)


def config_from_checkpoint(root: str | Path, iteration: Optional[int] = None,
                           tokenizer_model: Optional[str] = None, unit_bpe: Optional[str] = None) -> Config:
    """The training run's Config, re-laid for single-process evaluation (TP = PP = 1, fp32 on CPU)."""
    common = read_common_state(root, iteration)
    if "config" not in common:
        raise KeyError(f"{root}: the checkpoint's common state has no 'config'; it was not written by pretrain_lst.py")
    saved = ast.literal_eval(common["config"])
    values = dict(saved["model_config"])
    for section in SECTIONS:
        values.update(saved.get(section, {}))
    known = {f.name for cls in (ModelConfig, *SECTIONS.values()) for f in dataclasses.fields(cls)}
    dropped = sorted(set(values) - known)
    if dropped:  # a checkpoint from an older version of the code: its settings we no longer have
        print(f"note: ignoring settings this version does not know: {dropped}", file=sys.stderr)
    values = {name: value for name, value in values.items() if name in known}
    values["extra"] = saved.get("extra", {})
    values.update(tensor_model_parallel_size=1, pipeline_model_parallel_size=1, sequence_parallel=False,
                  use_distributed_optimizer=False, load=str(root), save=None)
    if not torch.cuda.is_available():
        values["bf16"] = False
    if tokenizer_model is not None:
        values["tokenizer_model"] = tokenizer_model
    if unit_bpe is not None:  # a moved BPE file; its content hash is still checked (check_vocabulary)
        values["unit_bpe"] = unit_bpe
    return config_from_values(values)


def initialize_single_process(seed: int) -> None:
    """TP = PP = 1 process groups. Outside torchrun, rendezvous on a free port, and only for the
    moment of initialisation: a port inherited from a parent (a test runner, a training script), or
    one left in the environment for children, may still be held."""
    if torch.distributed.is_initialized() or "WORLD_SIZE" in os.environ:
        initialize_distributed(1, 1, seed=seed)
        return
    saved = {name: os.environ.get(name) for name in ("MASTER_ADDR", "MASTER_PORT")}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    try:
        initialize_distributed(1, 1, seed=seed)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def build_task(config: Config):
    """The training task of the run; it owns the tokenizer and the model builder."""
    if config.train.model == "baseline":
        from megatron_lst.training.baseline_task import BaselineTask

        return BaselineTask(config)
    if config.train.model == "bpe-baseline":
        from megatron_lst.training.bpe_baseline_task import BPEBaselineTask

        return BPEBaselineTask(config)
    if config.train.model == "lst":
        from megatron_lst.training.lst_task import LSTTask

        return LSTTask(config)
    raise ValueError(f"unknown model {config.train.model!r} in the checkpoint's config")


def baseline_logits(model: torch.nn.Module) -> NextTokenLogits:
    """Baselines are not patched: any segment metadata is ignored."""

    def logits(tokens: torch.Tensor, segment_ids: Optional[torch.Tensor] = None,
               is_silence: Optional[torch.Tensor] = None) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)
        return model(tokens, positions, None)[:, :-1]

    return logits


def scoring_patching_config(config: Config, patching: str = "static") -> PatchingConfig:
    """The run's PatchingConfig (patch size, silence mode, cap, marker folding, patch boundary) with
    the strategy fixed to ``static`` or ``aligned``: at evaluation no row is drawn at random."""
    if patching not in SCORING_PATCHINGS:
        raise ValueError(f"scoring patches 'static' or 'aligned', not {patching!r}")
    run = config.patching.to_patching_config(config.train.train_iters, config.data.seed)
    return replace(run, strategy=patching)


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
    return patched_lst_logits(model, scoring_patching_config(config, patching), tokenizer)


def next_token_logits(model: torch.nn.Module, config: Config, tokenizer: JointTokenizer,
                      patching: str = "static") -> NextTokenLogits:
    """``patching`` applies to LST only; baselines are not patched and ignore it."""
    if config.train.model == "lst":
        return lst_logits(model, config, tokenizer, patching)
    return baseline_logits(model)


def load_model(root: str | Path, iteration: Optional[int] = None, tokenizer_model: Optional[str] = None,
               unit_bpe: Optional[str] = None) -> tuple[torch.nn.Module, Config, JointTokenizer, torch.device]:
    """The trained model (eval mode, TP = PP = 1, on GPU when there is one), its run's config and
    tokenizer; shared by scoring and generation (megatron_lst/inference/loading.py). For the BPE
    baseline the tokenizer holds the run's unit BPE, so speech items are scored as its pieces."""
    config = config_from_checkpoint(root, iteration, tokenizer_model, unit_bpe)
    initialize_single_process(config.data.seed)
    task = build_task(config)
    check_vocabulary(read_common_state(root, iteration), task.tokenizer)
    model = task.build_model(config, True, True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    check_checkpoint_shapes(checkpoint_iteration_dir(root, iteration), model)
    if load_checkpoint(root, model, optimizer=None, scheduler=None, iteration=iteration, load_rng=False) is None:
        raise CheckpointError("nothing to load", file=root)
    return model.eval(), config, task.tokenizer, device


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
        model, config, tokenizer, device = load_model(root, iteration, tokenizer_model, unit_bpe)
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
