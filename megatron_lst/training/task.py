"""What the loop needs from a model family: build it, feed it, score it.

The loop (``training/loop.py``) is model-agnostic; a ``TrainingTask`` supplies the model
builder, the datasets, the megatron ``forward_step`` and the FLOPs of a micro-batch. Reported
metrics are ``{name: tensor([sum, count])}`` so that the loop can add them across micro-batches
and data-parallel ranks and divide once (a per-token mean over the whole global batch).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from megatron_lst.training.arguments import Config
from megatron_lst.training.sampler import SamplingOptions

SHARE_PREFIX = "share "  # reported metric "share <dataset name>": that dataset's fraction of the step's tokens


@dataclass
class TaskData:
    """What ``build_datasets`` returns: the map-style datasets (items are dicts of arrays) and how the
    sampler must deliver them. ``collate`` turns a micro-batch's samples into the batch
    ``forward_step`` reads (None: the DataLoader's default stacking); ``sampling`` says whether the
    items carry their sample keys and how they are bucketed (``training/sampler.py``)."""

    train: Any
    valid: Any
    collate: Optional[Callable[[list], dict]] = None
    sampling: SamplingOptions = field(default_factory=SamplingOptions)


class TrainingTask(ABC):
    """Everything the trainer calls on a model family; a family overrides the defaults it needs.

    The first six methods have no sensible default. ``loss_tokens``, ``flops_breakdown`` and
    ``check_checkpoint`` do: the trainer calls all of them on every task, so no caller has to ask
    whether a task has them.
    """

    name: str
    tokenizer: Any  # the joint vocabulary; its ``layout()`` is saved with every checkpoint

    @abstractmethod
    def build_model(self, config: Config, pre_process: bool, post_process: bool) -> torch.nn.Module:
        """One pipeline stage of the model (all of it without PP)."""

    @abstractmethod
    def build_datasets(self, config: Config, train_samples: int, valid_samples: int) -> TaskData:
        """The train and validation datasets and how to batch them."""

    @abstractmethod
    def forward_step(self, data_iterator: Iterator[dict], model: torch.nn.Module) -> tuple:
        """megatron's forward_step_func: returns (output_tensor, loss_func)."""

    @abstractmethod
    def batch_flops(self, batch: dict) -> float:
        """Training FLOPs (forward + backward) of one micro-batch."""

    @abstractmethod
    def batch_tokens(self, batch: dict) -> int:
        """Raw tokens (text tokens + speech units) in one micro-batch."""

    @abstractmethod
    def batch_positions(self, batch: dict) -> int:
        """Global-model positions in one micro-batch: patches for LST, tokens for the baseline."""

    def loss_tokens(self, batch: dict) -> int:
        """Target tokens the loss of ``batch`` averages over. An engine that divides each
        micro-batch's loss by the global batch's count before its backward (DeepSpeed) needs it up
        front. By default the raw tokens; a task whose loss mask drops some of them overrides it."""
        return self.batch_tokens(batch)

    def flops_breakdown(self, batch: dict) -> Optional[dict[str, float]]:
        """Training FLOPs of one micro-batch per module, with a ``total``; None when the model is one
        module (then ``batch_flops`` is the total)."""
        return None

    def check_checkpoint(self, common: dict, source: str) -> None:
        """Called with a checkpoint's common state before any of its weights load: raise when the
        checkpoint cannot continue this run (another vocabulary, say). Nothing to check by default."""


def masked_token_loss(loss_mask: torch.Tensor, per_token_loss: torch.Tensor, extra: dict | None = None):
    """megatron loss_func for per-token losses: (sum, count, reported metrics).

    With ``calculate_per_token_loss`` the schedule adds sums and counts over micro-batches and
    ``finalize_model_grads`` divides the gradients by the global token count, so the objective
    is the mean cross-entropy over every target token of the global batch (docs/method.md §2).
    """
    mask = loss_mask.reshape(-1).float()
    losses = per_token_loss.reshape(-1).float()
    loss_sum = torch.sum(losses * mask)
    num_tokens = mask.sum().to(torch.int)
    reported = {"lm loss": torch.stack([loss_sum.detach(), mask.sum()])}
    if extra:
        reported.update(extra)
    return loss_sum, num_tokens, reported


def dataset_token_shares(dataset_ids: torch.Tensor | None, row_tokens: torch.Tensor, names: Sequence[str],
                         device: torch.device) -> dict[str, torch.Tensor]:
    """Reported metrics ``{"share <name>": [tokens from that dataset, all tokens]}`` of a micro-batch.

    Summed over micro-batches and data-parallel ranks like the losses, they give the realised
    share of tokens each blended dataset supplied in a step (what ``--blend-weights tokens`` aims
    at). Every name is reported in every micro-batch, zero or not, so that all ranks reduce the
    same metrics. No names (a single dataset): no metrics.
    """
    if not names:
        return {}
    if dataset_ids is None:
        raise KeyError("a blended batch carries no 'dataset_id': the collate must keep megatron's BlendedDataset field")
    # counted where the batch lives (the CPU, or the GPU after a tensor-parallel broadcast), moved once
    tokens = row_tokens.reshape(-1).double()
    per_dataset = torch.zeros(len(names), dtype=torch.float64, device=tokens.device)
    per_dataset.index_add_(0, dataset_ids.reshape(-1).to(tokens.device).long(), tokens)
    pairs = torch.stack([per_dataset, tokens.sum().expand(len(names))], dim=1).float().to(device)
    return {f"{SHARE_PREFIX}{name}": pairs[index] for index, name in enumerate(names)}
