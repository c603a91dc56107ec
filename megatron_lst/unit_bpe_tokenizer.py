"""The joint vocabulary of the BPE SpeechLLM baseline: unit BPE pieces in the speech slots.

The layout is ``JointTokenizer``'s (text ids, BOS/EOS/PAD, ``<t>``/``<s>``, then speech ids) with
the speech part holding the unit BPE's pieces instead of raw units: ``num_units`` is the number of
pieces and there is no spare slot, since every piece id the BPE can emit has its own slot. Keeping
one layout means the baseline's model, data and evaluation code need no BPE-specific branches: only
the step that turns unit indices into speech ids (``encode_units``) runs the BPE first.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from megatron_lst.data.unit_bpe import UnitBPE
from megatron_lst.tokenizer import JointTokenizer, TextModel, load_text_model
from megatron_lst.validation import InputError


class UnitBPETokenizer(JointTokenizer):
    """``JointTokenizer`` whose speech ids are unit BPE pieces of a ``data_num_units`` codebook."""

    def __init__(self, text_model: TextModel, unit_bpe: UnitBPE, data_num_units: int):
        super().__init__(text_model, num_units=unit_bpe.vocab_size, spare_units=0)
        self.unit_bpe = unit_bpe
        self.data_num_units = data_num_units

    @classmethod
    def from_files(cls, text_model_path: str | os.PathLike, unit_bpe_path: str | os.PathLike,
                   data_num_units: int, kind: str = "auto") -> "UnitBPETokenizer":
        return cls(load_text_model(text_model_path, kind), UnitBPE(unit_bpe_path), data_num_units)

    def encode_units(self, units: Sequence[int] | np.ndarray) -> np.ndarray:
        """Raw unit indices (one segment, e.g. a benchmark prompt) -> joint ids of their BPE pieces."""
        units = np.asarray(units, dtype=np.int64)
        if units.size and (units.min() < 0 or units.max() >= self.data_num_units):
            bad = units[(units < 0) | (units >= self.data_num_units)][0]
            raise ValueError(f"speech unit {int(bad)} is outside the codebook [0, {self.data_num_units})")
        return self.unit_bpe.encode(units) + self.unit_offset

    def decode_units(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Joint ids of pieces -> the raw units they spell."""
        return self.unit_bpe.decode(super().decode_units(ids))

    def layout(self) -> dict:
        """The joint layout plus what the pieces mean: the BPE's identity and the data's codebook."""
        return {**super().layout(), "unit_bpe": self.unit_bpe.describe(), "data_num_units": self.data_num_units}


def check_saved_layout(saved: dict, tokenizer: JointTokenizer, source: str) -> None:
    """Refuse to pair a checkpoint with another unit BPE, codebook or speech layout.

    ``saved`` is the checkpoint's ``vocab_layout``; ``source`` names it in the error. The BPE is
    identified by its file's SHA-256 (its path may differ when a run moved machines); every
    mismatching field is named with both values.
    """
    current = tokenizer.layout()
    saved_bpe, current_bpe = saved.get("unit_bpe"), current.get("unit_bpe")
    if saved_bpe is None and current_bpe is None:
        return
    if saved_bpe is None or current_bpe is None:
        trained = "with the unit BPE " + saved_bpe["path"] if saved_bpe else "on raw unit ids, without a unit BPE"
        given = "the unit BPE " + current_bpe["path"] if current_bpe else "raw unit ids (no unit BPE)"
        raise InputError(f"{source}: the model was trained {trained}, but this run gives it {given}")
    mismatches = [(f"unit_bpe.{name}", saved_bpe.get(name), current_bpe.get(name))
                  for name in ("sha256", "pieces", "num_units")]
    mismatches += [(name, saved.get(name), current.get(name))
                   for name in ("data_num_units", "text_vocab_size", "num_units", "spare_units")]
    problems = [f"{field}: checkpoint {old!r}, this run {new!r}" for field, old, new in mismatches if old != new]
    if problems:
        raise InputError(f"{source}: the checkpoint's unit BPE / vocabulary differs from this run's "
                         f"(checkpoint BPE {saved_bpe.get('path')}, this run {current_bpe.get('path')}): "
                         + "; ".join(problems))
