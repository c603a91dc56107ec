"""The joint speech-text vocabulary.

One id space serves text and speech so that one output head predicts both (docs/method.md §2):

    [0, T)                     text BPE ids (SentencePiece or tiktoken, as the text model numbers them)
    T + 0 .. T + 2             BOS, EOS, PAD
    T + 3, T + 4               <t> (text follows), <s> (speech follows)
    T + 5 .. T + 5 + U + S     speech units 0..U-1, then S spare unit slots

with T the text vocabulary size, U the unit codebook size (501 for HuBERT-style units) and
S spare slots (1 in the reference layout). The layout is stored in checkpoints through
``JointTokenizer.layout()`` so that a model never silently meets a different numbering.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

NUM_SPECIALS = 5
DEFAULT_NUM_UNITS = 501
DEFAULT_SPARE_UNITS = 1


@dataclass(frozen=True)
class VocabLayout:
    """Where each kind of token lives in the joint id space."""

    text_vocab_size: int
    num_units: int = DEFAULT_NUM_UNITS
    spare_units: int = DEFAULT_SPARE_UNITS

    @property
    def bos_id(self) -> int:
        return self.text_vocab_size

    @property
    def eos_id(self) -> int:
        return self.text_vocab_size + 1

    @property
    def pad_id(self) -> int:
        return self.text_vocab_size + 2

    @property
    def text_marker_id(self) -> int:
        return self.text_vocab_size + 3

    @property
    def speech_marker_id(self) -> int:
        return self.text_vocab_size + 4

    @property
    def unit_offset(self) -> int:
        return self.text_vocab_size + NUM_SPECIALS

    @property
    def vocab_size(self) -> int:
        return self.unit_offset + self.num_units + self.spare_units

    def is_unit(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask of the ids that are speech units (spare slots included)."""
        ids = np.asarray(ids)
        return (ids >= self.unit_offset) & (ids < self.vocab_size)

    def is_text(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= 0) & (ids < self.text_vocab_size)


class TextModel:
    """The text half: a subword model that maps strings to ids in [0, vocab_size)."""

    vocab_size: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError

    def pieces_sha256(self) -> str:
        """SHA-256 of the pieces in id order: what the ids mean. Two models of the same size but
        other pieces differ here (recorded in checkpoints and dataset sidecars, compared on use);
        the file's path does not enter, so a moved model still matches."""
        raise NotImplementedError


