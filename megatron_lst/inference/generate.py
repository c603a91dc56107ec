"""Batched generation: prompts in, continuations out, with the stop rules of speech and text.

All rows step together, one token per step: a row still inside its prompt is teacher-forced,
the others feed what they sampled, so prompts of different lengths need no padding. A row stops
on EOS, on a modality switch (a ``<t>``/``<s>`` marker or a token of the other modality), at
``max_units`` speech units (or ``max_seconds`` at ``unit_rate`` units per second), or at
``max_new_tokens``. A stopped row keeps stepping with its patch flags off, so it never triggers a
global step; its open speech patch is closed once when it stops (``finish``), so the global
steps a row costs are exactly ceil(units / p) plus one per text token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from megatron_lst.inference.patch_tracker import StaticPatchTracker
from megatron_lst.inference.sampling import SamplingConfig, sample_next
from megatron_lst.tokenizer import VocabLayout

SPEECH, TEXT = "speech", "text"


@dataclass(frozen=True)
class GenerationConfig:
    """Stop rules and sampling. ``modality`` None: continue each prompt in the modality it ends in."""

    max_new_tokens: int = 512
    max_units: Optional[int] = None
    max_seconds: Optional[float] = None
    unit_rate: float = 25.0
    modality: Optional[str] = None
    restrict_to_modality: bool = True  # only the modality's tokens, EOS and the switch marker
    stop_on_eos: bool = True
    stop_on_modality_switch: bool = True
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int = 0

    def unit_budget(self) -> Optional[int]:
        budgets = [b for b in (self.max_units, None if self.max_seconds is None
                               else int(self.max_seconds * self.unit_rate)) if b is not None]
        return min(budgets) if budgets else None


@dataclass
class Generation:
    """What each row generated (stop token excluded) and what it cost."""

    tokens: list[list[int]]
    stop_reasons: list[str]
    prompt_global_positions: list[int]
    generated_global_positions: list[int]
    global_calls: int
    steps: int
    seconds: float


def prompt_modality(prompt: Sequence[int], vocab: VocabLayout) -> str:
    """The modality a prompt ends in: its last marker, else the kind of its last token."""
    for token in reversed(prompt):
        if token == vocab.speech_marker_id or bool(vocab.is_unit(token)):
            return SPEECH
        if token == vocab.text_marker_id or bool(vocab.is_text(token)):
            return TEXT
    return TEXT


def allowed_ids(modality: str, vocab: VocabLayout, config: GenerationConfig, size: int) -> torch.Tensor:
    """[size] bool: the ids a row generating ``modality`` may produce."""
    allowed = torch.zeros(size, dtype=torch.bool)
    if modality == SPEECH:
        allowed[vocab.unit_offset: vocab.unit_offset + vocab.num_units] = True
    else:
        allowed[: vocab.text_vocab_size] = True
    if config.stop_on_eos:
        allowed[vocab.eos_id] = True
    if config.stop_on_modality_switch:
        allowed[vocab.text_marker_id if modality == SPEECH else vocab.speech_marker_id] = True
    return allowed


def _stop_reason(token: int, modality: str, vocab: VocabLayout, config: GenerationConfig) -> Optional[str]:
    if token == vocab.eos_id and config.stop_on_eos:
        return "eos"
    if config.stop_on_modality_switch:
        switched = token in (vocab.text_marker_id, vocab.speech_marker_id) or (
            bool(vocab.is_unit(token)) if modality == TEXT else bool(vocab.is_text(token)))
        if switched:
            return "modality_switch"
    return None


@torch.no_grad()
def generate(stepper, prompts: Sequence[Sequence[int]], vocab: VocabLayout, patch_size: int,
             config: GenerationConfig = GenerationConfig(), patch_boundary: str = "paper",
             fold_marker: bool = False, max_patch_length: Optional[int] = None) -> Generation:
    """Continue every prompt (each opening with BOS) with ``stepper`` (cached or uncached).

    ``patch_boundary``, ``fold_marker`` and ``max_patch_length`` are the run's static patching
    (``--patch-boundary``, ``--fold-speech-marker``, ``--max-patch-length``), so generation cuts
    patches as the model was trained: under ``causal`` the token that ends a short speech run
    joins its patch; a folded ``<s>`` joins its span's first patch."""
    if patch_boundary not in ("paper", "causal"):
        raise ValueError(f"patch_boundary must be paper or causal, got {patch_boundary!r}")
    if not prompts or any(len(prompt) == 0 or prompt[0] != vocab.bos_id for prompt in prompts):
        raise ValueError("every prompt must be non-empty and open with BOS")
    device = next(stepper.model.parameters()).device
    batch = len(prompts)
    modalities = [config.modality or prompt_modality(prompt, vocab) for prompt in prompts]
    generator = torch.Generator(device=device).manual_seed(config.seed)
    stepper.reset(batch)
    tracker = StaticPatchTracker(batch, patch_size, vocab, device, causal=patch_boundary == "causal",
                                 fold_marker=fold_marker, max_patch_length=max_patch_length)
    unit_budget = config.unit_budget()
    generated: list[list[int]] = [[] for _ in range(batch)]
    reasons = [""] * batch
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    last_feed = torch.zeros(batch, dtype=torch.bool, device=device)  # out of budget: read the last token, stop
    prompt_positions = [0] * batch
    units = [0] * batch
    masks = None
    tokens = torch.tensor([prompt[0] for prompt in prompts], device=device)
    start, step = time.perf_counter(), 0
    while not bool(done.all()):
        close_before, completes = tracker.update(tokens)
        logits = stepper.step(tokens, close_before & ~done, completes & ~done)
        step += 1
        if masks is None:
            masks = {m: allowed_ids(m, vocab, config, logits.shape[-1]).to(device) for m in (SPEECH, TEXT)}
        if config.restrict_to_modality:
            logits = logits.masked_fill(~torch.stack([masks[m] for m in modalities]), float("-inf"))
        sampled = sample_next(logits, config.sampling, generator).tolist()
        finish_now = last_feed.clone()
        last_feed[:] = False
        next_tokens = []
        for row, prompt in enumerate(prompts):
            if bool(done[row]) or bool(finish_now[row]):
                next_tokens.append(vocab.pad_id)
                continue
            if step < len(prompt):
                next_tokens.append(prompt[step])
                continue
            if step == len(prompt):
                prompt_positions[row] = int(stepper.global_positions[row])
            token = sampled[row]
            reasons[row] = _stop_reason(token, modalities[row], vocab, config) or ""
            if reasons[row]:
                finish_now[row] = True
                next_tokens.append(vocab.pad_id)
                continue
            generated[row].append(token)
            units[row] += int(vocab.unit_offset <= token < vocab.vocab_size)
            if unit_budget is not None and units[row] >= unit_budget:
                reasons[row], last_feed[row] = "max_units", True
            elif len(generated[row]) >= config.max_new_tokens:
                reasons[row], last_feed[row] = "max_new_tokens", True
            next_tokens.append(token)
        if bool(finish_now.any()):
            stepper.finish(finish_now)
            done |= finish_now
        tokens = torch.tensor(next_tokens, device=device)
    return Generation(generated, reasons, prompt_positions,
                      [int(stepper.global_positions[row]) - prompt_positions[row] for row in range(batch)],
                      stepper.global_calls, step, time.perf_counter() - start)
