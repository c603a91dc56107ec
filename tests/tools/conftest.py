"""A tiny SentencePiece model shared by the preprocessing tests (trained once per session)."""

from __future__ import annotations

import random

import pytest

from megatron_lst.data.synthetic import random_sentence
from megatron_lst.tokenizer import train_sentencepiece

@pytest.fixture(scope="session")
def sentencepiece_model(tmp_path_factory) -> str:
    rng = random.Random(0)
    lines = [random_sentence(rng, rng.randint(3, 30)) for _ in range(400)]
    return str(train_sentencepiece(lines, tmp_path_factory.mktemp("spm") / "text", vocab_size=120))