def _pieces_digest(pieces: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(len(piece).to_bytes(4, "little") + piece)
    return digest.hexdigest()


class SentencePieceText(TextModel):
    """A SentencePiece model loaded from a local ``.model`` file."""

    def __init__(self, model_path: str | os.PathLike):
        import sentencepiece as spm

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {path}")
        self.model_path = str(path)
        self.processor = spm.SentencePieceProcessor(model_file=self.model_path)
        self.vocab_size = int(self.processor.get_piece_size())

    def encode(self, text: str) -> list[int]:
        return list(self.processor.encode(text, out_type=int))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self.processor.encode(texts, out_type=int)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.decode([int(i) for i in ids])

    def describe(self) -> dict:
        return {"type": "sentencepiece", "path": self.model_path, "vocab_size": self.vocab_size,
                "pieces_sha256": self.pieces_sha256()}

    def pieces_sha256(self) -> str:
        if not hasattr(self, "_pieces_sha256"):  # once: layout() is read at every checkpoint save
            self._pieces_sha256 = _pieces_digest(self.processor.id_to_piece(i).encode("utf-8")
                                                 for i in range(self.vocab_size))
        return self._pieces_sha256


# The split pattern of OpenAI's cl100k_base; used when a bare .tiktoken rank file is given.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)


class TiktokenText(TextModel):
    """A tiktoken BPE read from a local ``.tiktoken`` rank file (no download)."""

    def __init__(self, rank_file: str | os.PathLike, pattern: str = CL100K_PATTERN):
        try:
            import tiktoken
            from tiktoken.load import load_tiktoken_bpe
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("tiktoken is not installed: pip install 'megatron-lst[tiktoken]'") from error
        path = Path(rank_file)
        if not path.is_file():
            raise FileNotFoundError(f"tiktoken rank file not found: {path}")
        self.model_path = str(path)
        ranks = load_tiktoken_bpe(self.model_path)
        self.ranks = ranks
        self.encoding = tiktoken.Encoding(
            name=path.stem, pat_str=pattern, mergeable_ranks=ranks, special_tokens={}
        )
        self.vocab_size = int(self.encoding.n_vocab)

    def encode(self, text: str) -> list[int]:
        return list(self.encoding.encode_ordinary(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoding.decode([int(i) for i in ids])

    def describe(self) -> dict:
        return {"type": "tiktoken", "path": self.model_path, "vocab_size": self.vocab_size,
                "pieces_sha256": self.pieces_sha256()}

    def pieces_sha256(self) -> str:
        if not hasattr(self, "_pieces_sha256"):
            self._pieces_sha256 = _pieces_digest(sorted(self.ranks, key=self.ranks.__getitem__))
        return self._pieces_sha256


class HuggingFaceText(TextModel):
    """A Hugging Face ``tokenizers`` model read from a local ``tokenizer.json`` (or a folder holding
    one), as Llama-3, Mistral and most current text models ship theirs. The ids are the file's own,
    added tokens included; no special token is inserted when encoding (the joint tokenizer places
    BOS, EOS and the modality markers itself)."""

    def __init__(self, path: str | os.PathLike):
        try:
            from tokenizers import Tokenizer
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("the tokenizers package is not installed: pip install tokenizers") from error
        file = Path(path)
        if file.is_dir():
            file = file / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"Hugging Face tokenizer.json not found: {file}")
        self.model_path = str(file)
        self.tokenizer = Tokenizer.from_file(self.model_path)
        self.vocab_size = int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def describe(self) -> dict:
        return {"type": "huggingface", "path": self.model_path, "vocab_size": self.vocab_size,
                "pieces_sha256": self.pieces_sha256()}

    def pieces_sha256(self) -> str:
        if not hasattr(self, "_pieces_sha256"):
            self._pieces_sha256 = _pieces_digest((self.tokenizer.id_to_token(i) or "").encode("utf-8")
                                                 for i in range(self.vocab_size))
        return self._pieces_sha256


TEXT_MODEL_TYPES = ("auto", "sentencepiece", "tiktoken", "huggingface")  # choices.TokenizerType (--tokenizer-type)


def text_model_type(path: str | os.PathLike) -> str:
    """The backend a file implies: ``.tiktoken`` -> tiktoken, a ``.json`` file or a folder (holding
    ``tokenizer.json``) -> huggingface, anything else -> sentencepiece (``.model``)."""
    name = str(path)
    if name.endswith(".tiktoken"):
        return "tiktoken"
    if name.endswith(".json") or Path(name).is_dir():
        return "huggingface"
    return "sentencepiece"


def text_model_difference(recorded: dict, current: dict) -> str | None:
    """How the text tokenizer ``recorded`` (a ``describe()`` saved with a checkpoint or a dataset)
    differs from ``current``, or None when they are the same. Type and size are compared always,
    the pieces' SHA-256 when both have it; the path never (a model may move)."""
    if not isinstance(recorded, dict):
        return f"the record is {recorded!r}, not a tokenizer description"
    for name in ("type", "vocab_size", "pieces_sha256"):
        if name == "pieces_sha256" and (name not in recorded or name not in current):
            continue
        if recorded.get(name) != current.get(name):
            return (f"{name} {recorded.get(name)!r} ({recorded.get('path', '?')}) vs {current.get(name)!r} "
                    f"({current.get('path', '?')})")
    return None


def load_text_model(path: str | os.PathLike, kind: str = "auto") -> TextModel:
    """The text model at ``path``, read by ``kind`` (``--tokenizer-type``; ``auto``: from the file,
    see ``text_model_type``)."""
    if kind not in TEXT_MODEL_TYPES:
        raise ValueError(f"tokenizer type must be one of {TEXT_MODEL_TYPES}, got {kind!r}")
    kind = text_model_type(path) if kind == "auto" else kind
    backends = {"sentencepiece": SentencePieceText, "tiktoken": TiktokenText, "huggingface": HuggingFaceText}
    return backends[kind](path)


def train_sentencepiece(
    text_lines: Iterable[str],
    model_prefix: str | os.PathLike,
    vocab_size: int = 4000,
    model_type: str = "bpe",
    seed_sentencepiece_size: int = 200_000,
) -> Path:
    """Train a small SentencePiece model on local text (the demo cannot download one).

    Returns the path of the ``.model`` file. Training is deterministic for the same input.
    """
    import sentencepiece as spm

    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    lines = [line.strip() for line in text_lines if line.strip()]
    if not lines:
        raise ValueError("train_sentencepiece: no non-empty text lines were given")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        unk_id=0,
        num_threads=1,
        seed_sentencepiece_size=seed_sentencepiece_size,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


class JointTokenizer:
    """Text ids, specials, modality markers and speech units in one vocabulary."""

    def __init__(
        self,
        text_model: TextModel,
        num_units: int = DEFAULT_NUM_UNITS,
        spare_units: int = DEFAULT_SPARE_UNITS,
    ):
        if num_units < 1:
            raise ValueError(f"num_units must be >= 1, got {num_units}")
        if spare_units < 0:
            raise ValueError(f"spare_units must be >= 0, got {spare_units}")
        self.text_model = text_model
        self.vocab = VocabLayout(text_model.vocab_size, num_units, spare_units)

    @classmethod
    def from_file(cls, text_model_path: str | os.PathLike, kind: str = "auto", **kwargs) -> "JointTokenizer":
        """The joint tokenizer over the text model at ``text_model_path``, read as ``kind`` (``--tokenizer-type``)."""
        return cls(load_text_model(text_model_path, kind), **kwargs)

    # Shorthands used everywhere in the data and model code.
    @property
    def vocab_size(self) -> int:
        return self.vocab.vocab_size

    @property
    def bos_id(self) -> int:
        return self.vocab.bos_id

    @property
    def eos_id(self) -> int:
        return self.vocab.eos_id

    @property
    def pad_id(self) -> int:
        return self.vocab.pad_id

    @property
    def text_marker_id(self) -> int:
        return self.vocab.text_marker_id

    @property
    def speech_marker_id(self) -> int:
        return self.vocab.speech_marker_id

    @property
    def unit_offset(self) -> int:
        return self.vocab.unit_offset

    def encode_text(self, text: str) -> list[int]:
        return self.text_model.encode(text)

    def encode_units(self, units: Sequence[int] | np.ndarray) -> np.ndarray:
        """Map unit indices (0..num_units-1, spare slots allowed) to joint ids."""
        units = np.asarray(units, dtype=np.int64)
        limit = self.vocab.num_units + self.vocab.spare_units
        if units.size and (units.min() < 0 or units.max() >= limit):
            bad = units[(units < 0) | (units >= limit)][0]
            raise ValueError(f"speech unit {int(bad)} is outside [0, {limit})")
        return units + self.unit_offset

    def decode_units(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and not self.vocab.is_unit(ids).all():
            raise ValueError("decode_units: some ids are not speech units")
        return ids - self.unit_offset

    def decode(self, ids: Sequence[int]) -> str:
        """Readable rendering of a mixed sequence: text decoded, markers and units as tags."""
        names = {
            self.bos_id: "<bos>",
            self.eos_id: "<eos>",
            self.pad_id: "<pad>",
            self.text_marker_id: "<t>",
            self.speech_marker_id: "<s>",
        }
        pieces: list[str] = []
        text_run: list[int] = []

        def flush() -> None:
            if text_run:
                pieces.append(self.text_model.decode(text_run))
                text_run.clear()

        for token in (int(i) for i in ids):
            if 0 <= token < self.vocab.text_vocab_size:
                text_run.append(token)
                continue
            flush()
            if token in names:
                pieces.append(names[token])
            elif self.vocab.is_unit(np.array(token)):
                pieces.append(f"[{token - self.unit_offset}]")
            else:
                raise ValueError(f"id {token} is outside the joint vocabulary of {self.vocab_size}")
        flush()
        return "".join(pieces)

    def layout(self) -> dict:
        """What a checkpoint records about the vocabulary."""
        return {**asdict(self.vocab), "text_model": self.text_model.describe()}
