"""A :class:`~megatron_lst.evaluation.scoring.TokenScorer` backed by a trained checkpoint.

Evaluation runs in one process at TP = PP = 1: the model is built as the training task builds it
and ``load_checkpoint`` reads the weights through ``dist_checkpointing``, which reshards a checkpoint
saved at any TP/PP to this layout. The run's own configuration is read from the checkpoint's common
state (``config``, the repr of ``Config.to_dict()``), so the evaluator needs no training flags;
only the tokenizer path may be overridden when the checkpoint moved machines.

Supported: ``--model baseline`` (megatron-core GPTModel). ``--model lst`` needs the LST training
task (``megatron_lst.training.lst_task``) and raises a clear error until it exists.
"""

from __future__ import annotations

import ast
import os
import socket
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from megatron.core import dist_checkpointing

from megatron_lst.tokenizer import JointTokenizer
from megatron_lst.training.arguments import Config, config_from_values
from megatron_lst.training.checkpointing import iteration_dir, load_checkpoint, read_latest_iteration
from megatron_lst.training.initialize import initialize_distributed

SECTION_KEYS = ("parallel", "optimizer", "data", "train", "checkpoint", "logging")


def checkpoint_iteration_dir(root: str | Path, iteration: Optional[int] = None) -> Path:
    iteration = read_latest_iteration(root) if iteration is None else iteration
    if iteration is None:
        raise FileNotFoundError(f"{root} holds no checkpoint (no 'latest' pointer)")
    path = iteration_dir(root, iteration)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    return path


def config_from_checkpoint(root: str | Path, iteration: Optional[int] = None,
                           tokenizer_model: Optional[str] = None) -> Config:
    """The training run's Config, re-laid for single-process evaluation (TP = PP = 1, fp32 on CPU)."""
    common = dist_checkpointing.load_common_state_dict(str(checkpoint_iteration_dir(root, iteration)))
    if "config" not in common:
        raise KeyError(f"{root}: the checkpoint's common state has no 'config'; it was not written by pretrain_lst.py")
    saved = ast.literal_eval(common["config"])
    values = dict(saved["model_config"])
    for section in SECTION_KEYS:
        values.update(saved[section])
    values["extra"] = saved.get("extra", {})
    values.update(tensor_model_parallel_size=1, pipeline_model_parallel_size=1, sequence_parallel=False,
                  use_distributed_optimizer=False, load=str(root), save=None)
    if not torch.cuda.is_available():
        values["bf16"] = False
    if tokenizer_model is not None:
        values["tokenizer_model"] = tokenizer_model
    return config_from_values(values)


def _use_a_free_port_when_alone() -> None:
    """Outside torchrun, evaluation is one process: take a free rendezvous port rather than one
    inherited from a parent process (a test runner, a training script) that may still hold it."""
    if "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        os.environ["MASTER_PORT"] = str(probe.getsockname()[1])


def build_task(config: Config):
    """The training task of the run; it owns the tokenizer and the model builder."""
    if config.train.model == "baseline":
        from megatron_lst.training.baseline_task import BaselineTask

        return BaselineTask(config)
    if config.train.model == "lst":
        raise NotImplementedError(
            "evaluating --model lst is not yet supported: the LST model and task "
            "(megatron_lst/models/lst.py, megatron_lst/training/lst_task.py) are not in this tree yet")
    raise ValueError(f"unknown model {config.train.model!r} in the checkpoint's config")


class CheckpointScorer:
    """Log-probs of token t given tokens < t from a GPTModel-like checkpoint, batch by batch."""

    def __init__(self, model: torch.nn.Module, tokenizer: JointTokenizer, device: torch.device,
                 max_length: Optional[int] = None):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_length = max_length  # the training sequence length: longer inputs were never seen

    @classmethod
    def from_checkpoint(cls, root: str | Path, iteration: Optional[int] = None,
                        tokenizer_model: Optional[str] = None) -> "CheckpointScorer":
        config = config_from_checkpoint(root, iteration, tokenizer_model)
        if not torch.distributed.is_initialized():
            _use_a_free_port_when_alone()
        initialize_distributed(1, 1, seed=config.data.seed)
        task = build_task(config)
        model = task.build_model(config, True, True)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)
        if load_checkpoint(root, model, optimizer=None, scheduler=None, iteration=iteration, load_rng=False) is None:
            raise FileNotFoundError(f"nothing to load in {root}")
        model.eval()
        return cls(model, task.tokenizer, device, max_length=config.data.seq_length)

    @torch.no_grad()
    def token_logprobs(self, sequences: list[np.ndarray]) -> list[np.ndarray]:
        """Right-padded batch, causal attention: padding after a sequence cannot change it."""
        lengths = [len(sequence) for sequence in sequences]
        tokens = torch.full((len(sequences), max(lengths)), self.tokenizer.pad_id, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            tokens[row, :len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
        tokens = tokens.to(self.device)
        positions = torch.arange(tokens.shape[1], device=self.device).unsqueeze(0).expand_as(tokens)
        logits = self.model(tokens, positions, None)
        logits = logits[..., :self.tokenizer.vocab_size].float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
        return [logprobs[row, :length - 1].cpu().numpy().astype(np.float64)
                for row, length in enumerate(lengths)]
