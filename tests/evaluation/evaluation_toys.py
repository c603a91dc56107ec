"""A word-level text model and a bigram-table scorer whose log-probs tests can add up by hand."""

from __future__ import annotations

import numpy as np

from megatron_lst.tokenizer import JointTokenizer, TextModel

WORDS = ("a", "b", "c", "d", "e", "f")


class WordText(TextModel):
    """Each word of WORDS is one id; enough to lay out sequences without a trained tokenizer."""

    vocab_size = len(WORDS)

    def encode(self, text: str) -> list[int]:
        return [WORDS.index(word) for word in text.split()]

    def decode(self, ids) -> str:
        return " ".join(WORDS[i] for i in ids)

    def describe(self) -> dict:
        return {"type": "words", "vocab_size": self.vocab_size}


def toy_tokenizer() -> JointTokenizer:
    """ids: words 0-5, BOS 6, EOS 7, PAD 8, <t> 9, <s> 10, units 0-3 -> 11-14."""
    return JointTokenizer(WordText(), num_units=4, spare_units=0)


class BigramScorer:
    """log p(token t | tokens < t) = table[token t-1, token t]; records the batches it was given."""

    def __init__(self, table: np.ndarray):
        self.table = table
        self.batch_sizes: list[int] = []

    @classmethod
    def random(cls, vocab_size: int, seed: int) -> "BigramScorer":
        logits = np.random.default_rng(seed).normal(size=(vocab_size, vocab_size))
        return cls(logits - np.log(np.exp(logits).sum(axis=1, keepdims=True)))

    def token_logprobs(self, sequences: list[np.ndarray]) -> list[np.ndarray]:
        self.batch_sizes.append(len(sequences))
        return [self.table[sequence[:-1], sequence[1:]] for sequence in sequences]
