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
  docs/method.md §2), patched *static* with the run's patch size whatever the training strategy: the paper
  evaluates without an aligner (docs/method.md §3), and static needs nothing but the tokens.

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
from megatron_lst.patching import compute_patches
from megatron_lst.patching.padding import merge_padding_patches
from megatron_lst.tokenizer import JointTokenizer
from megatron_lst.training.arguments import SECTIONS, Config, config_from_values
from megatron_lst.training.checkpointing import iteration_dir, load_checkpoint, read_latest_iteration
from megatron_lst.training.initialize import initialize_distributed
from megatron_lst.unit_bpe_tokenizer import UnitBPETokenizer, check_saved_layout

NextTokenLogits = Callable[[torch.Tensor], torch.Tensor]


def checkpoint_iteration_dir(root: str | Path, iteration: Optional[int] = None) -> Path:
    iteration = read_latest_iteration(root) if iteration is None else iteration
    if iteration is None:
        raise FileNotFoundError(f"{root} holds no checkpoint (no 'latest' pointer)")
    path = iteration_dir(root, iteration)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    return path


def read_common_state(root: str | Path, iteration: Optional[int] = None) -> dict:
    return dist_checkpointing.load_common_state_dict(str(checkpoint_iteration_dir(root, iteration)))


def check_vocabulary(common: dict, tokenizer: JointTokenizer) -> None:
    """Refuse a tokenizer whose id layout differs from the one the model was trained with."""
    if "vocab_layout" not in common:
        if isinstance(tokenizer, UnitBPETokenizer):
            raise ValueError("the checkpoint records no vocab_layout, so its unit BPE cannot be checked")
        return
    saved = ast.literal_eval(common["vocab_layout"])
    # the unit BPE first: another BPE also changes num_units, and its error names the BPE
    check_saved_layout(saved, tokenizer, "checkpoint")
    for name in ("text_vocab_size", "num_units", "spare_units"):
        if saved.get(name) != getattr(tokenizer.vocab, name):
            raise ValueError(f"the tokenizer gives {name} = {getattr(tokenizer.vocab, name)} but the model "
                             f"was trained with {saved.get(name)}: pass the run's --tokenizer-model")


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
    def logits(tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)
        return model(tokens, positions, None)[:, :-1]

    return logits


def lst_logits(model: torch.nn.Module, config: Config, tokenizer: JointTokenizer) -> NextTokenLogits:
    """Static patching of the whole sequence; the model reads all but the last token. Rows are
    right-padded with PAD (``CheckpointScorer``); a row's padding is one patch, as in training."""
    static = config.patching.to_patching_config(config.train.train_iters, config.data.seed)
    static = replace(static, strategy="static")

    def logits(tokens: torch.Tensor) -> torch.Tensor:
        is_speech = torch.as_tensor(tokenizer.vocab.is_unit(tokens.cpu().numpy()), device=tokens.device)
        # padding is no document (-1), so a causal run's open speech patch never takes a PAD
        document_ids = torch.where(tokens != tokenizer.pad_id, 0, -1).int()
        patch_lengths = compute_patches(tokens, is_speech, static, tokenizer.vocab,
                                        document_ids=document_ids).patch_lengths.long()
        num_tokens = (tokens != tokenizer.pad_id).sum(dim=1)
        patch_lengths = merge_padding_patches(patch_lengths, num_tokens)
        return model(tokens[:, :-1].contiguous(), patch_lengths.to(tokens.device))

    return logits


def next_token_logits(model: torch.nn.Module, config: Config, tokenizer: JointTokenizer) -> NextTokenLogits:
    if config.train.model == "lst":
        return lst_logits(model, config, tokenizer)
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
    if load_checkpoint(root, model, optimizer=None, scheduler=None, iteration=iteration, load_rng=False) is None:
        raise FileNotFoundError(f"nothing to load in {root}")
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
                        tokenizer_model: Optional[str] = None, unit_bpe: Optional[str] = None) -> "CheckpointScorer":
        model, config, tokenizer, device = load_model(root, iteration, tokenizer_model, unit_bpe)
        return cls(next_token_logits(model, config, tokenizer), model, tokenizer, device,
                   max_length=config.data.seq_length)

    @torch.no_grad()
    def token_logprobs(self, sequences: list[np.ndarray]) -> list[np.ndarray]:
        lengths = [len(sequence) for sequence in sequences]
        tokens = torch.full((len(sequences), max(lengths)), self.tokenizer.pad_id, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            tokens[row, :len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
        tokens = tokens.to(self.device)
        logits = self.logits_of(tokens)[..., :self.tokenizer.vocab_size].float()
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
        return [logprobs[row, :length - 1].cpu().numpy().astype(np.float64)
                for row, length in enumerate(lengths)]
