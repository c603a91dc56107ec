"""SentencePiece BPE over speech-unit strings (the paper's "BPE SpeechLLM" baseline).

Each unit id becomes one character of a private alphabet (CJK code points, far from anything the
text model uses) so that SentencePiece can merge frequent unit n-grams into pieces. A segment's
units are encoded on their own, which keeps word/silence boundaries intact.

A BPE is only meaningful with the unit codebook it was trained on, so ``train_unit_bpe`` writes a
sidecar ``PREFIX.json`` with that codebook size; ``UnitBPE.describe()`` adds the model file's
SHA-256, which is how checkpoints of the BPE baseline recognise their BPE (training/bpe_baseline_task.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from megatron_lst.utils.atomic import temporary_sibling, write_text_atomic

UNIT_ALPHABET_START = 0x4E00
DEFAULT_UNIT_BPE_VOCAB = 1000


def units_to_string(units: Sequence[int] | np.ndarray) -> str:
    return "".join(chr(UNIT_ALPHABET_START + int(unit)) for unit in units)


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """``units.model`` -> ``units.json``: what the BPE was trained on."""
    return Path(model_path).with_suffix(".json")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def train_unit_bpe(
    unit_sequences: Iterable[Sequence[int]],
    model_prefix: str | os.PathLike,
    vocab_size: int = DEFAULT_UNIT_BPE_VOCAB,
    num_units: int | None = None,
) -> Path:
    """Train a BPE model on unit sequences; returns the ``.model`` path.

    ``num_units`` (the codebook size of the units) goes into the sidecar ``PREFIX.json`` so that a
    run can check that its corpus uses the same codebook.
    """
    import sentencepiece as spm

    sentences = [units_to_string(units) for units in unit_sequences if len(units)]
    if not sentences:
        raise ValueError("train_unit_bpe: no non-empty unit sequences were given")
    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    # trained under a temporary prefix and renamed when complete: a failed run leaves an earlier model as it was
    temporary = temporary_sibling(prefix)
    # no utterance is dropped for its length: SentencePiece skips sentences over max_sentence_length
    # bytes (4192 by default, about a minute of 25 Hz units), and units heard only in long
    # utterances would get no piece, so the corpus they came from could not be encoded
    longest = max(len(sentence.encode("utf-8")) for sentence in sentences)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_prefix=str(temporary),
            vocab_size=vocab_size,
            model_type="bpe",
            character_coverage=1.0,
            max_sentence_length=max(longest, 4192),
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
        model = Path(f"{prefix}.model")
        for suffix in (".model", ".vocab"):
            os.replace(f"{temporary}{suffix}", f"{prefix}{suffix}")
    finally:
        for suffix in (".model", ".vocab"):
            Path(f"{temporary}{suffix}").unlink(missing_ok=True)
    write_text_atomic(sidecar_path(model), json.dumps({"num_units": num_units, "sentences": len(sentences)}) + "\n")
    return model


class UnitNotInBPE(ValueError):
    """A unit the BPE never saw in training: SentencePiece would silently turn it into <unk>."""


class UnitBPE:
    """Maps a segment's unit ids to BPE piece ids in [0, vocab_size)."""

    def __init__(self, model_path: str | os.PathLike):
        import sentencepiece as spm

        if not Path(model_path).is_file():
            raise FileNotFoundError(f"unit BPE model not found: {model_path}")
        self.model_path = str(model_path)
        self.processor = spm.SentencePieceProcessor(model_file=self.model_path)
        self.vocab_size = int(self.processor.get_piece_size())
        self.sha256 = file_sha256(self.model_path)
        sidecar = sidecar_path(self.model_path)
        self.num_units: int | None = None  # unknown for a BPE trained without a sidecar
        if sidecar.is_file():
            self.num_units = json.loads(sidecar.read_text()).get("num_units")

    def __getstate__(self) -> dict:
        """DataLoader workers receive the path and reload (a SentencePiece processor does not pickle)."""
        return {"model_path": self.model_path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_path"])

    def describe(self) -> dict:
        """The BPE's identity as checkpoints record it."""
        return {"path": self.model_path, "sha256": self.sha256, "pieces": self.vocab_size, "num_units": self.num_units}

    def alphabet_size(self) -> int:
        """One more than the largest unit the BPE has a piece for (a lower bound of its codebook)."""
        largest = -1
        for piece in range(self.vocab_size):
            if self.processor.is_unknown(piece) or self.processor.is_control(piece):
                continue
            largest = max([largest] + [ord(char) - UNIT_ALPHABET_START for char in self.processor.id_to_piece(piece)])
        return largest + 1

    def encode(self, units: Sequence[int] | np.ndarray) -> np.ndarray:
        """Piece ids of one segment; a unit outside the BPE's alphabet is an error, not <unk>."""
        pieces = self(np.asarray(units, dtype=np.int64))
        unknown = np.flatnonzero(pieces == self.processor.unk_id())
        if len(unknown):
            raise UnitNotInBPE(f"{self.model_path}: units {sorted(set(self._unknown_units(units)))[:8]} have no piece "
                               "in this unit BPE (was it trained on another codebook or corpus?)")
        return pieces

    def encode_many(self, segments: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``encode`` of many segments in one SentencePiece call (empty segments give no pieces)."""
        strings = [units_to_string(units) for units in segments]
        encoded = self.processor.encode(strings, out_type=int)
        unk = self.processor.unk_id()
        result = []
        for units, pieces in zip(segments, encoded):
            pieces = np.asarray(pieces, dtype=np.int64)
            if (pieces == unk).any():
                raise UnitNotInBPE(f"{self.model_path}: units {sorted(set(self._unknown_units(units)))[:8]} have no "
                                   "piece in this unit BPE (was it trained on another codebook or corpus?)")
            result.append(pieces)
        return result

    def _unknown_units(self, units) -> list[int]:
        return [int(unit) for unit in units
                if self.processor.piece_to_id(units_to_string([unit])) == self.processor.unk_id()]

    def __call__(self, units: np.ndarray) -> np.ndarray:
        if len(units) == 0:
            return np.empty(0, dtype=np.int64)
        return np.asarray(self.processor.encode(units_to_string(units), out_type=int), dtype=np.int64)

    def decode(self, piece_ids: Sequence[int]) -> np.ndarray:
        """Back to unit ids (for checking round trips)."""
        text = self.processor.decode([int(piece) for piece in piece_ids])
        return np.asarray([ord(char) - UNIT_ALPHABET_START for char in text], dtype=np.int64)
