"""What the loop needs from a model family: build it, feed it, score it.

The loop (``training/loop.py``) is model-agnostic; a ``TrainingTask`` supplies the model
builder, the datasets, the megatron ``forward_step`` and the FLOPs of a micro-batch. Reported
metrics are ``{name: tensor([sum, count])}`` so that the loop can add them across micro-batches
and data-parallel ranks and divide once (a per-token mean over the whole global batch).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterator, Protocol, Sequence

import torch

from megatron_lst.training.arguments import Config

SHARE_PREFIX = "share "  # reported metric "share <dataset name>": that dataset's fraction of the step's tokens


class TrainingTask(Protocol):
    name: str

    def build_model(self, config: Config, pre_process: bool, post_process: bool) -> torch.nn.Module:
        """One pipeline stage of the model (all of it without PP)."""

    def build_datasets(self, config: Config, train_samples: int, valid_samples: int) -> tuple:
        """(train, valid) map-style datasets whose items are dicts of arrays."""

    def forward_step(self, data_iterator: Iterator[dict], model: torch.nn.Module) -> tuple:
        """megatron's forward_step_func: returns (output_tensor, loss_func)."""

    def batch_flops(self, batch: dict) -> float:
        """Training FLOPs (forward + backward) of one micro-batch."""

    def batch_tokens(self, batch: dict) -> int:
        """Raw tokens (text tokens + speech units) in one micro-batch."""

    def batch_positions(self, batch: dict) -> int:
        """Global-model positions in one micro-batch: patches for LST, tokens for the baseline."""


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


def forward_with_loss(model_call: Callable[[], torch.Tensor], loss_mask: torch.Tensor) -> tuple:
    """Run the model and pair its per-token loss output with ``masked_token_loss``."""
    return model_call(), partial(masked_token_loss, loss_mask)
