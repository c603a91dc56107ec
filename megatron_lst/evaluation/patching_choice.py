"""Which patching an LST checkpoint is scored with: ``tools/evaluate.py --patching static|aligned|auto``.

The paper's aligned-patching rows were scored with word alignments at test time, its static and
curriculum rows without (docs/method.md §6). Aligned scoring needs word times on every speech part
(``segments``, megatron_lst/evaluation/FORMAT.md) and only makes sense for a model that saw aligned patches in
training, so ``auto`` takes aligned exactly when both hold and static otherwise. The choice is a
pure function of the request, the checkpoint's training settings and the items, so it is tested
without a model; the reason travels into the results so a reader knows what each number means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from megatron_lst.evaluation.items import Item
from megatron_lst.training.registry import model_spec

REQUESTS = ("static", "aligned", "auto")
ALIGNED_TRAINING = ("aligned", "mixed", "curriculum")
NOT_PATCHED = "none"


@dataclass(frozen=True)
class PatchingChoice:
    """``patching``: ``static`` or ``aligned`` for LST, ``none`` for a baseline (never patched);
    ``reason``: one line saying why, for the printed summary and the output json; ``note``: a
    warning worth printing (an option that was ignored, or aligned patches new to the model)."""

    patching: str
    requested: str
    reason: str
    note: Optional[str] = None

    def to_dict(self) -> dict:
        row = {"used": self.patching, "requested": self.requested, "reason": self.reason}
        if self.note:
            row["note"] = self.note
        return row


def speech_parts_without_word_times(items: Sequence[Item]) -> tuple[int, int, Optional[str]]:
    """(speech parts, those without ``segments``, the first of those as "item ID: FIELD"). A part
    with no units (the empty prompt of a lexical item) has nothing to patch and needs none."""
    total, missing, first = 0, 0, None
    for item in items:
        for name, part in item.named_parts():
            if not part.units:
                continue
            total += 1
            if not part.has_word_times:
                missing += 1
                first = first or f"item {item.id}: {name}"
    return total, missing, first


def choose_patching(requested: Optional[str], model: str, trained_with: Optional[str],
                    items: Sequence[Item]) -> PatchingChoice:
    """Resolve ``--patching`` for a checkpoint of family ``model`` trained with patching strategy
    ``trained_with`` (LST only) on these items; ``None`` (not given) is ``static``, and a baseline
    notes that it ignores the flag only when it was given. Raises ValueError when ``aligned`` is
    asked of a benchmark whose speech parts lack word times: scoring some rows aligned and others
    static would be neither row of the paper's table."""
    given = requested is not None
    requested = requested if given else "static"
    if requested not in REQUESTS:
        raise ValueError(f"--patching must be one of {REQUESTS}, got {requested!r}")
    if not model_spec(model).patched:
        note = (f"--patching {requested} ignored: a {model} checkpoint is not patched"
                if given and requested != "auto" else None)
        return PatchingChoice(NOT_PATCHED, requested, f"{model} models read every token; nothing is patched", note)
    total, missing, first = speech_parts_without_word_times(items)
    if requested == "static":
        return PatchingChoice("static", requested, f"static patches of the run's patch size (--patching static); "
                                                   f"the model was trained with {trained_with} patching")
    if requested == "aligned":
        if missing:
            raise ValueError(f"--patching aligned needs word times ('segments') on every speech part, but "
                             f"{missing} of {total} have none, e.g. {first}: re-synthesise the benchmark with "
                             "tools/synthesize_benchmark.py, or use --patching static")
        note = None
        if trained_with not in ALIGNED_TRAINING:
            note = f"the model was trained with {trained_with} patching, so aligned patches are new to it"
        return PatchingChoice("aligned", requested, "one patch per word / silence from the benchmark's word "
                                                    "times (--patching aligned)", note)
    if trained_with not in ALIGNED_TRAINING:
        return PatchingChoice("static", requested, f"auto: the model was trained with {trained_with} patching")
    if total == 0:
        return PatchingChoice("static", requested, "auto: the benchmark has no speech, so nothing to align")
    if missing:
        return PatchingChoice("static", requested, f"auto: {missing} of {total} speech parts have no word times "
                                                   f"(e.g. {first})")
    return PatchingChoice("aligned", requested, f"auto: trained with {trained_with} patching and every speech part "
                                                "has word times")
