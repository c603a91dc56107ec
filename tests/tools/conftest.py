"""A tiny SentencePiece model shared by the preprocessing tests (trained once per session)."""

from __future__ import annotations

import random

import pytest

from megatron_lst.tokenizer import train_sentencepiece

WORDS = ("the quick brown fox jumps over a lazy dog and karen sings while bob reads many books "
         "today yesterday speech units silence words").split()


def random_sentence(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


@pytest.fixture(scope="session")
def sentencepiece_model(tmp_path_factory) -> str:
    rng = random.Random(0)
    lines = [random_sentence(rng, rng.randint(3, 30)) for _ in range(400)]
    return str(train_sentencepiece(lines, tmp_path_factory.mktemp("spm") / "text", vocab_size=120))
