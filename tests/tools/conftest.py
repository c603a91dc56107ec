"""Tiny SentencePiece models shared by the preprocessing and bad-input tests (trained once per session)."""

from __future__ import annotations

import random

import pytest

from megatron_lst.data.synthetic import random_sentence
from megatron_lst.tokenizer import load_text_model, train_sentencepiece


@pytest.fixture(scope="session")
def sentencepiece_model(tmp_path_factory) -> str:
    rng = random.Random(0)
    lines = [random_sentence(rng, rng.randint(3, 30)) for _ in range(400)]
    return str(train_sentencepiece(lines, tmp_path_factory.mktemp("spm") / "text", vocab_size=120))


@pytest.fixture(scope="session")
def other_sentencepiece_model(sentencepiece_model, tmp_path_factory) -> str:
    """A tokenizer of the same size as ``sentencepiece_model`` but other pieces: it passes every size
    check, so only the pieces' fingerprint tells it apart (data and checkpoints record it)."""
    size = load_text_model(sentencepiece_model).vocab_size
    rng = random.Random(5)
    lines = [" ".join("".join(rng.choices("abcdefghijklmnop", k=rng.randint(2, 6))) for _ in range(10))
             for _ in range(400)]
    other = str(train_sentencepiece(lines, tmp_path_factory.mktemp("other_spm") / "other", vocab_size=size))
    assert load_text_model(other).vocab_size == size
    return other
