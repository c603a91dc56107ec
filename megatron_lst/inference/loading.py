"""A generator from a trained checkpoint: the model at TP = PP = 1 with its stepper and patch size.

The model is built and loaded as evaluation loads it (training/checkpoint_loading.py), so any
checkpoint that scores also generates. A patched model (LST) generates with *static* patches of
the run's ``--patch-size`` whatever its training strategy (docs/method.md §3: static needs no
aligner at inference).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from megatron_lst.inference.baseline_stepper import BaselineStepper
from megatron_lst.inference.generate import Generation, GenerationConfig, generate
from megatron_lst.inference.lst_stepper import LSTStepper
from megatron_lst.inference.uncached import UncachedBaselineStepper, UncachedLSTStepper
from megatron_lst.tokenizer import JointTokenizer
from megatron_lst.training.arguments import Config
from megatron_lst.training.checkpoint_loading import config_from_checkpoint, fixed_patching_config, load_model
from megatron_lst.training.registry import model_spec, spec_of
from megatron_lst.validation import InputError


def refuse_non_generating(model: str, root) -> None:
    """Refuse a model whose registry entry cannot generate, with its reason. Generation counts speech
    budgets (``--max-units``, ``--max-seconds``) and the stepper's speech tokens in units, so a
    model whose speech tokens are anything else (unit BPE pieces) would silently overrun them."""
    spec = model_spec(model)
    if not spec.generates:
        raise InputError(f"{root}: generation does not support --model {spec.name} checkpoints: "
                         f"{spec.generation_refusal}")


@dataclass
class CheckpointGenerator:
    """What generation needs from a checkpoint; ``generate`` continues token-id prompts."""

    model: torch.nn.Module
    config: Config
    tokenizer: JointTokenizer
    device: torch.device
    use_cache: bool = True

    @property
    def patched(self) -> bool:
        """A patched model: it steps with the LST stepper, a patch per global step."""
        return spec_of(self.config).patched

    @property
    def patch_size(self) -> int:
        """Units per global step: the run's static patch size when patched, else 1."""
        return spec_of(self.config).units_per_step(self.config.patching.patch_size)

    def stepper(self):
        if self.patched:
            return LSTStepper(self.model) if self.use_cache else UncachedLSTStepper(self.model)
        return BaselineStepper(self.model) if self.use_cache else UncachedBaselineStepper(self.model)

    def generate(self, prompts: list[list[int]], config: GenerationConfig) -> Generation:
        if not self.patched:
            return generate(self.stepper(), prompts, self.tokenizer.vocab, self.patch_size, config)
        patching = fixed_patching_config(self.config, "static")
        return generate(self.stepper(), prompts, self.tokenizer.vocab, self.patch_size, config,
                        patching.patch_boundary, fold_marker=patching.folds_marker(aligned=False),
                        max_patch_length=patching.max_patch_length)

    @classmethod
    def from_checkpoint(cls, root: str | Path, iteration: Optional[int] = None,
                        tokenizer_model: Optional[str] = None, use_cache: bool = True) -> "CheckpointGenerator":
        refuse_non_generating(config_from_checkpoint(root, iteration, tokenizer_model).train.model, root)
        model, config, tokenizer, device = load_model(root, iteration, tokenizer_model)
        return cls(model, config, tokenizer, device, use_cache)
