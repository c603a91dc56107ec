"""SentencePiece BPE over speech-unit strings (the paper's "BPE SpeechLLM" baseline).

Each unit id becomes one character of a private alphabet (CJK code points, far from anything the
text model uses) so that SentencePiece can merge frequent unit n-grams into pieces. A segment's
units are encoded on their own, which keeps word/silence boundaries intact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

UNIT_ALPHABET_START = 0x4E00
DEFAULT_UNIT_BPE_VOCAB = 1000


def units_to_string(units: Sequence[int] | np.ndarray) -> str:
    return "".join(chr(UNIT_ALPHABET_START + int(unit)) for unit in units)


def train_unit_bpe(
    unit_sequences: Iterable[Sequence[int]],
    model_prefix: str | os.PathLike,
    vocab_size: int = DEFAULT_UNIT_BPE_VOCAB,
) -> Path:
    """Train a BPE model on unit sequences; returns the ``.model`` path."""
    import sentencepiece as spm

    sentences = [units_to_string(units) for units in unit_sequences if len(units)]
    if not sentences:
        raise ValueError("train_unit_bpe: no non-empty unit sequences were given")
    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        add_dummy_prefix=False,
        split_by_whitespace=False,
        max_sentencepiece_length=16,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        unk_id=0,
        num_threads=1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


class UnitBPE:
    """Maps a segment's unit ids to BPE piece ids in [0, vocab_size)."""

    def __init__(self, model_path: str | os.PathLike):
        import sentencepiece as spm

        if not Path(model_path).is_file():
            raise FileNotFoundError(f"unit BPE model not found: {model_path}")
        self.model_path = str(model_path)
        self.processor = spm.SentencePieceProcessor(model_file=self.model_path)
        self.vocab_size = int(self.processor.get_piece_size())

    def __call__(self, units: np.ndarray) -> np.ndarray:
        if len(units) == 0:
            return np.empty(0, dtype=np.int64)
        return np.asarray(self.processor.encode(units_to_string(units), out_type=int), dtype=np.int64)

    def decode(self, piece_ids: Sequence[int]) -> np.ndarray:
        """Back to unit ids (for checking round trips)."""
        text = self.processor.decode([int(piece) for piece in piece_ids])
        return np.asarray([ord(char) - UNIT_ALPHABET_START for char in text], dtype=np.int64)
