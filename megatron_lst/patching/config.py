"""PatchingConfig: which patching strategy a run uses, with every knob of docs/method.md §3.

One frozen dataclass shared by the C++ wrapper (strategies.py) and the numpy reference
(reference.py), so both read the same settings and reject the same bad ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, get_args

from megatron_lst.choices import FoldSpeechMarker, PatchBoundary, PatchingStrategy, SilenceMode, check_choices

# the kernel numbers each choice by its place in these tuples (strategy_code, silence_code, fold_code)
STRATEGIES = get_args(PatchingStrategy)
SILENCE_MODES = get_args(SilenceMode)
PATCH_BOUNDARIES = get_args(PatchBoundary)
FOLD_MODES = get_args(FoldSpeechMarker)


@dataclass(frozen=True)
class PatchingConfig:
    """How speech spans become patches.

    strategy: ``static`` (runs of ``patch_size`` units), ``aligned`` (one patch per aligned word
        segment), ``mixed`` (each sequence static or aligned at random, aligned with probability
        ``mixed_aligned_probability``) or ``curriculum`` (aligned with probability P(step): 1 before
        ``tau1``, linear down to 0 at ``tau2``, 0 after).
    patch_size: static patch size p (the paper's best: 4).
    silence_mode: aligned only. ``sil_sep``: every silence segment is its own patch;
        ``sil_merged``: a silence joins the word before it in its speech span (the word after it
        when the span opens with silence; a span of silence only is one patch).
    max_patch_length: cap on any patch; longer ones are split into pieces of this size with a
        shorter remainder last. ``None`` means no cap.
    fold_speech_marker: when the ``<s>`` marker joins the first patch of the speech span that
        follows it (the marker does not count towards ``patch_size``): ``static`` (default, the
        reference code's behaviour) in rows patched static and not in rows patched aligned, so a
        mixed or curriculum batch folds exactly where its static rows do; ``always``; ``never``
        (the marker is a patch of length 1 everywhere). ``True``/``False`` from configs written
        before the choice existed read as ``always``/``never``.
    patch_boundary: ``paper`` (default, the paper's and reference code's rule) closes a static
        span's shorter last patch where the span ends, which is decided by the *next* token not
        being a unit, so the prediction of that token already sees the closed patch (a
        one-token look-ahead that generation cannot have). ``causal`` leaves such a patch open
        and lets the non-speech token that ends the span (``<t>``, EOS, ...) join it as its last
        token; with ``fold_speech_marker`` an ``<s>`` that no unit follows likewise takes the next
        token. Every boundary then follows from the patch's own tokens (``patch_size`` units, or
        a non-speech token), so no position's logits depend on the token after it
        (docs/method.md §2). Aligned patches end where the alignment ends a word or silence in
        both modes.
    tau1, tau2: curriculum boundaries in optimizer steps (``tau1 <= tau2``).
    seed: seed of the per-sequence choice of mixed and curriculum; the choice is a hash of
        (seed, step, sample id), so it is reproducible and resumable with no RNG state to save.
    mixed_aligned_probability: probability that ``mixed`` patches a sequence aligned.
    """

    strategy: PatchingStrategy = "static"
    patch_size: int = 4
    silence_mode: SilenceMode = "sil_sep"
    max_patch_length: Optional[int] = None
    fold_speech_marker: FoldSpeechMarker = "static"
    patch_boundary: PatchBoundary = "paper"
    tau1: float = 0.0
    tau2: float = 0.0
    seed: int = 0
    mixed_aligned_probability: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.fold_speech_marker, bool):  # run configs saved when folding was a switch
            object.__setattr__(self, "fold_speech_marker", "always" if self.fold_speech_marker else "never")
        check_choices(self, flag_names=False)
        if int(self.patch_size) != self.patch_size or self.patch_size < 1:
            raise ValueError(f"PatchingConfig.patch_size must be an integer >= 1, got {self.patch_size}")
        if self.max_patch_length is not None and self.max_patch_length < 1:
            raise ValueError(f"PatchingConfig.max_patch_length must be >= 1 or None, got {self.max_patch_length}")
        if self.tau1 > self.tau2:
            raise ValueError(f"PatchingConfig: curriculum needs tau1 <= tau2, got tau1={self.tau1} > tau2={self.tau2}")
        if not 0.0 <= self.mixed_aligned_probability <= 1.0:
            raise ValueError(
                f"PatchingConfig.mixed_aligned_probability must lie in [0, 1], got {self.mixed_aligned_probability}"
            )
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"PatchingConfig.seed must lie in [0, 2**64), got {self.seed}")

    @property
    def strategy_code(self) -> int:
        """The strategy's number in the C++ kernel."""
        return STRATEGIES.index(self.strategy)

    @property
    def fold_code(self) -> int:
        """The marker fold mode's number in the C++ kernel."""
        return FOLD_MODES.index(self.fold_speech_marker)

    def folds_marker(self, aligned: bool) -> bool:
        """Whether ``<s>`` joins the next speech patch in a row patched aligned (or static)."""
        return self.fold_speech_marker == "always" or (self.fold_speech_marker == "static" and not aligned)

    @property
    def silence_code(self) -> int:
        """The silence mode's number in the C++ kernel."""
        return SILENCE_MODES.index(self.silence_mode)
