"""A generator from a trained checkpoint: the model at TP = PP = 1 with its stepper and patch size.

The model is built and loaded exactly as evaluation does (evaluation/model_scorer.py), so any
checkpoint that scores also generates. LST generates with *static* patches of the run's
``--patch-size`` whatever its training strategy (docs/method.md §3: static needs no aligner at inference).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from megatron_lst.evaluation.model_scorer import config_from_checkpoint, load_model, scoring_patching_config
from megatron_lst.inference.baseline_stepper import BaselineStepper
from megatron_lst.inference.generate import Generation, GenerationConfig, generate
from megatron_lst.inference.lst_stepper import LSTStepper
from megatron_lst.inference.uncached import UncachedBaselineStepper, UncachedLSTStepper
from megatron_lst.tokenizer import JointTokenizer
from megatron_lst.training.arguments import Config
from megatron_lst.validation import InputError


def refuse_bpe_baseline(model: str, root) -> None:
    """Generation counts speech budgets (``--max-units``, ``--max-seconds``) and the stepper's speech
    tokens in units; a BPE baseline emits pieces of several units each, so it would silently
    overrun them. It is refused rather than generated with wrong budgets."""
    if model == "bpe-baseline":
        raise InputError(f"{root}: generation does not support --model bpe-baseline checkpoints (its speech tokens "
                         "are unit BPE pieces, and the unit budgets count raw units); score it with tools/evaluate.py")


@dataclass
class CheckpointGenerator:
    """What generation needs from a checkpoint; ``generate`` continues token-id prompts."""

    model: torch.nn.Module
    config: Config
    tokenizer: JointTokenizer
    device: torch.device
    use_cache: bool = True

    @property
    def is_lst(self) -> bool:
        return self.config.train.model == "lst"

    @property
    def patch_size(self) -> int:
        """Units per global step: the run's static patch size for LST, 1 for the baseline."""
        return self.config.patching.patch_size if self.is_lst else 1

    def stepper(self):
        if self.is_lst:
            return LSTStepper(self.model) if self.use_cache else UncachedLSTStepper(self.model)
        return BaselineStepper(self.model) if self.use_cache else UncachedBaselineStepper(self.model)

    def generate(self, prompts: list[list[int]], config: GenerationConfig) -> Generation:
        if not self.is_lst:
            return generate(self.stepper(), prompts, self.tokenizer.vocab, self.patch_size, config)
        patching = scoring_patching_config(self.config, "static")
        return generate(self.stepper(), prompts, self.tokenizer.vocab, self.patch_size, config,
                        patching.patch_boundary, fold_marker=patching.folds_marker(aligned=False),
                        max_patch_length=patching.max_patch_length)

    @classmethod
    def from_checkpoint(cls, root: str | Path, iteration: Optional[int] = None,
                        tokenizer_model: Optional[str] = None, use_cache: bool = True) -> "CheckpointGenerator":
        refuse_bpe_baseline(config_from_checkpoint(root, iteration, tokenizer_model).train.model, root)
        model, config, tokenizer, device = load_model(root, iteration, tokenizer_model)
        return cls(model, config, tokenizer, device, use_cache)
