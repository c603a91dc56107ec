"""How well a model predicts the token that ends a speech span, with and without the look-ahead.

Under the paper's static patching rule (``--patch-boundary paper``) a speech span's short last
patch closes where the span ends, so when the prediction of the token after the span (``<t>``
before text, EOS at the end) is made, the model already sees a patch that only closed because
that token is not a unit. At generation time the model cannot know this: it has to decide to
stop speaking from the units alone. ``--patch-boundary causal`` lets the ending token join the
open patch instead, so no logit depends on the token it predicts.

This module scores the ending token of held-out speech segments laid out as in training,

    ``<t> after speech``:  BOS <s> units <t> text EOS   (the S->T switch)
    ``EOS after speech``:  BOS <s> units EOS            (speech that ends its document)

once with the patches of each rule. For a paper-trained LST the gap between the two is what the
look-ahead gives it in teacher-forced scores but not in generation; a causal-trained LST reads
the same patches either way. Baseline checkpoints have no patches: one number per switch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from megatron_lst.patching.config import PATCH_BOUNDARIES
from megatron_lst.tokenizer import JointTokenizer

SWITCHES = ("<t> after speech", "EOS after speech")


@dataclass
class SwitchSequence:
    """One scored sequence and the index of its switch token (the token that ends the speech)."""

    tokens: np.ndarray
    switch_index: int
    last_patch_partial: bool  # the span's units do not fill whole static patches: the paper rule leaks here


def switch_sequences(segments: Sequence[dict], tokenizer: JointTokenizer, patch_size: int) -> dict[str, list[SwitchSequence]]:
    """Both layouts for every ``{"text", "units"}`` segment (units 0..num_units-1)."""
    out: dict[str, list[SwitchSequence]] = {name: [] for name in SWITCHES}
    for segment in segments:
        units = tokenizer.encode_units(segment["units"]).tolist()
        if not units:
            continue
        head = [tokenizer.bos_id, tokenizer.speech_marker_id, *units]
        partial = len(units) % patch_size != 0
        text = tokenizer.encode_text(segment["text"])
        out["<t> after speech"].append(SwitchSequence(
            np.asarray([*head, tokenizer.text_marker_id, *text, tokenizer.eos_id]), len(head), partial))
        out["EOS after speech"].append(SwitchSequence(np.asarray([*head, tokenizer.eos_id]), len(head), partial))
    return out


def switch_token_nll(scorer, sequences: Sequence[SwitchSequence], batch_size: int = 8) -> dict[str, float]:
    """Mean NLL (nats) of the switch token over all sequences and over those whose last patch is partial."""
    nll = []
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start:start + batch_size]
        for logprobs, sequence in zip(scorer.token_logprobs([s.tokens for s in batch]), batch):
            nll.append(-float(logprobs[sequence.switch_index - 1]))  # logprobs[k] scores token k + 1
    partial = [value for value, sequence in zip(nll, sequences) if sequence.last_patch_partial]
    return {"nll": float(np.mean(nll)) if nll else float("nan"),
            "nll_partial_last_patch": float(np.mean(partial)) if partial else float("nan"),
            "sequences": len(nll), "partial_last_patch": len(partial)}


def evaluate_switch_tokens(checkpoint: str, segments: Sequence[dict], batch_size: int = 8) -> dict:
    """``{switch: {patch rule: scores}}`` for an LST checkpoint, ``{switch: {"none": scores}}`` for a baseline."""
    from megatron_lst.evaluation.model_scorer import CheckpointScorer, lst_logits, next_token_logits
    from megatron_lst.training.checkpoint_loading import load_model
    from megatron_lst.training.registry import spec_of

    model, config, tokenizer, device = load_model(checkpoint)
    spec = spec_of(config)
    sequences = switch_sequences(segments, tokenizer, spec.units_per_step(config.patching.patch_size))
    if spec.patched:
        rules = {rule: lst_logits(model, dataclasses.replace(
            config, patching=dataclasses.replace(config.patching, patch_boundary=rule)), tokenizer)
            for rule in PATCH_BOUNDARIES}
    else:
        rules = {"none": next_token_logits(model, config, tokenizer)}
    trained = config.patching.patch_boundary if spec.patched else None
    results = {"model": config.train.model, "trained_patch_boundary": trained}
    for switch, items in sequences.items():
        results[switch] = {rule: switch_token_nll(CheckpointScorer(logits, model, tokenizer, device), items, batch_size)
                           for rule, logits in rules.items()}
    return results
