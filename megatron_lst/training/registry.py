"""The model registry: every ``--model`` the project trains, and what the rest of the code may ask of it.

Training, the dry run, evaluation, generation, checkpoint conversion and the benchmarks look a
model up here by its name and then ask its entry (its task, its FLOPs, its capabilities) instead
of testing the name, so a new family is one entry, not a dozen edits. The entry names its
classes and functions by import path and imports them on first use: the argument parser reads
this module without paying for megatron-core, and the registry imports nothing above training/.

A capability says what differs between families, not which family it is:

* ``patched``: speech units are grouped into patches (docs/method.md §3), so the global model's
  positions are patches, ``--patch-size`` and the patching flags apply, the model has a patch
  encoder and decoder, and a prompt advances ``--patch-size`` units per global step.
* ``unit_bpe``: the joint vocabulary's speech slots hold unit BPE pieces (``--unit-bpe``).
* ``generates``: tools/generate.py can continue its prompts; where not, ``generation_refusal`` says why.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, get_args

if TYPE_CHECKING:
    from megatron_lst.training.arguments import Config

ModelName = Literal["baseline", "lst", "bpe-baseline"]


def _resolve(path: str) -> Any:
    """``"package.module:attribute"`` -> the attribute, imported now."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class ModelSpec:
    """One model family: its training task, its FLOPs and what it supports."""

    name: str
    help: str
    task: str  # "module:Class" of its TrainingTask; Class(config, tokenizer=None)
    step_flops: str  # "module:function" (config, padded vocab) -> {module: FLOPs} of one optimizer step
    patched: bool
    unit_bpe: bool = False
    generation_refusal: Optional[str] = None

    @property
    def generates(self) -> bool:
        return self.generation_refusal is None

    def build_task(self, config: "Config", tokenizer=None):
        """The family's ``TrainingTask`` for ``config``; it owns the tokenizer and the model builder."""
        task_class = _resolve(self.task)
        return task_class(config) if tokenizer is None else task_class(config, tokenizer)

    def flops_per_step(self, config: "Config", vocab: int) -> dict[str, float]:
        """Planned training FLOPs of one optimizer step per module (``--dry-run``, FLOPs budgets)."""
        function: Callable[..., dict[str, float]] = _resolve(self.step_flops)
        return function(config, vocab)

    def units_per_step(self, patch_size: int) -> int:
        """Speech units one global position holds when patched statically (1 when not patched)."""
        return patch_size if self.patched else 1


MODELS: dict[str, ModelSpec] = {
    spec.name: spec for spec in (
        ModelSpec("baseline", "GPT over raw units and text (megatron-core GPTModel)",
                  "megatron_lst.training.baseline_task:BaselineTask",
                  "megatron_lst.training.dry_run:gpt_step_flops", patched=False),
        ModelSpec("lst", "the Latent Speech-Text Transformer: speech units grouped into patches",
                  "megatron_lst.training.lst_task:LSTTask",
                  "megatron_lst.training.dry_run:lst_step_flops", patched=True),
        ModelSpec("bpe-baseline", "GPT over unit BPE pieces and text (needs --unit-bpe)",
                  "megatron_lst.training.bpe_baseline_task:BPEBaselineTask",
                  "megatron_lst.training.dry_run:gpt_step_flops", patched=False, unit_bpe=True,
                  generation_refusal="its speech tokens are unit BPE pieces, and the generation budgets "
                                     "(--max-units, --max-seconds) count raw units; score it with tools/evaluate.py"),
    )
}
assert tuple(MODELS) == get_args(ModelName), "ModelName and MODELS must list the same models"


def model_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``; an unknown name is a ValueError listing the known ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def spec_of(config: "Config") -> ModelSpec:
    """The registry entry of the run's ``--model``."""
    return model_spec(config.train.model)


def build_task(config: "Config", tokenizer=None):
    """The ``TrainingTask`` of the run's ``--model`` (the trainer's task factory)."""
    return spec_of(config).build_task(config, tokenizer)
