"""A spoken lexical test in the spirit of sWUGGY: does the model prefer a real word to a non-word?

Story completion needs a model that follows content over several sentences; a demo-sized model does
not, and scores at chance. Telling a word it has heard many times from a near-identical non-word
only needs it to have learnt which unit sequences occur, which even a small model can, so this test
can show a measurable difference where the story benchmarks cannot.

Each item has an empty prompt (the sequence is just ``BOS <s>`` before the ending, FORMAT.md) and
two endings spoken by one voice: a real word and a non-word made from it by one small spelling edit.

* Words come from *held-out* text (never trained on as those sentences), lower-case there (proper
  names are left out), at least ``min_letters`` long and seen at least ``min_count`` times in the
  training text, so the model has heard them.
* The non-word changes ``num_changes`` letters (default 3) at distinct, non-adjacent positions
  strictly inside the word (never the first or the last letter), each to a letter of the same kind,
  which keeps the word's consonant-vowel shape and so its phonotactics: a vowel to another vowel
  (``a e i o u``), or a consonant to a similar consonant, one differing in voicing or place of
  articulation but not in manner (:data:`SIMILAR_CONSONANTS`). Letters of a digraph (``th sh ch ph
  gh wh ck ng qu``) and doubled letters are never edited: changing one half would change how the
  other is read. The result must not be a word of the training or held-out text.

Why three changes in words of at least seven letters (the defaults): on the demo models a single
vowel or consonant change left the length-fair scores at chance (the few changed units drown in the
frame-level variation of two separate espeak syntheses); three changes in longer words move enough
units for a small model to prefer the real word. Accuracy grows with the word's length and the
number of changes, so the demo takes four changes in words of 9+ letters (README, "Evaluation").
espeak speaks a non-word a little longer than a dictionary word on average, so the ``sum`` score is
confounded with unit count here; ``mean`` (per unit) is the fair one (FORMAT.md).

Everything is drawn from one ``numpy`` generator seeded by ``seed`` over sorted words, so the same
inputs and seed give the same benchmark.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from megatron_lst.demo.normalise import WORD_PATTERN
from megatron_lst.evaluation.benchmarks import HeldoutDocument
from megatron_lst.evaluation.items import Item, Part
from megatron_lst.validation import at_line, read_jsonl, require_field, require_str

VOWELS = "aeiou"
# consonant -> consonants of the same manner (stop, fricative, nasal, liquid) one voicing or place away
SIMILAR_CONSONANTS = {
    "p": "bt", "b": "pd", "t": "dp", "d": "tb", "k": "g", "g": "kd",
    "f": "v", "v": "f", "s": "z", "z": "s",
    "m": "n", "n": "m",
    "l": "r", "r": "l",
}
DIGRAPHS = ("th", "sh", "ch", "ph", "gh", "wh", "ck", "ng", "qu")


@dataclass(frozen=True)
class Edit:
    """``word`` with the letter at each position of ``changes`` replaced by the letter paired with it."""

    word: str
    changes: tuple[tuple[int, str], ...]

    @property
    def nonword(self) -> str:
        letters = list(self.word)
        for position, letter in self.changes:
            letters[position] = letter
        return "".join(letters)


def read_word_counts(paths: Iterable[str | Path], field: str = "text") -> Counter:
    """Lower-cased word counts of the ``field`` of every jsonl row of ``paths`` (the training text)."""
    counts: Counter = Counter()
    for path in paths:
        for line_number, row in read_jsonl(path):
            with at_line(path, line_number):
                text = require_str(require_field(row, field), field)
            counts.update(word.lower() for word in WORD_PATTERN.findall(text))
    return counts


def _in_digraph(word: str, position: int) -> bool:
    pairs = (word[max(position - 1, 0):position + 1], word[position:position + 2])
    return any(pair in DIGRAPHS for pair in pairs if len(pair) == 2)


def letter_edits(word: str, kinds: str = "vc") -> list[tuple[int, str]]:
    """Every documented single-letter change ``(position, letter)`` of ``word``: ``kinds`` holds
    ``v`` (vowel to vowel) and/or ``c`` (consonant to a similar consonant)."""
    changes = []
    for position in range(1, len(word) - 1):
        letter = word[position]
        if letter in (word[position - 1], word[position + 1]) or _in_digraph(word, position):
            continue
        if letter in VOWELS:
            replacements = [v for v in VOWELS if v != letter] if "v" in kinds else []
        else:
            replacements = list(SIMILAR_CONSONANTS.get(letter, "")) if "c" in kinds else []
        for replacement in replacements:
            changed = word[:position] + replacement + word[position + 1:]
            if not _in_digraph(changed, position):
                changes.append((position, replacement))
    return changes


def candidate_edits(word: str, vocabulary: set[str] | Counter, kinds: str = "vc", num_changes: int = 1) -> list[Edit]:
    """Every edit of ``num_changes`` letter changes at distinct, non-adjacent positions whose result
    is not in ``vocabulary`` (in a fixed order, so a seeded draw among them is reproducible)."""
    singles = letter_edits(word, kinds)
    combos: list[tuple[tuple[int, str], ...]] = [()]
    for _ in range(num_changes):
        combos = [combo + (change,) for combo in combos for change in singles
                  if all(change[0] > position + 1 for position, _ in combo)]
    edits = [Edit(word, combo) for combo in combos if combo]
    return [edit for edit in edits if edit.nonword not in vocabulary]


def heldout_words(documents: Sequence[HeldoutDocument]) -> tuple[set[str], set[str]]:
    """(words written lower-case somewhere in the held-out text, every held-out word lower-cased)."""
    lower, every = set(), set()
    for document in documents:
        for sentence in document.sentences:
            for word in WORD_PATTERN.findall(sentence):
                every.add(word.lower())
                if word.islower():
                    lower.add(word)
    return lower, every


def choose_words(documents: Sequence[HeldoutDocument], train_counts: Counter, min_letters: int,
                 min_count: int, kinds: str = "vc", num_changes: int = 1) -> list[str]:
    """Held-out lower-case words, frequent in training and long enough, that have an edit (sorted)."""
    lower, every = heldout_words(documents)
    vocabulary = set(train_counts) | every
    return sorted(word for word in lower
                  if len(word) >= min_letters and "'" not in word and train_counts[word] >= min_count
                  and candidate_edits(word, vocabulary, kinds, num_changes))


def build_lexical(documents: Sequence[HeldoutDocument], train_counts: Counter, seed: int = 0,
                  max_items: Optional[int] = None, min_letters: int = 7, min_count: int = 5,
                  kinds: str = "vc", num_changes: int = 3) -> list[Item]:
    """Text-only lexical items, real word vs non-word (add speech with tools/synthesize_benchmark.py)."""
    if not train_counts:
        raise ValueError("the training text has no words: pass the demo corpus's text_train.jsonl")
    if not kinds or set(kinds) - set("vc"):
        raise ValueError(f"edit kinds {kinds!r}: use 'v' (vowels), 'c' (consonants) or 'vc'")
    if num_changes < 1:
        raise ValueError(f"a non-word needs at least one changed letter, got {num_changes}")
    words = choose_words(documents, train_counts, min_letters, min_count, kinds, num_changes)
    if not words:
        raise ValueError(f"no held-out word has >= {min_letters} letters, >= {min_count} training occurrences "
                         f"and a one-letter edit that is not a word: lower --min-letters or --min-count")
    rng = np.random.default_rng(seed)
    if max_items is not None and len(words) > max_items:
        words = [words[i] for i in np.sort(rng.choice(len(words), size=max_items, replace=False))]
    vocabulary = set(train_counts) | heldout_words(documents)[1]
    items = []
    for word in words:
        edits = candidate_edits(word, vocabulary, kinds, num_changes)
        edit = edits[int(rng.integers(len(edits)))]
        label = int(rng.integers(2))
        endings = [Part(text=edit.nonword)]
        endings.insert(label, Part(text=word))
        items.append(Item(id=f"lexical/{word}", label=label, prompt=Part(text=""), endings=tuple(endings)))
    return items
