"""Topic StoryCloze from held-out documents: the wrong ending is about something else.

Like the StoryCloze-like benchmark (four consecutive sentences of a held-out document, then its true
next sentence), but the distractor is chosen to be *off topic*, so recognising the topic of the prompt
is enough to answer (the paper's Topic StoryCloze, docs/method.md §6, is the easy story benchmark):

* it comes from another document, one of the least similar to the item's document: documents are
  ranked by the Jaccard overlap of their content words (words of at least ``TOPIC_WORD_LETTERS``
  letters, lower-cased), and the distractor document is drawn from the least similar half;
* within that document the sentence closest in word count to the true ending is taken (ties drawn),
  so a score that sums log-probs is not decided by ending length rather than topic.

The 50/50 label and every draw come from one ``numpy`` generator seeded by ``seed`` over documents
sorted by id, so the same file and seed give the same benchmark.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from megatron_lst.demo.normalise import WORD_PATTERN
from megatron_lst.evaluation.benchmarks import PROMPT_SENTENCES, HeldoutDocument, story_windows
from megatron_lst.evaluation.items import Item, Part

TOPIC_WORD_LETTERS = 5


def content_words(document: HeldoutDocument) -> frozenset[str]:
    return frozenset(word.lower() for sentence in document.sentences for word in WORD_PATTERN.findall(sentence)
                     if len(word) >= TOPIC_WORD_LETTERS)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def distant_documents(documents: Sequence[HeldoutDocument], own_index: int) -> list[int]:
    """Indices of the least similar half (at least one) of the other documents with sentences."""
    words = [content_words(document) for document in documents]
    others = [i for i in range(len(documents)) if i != own_index and documents[i].sentences]
    if not others:
        raise ValueError("topic storycloze needs at least two held-out documents with sentences")
    others.sort(key=lambda i: (jaccard(words[own_index], words[i]), documents[i].id))
    return others[:max(1, len(others) // 2)]


def length_matched_sentence(sentences: Sequence[str], true_ending: str, rng: np.random.Generator) -> Optional[str]:
    """The sentence closest in word count to ``true_ending`` (a draw among ties); None if none differs."""
    target = len(true_ending.split())
    pool = [s for s in sentences if s != true_ending]
    if not pool:
        return None
    best = min(abs(len(s.split()) - target) for s in pool)
    ties = [s for s in pool if abs(len(s.split()) - target) == best]
    return ties[int(rng.integers(len(ties)))]


def build_topic_storycloze(documents: Sequence[HeldoutDocument], seed: int = 0, max_items: Optional[int] = None,
                           windows_per_document: int = 1) -> list[Item]:
    """Text-only items, true next sentence vs an off-topic one (add speech with tools/synthesize_benchmark.py)."""
    documents = sorted(documents, key=lambda document: document.id)
    rng = np.random.default_rng(seed)
    windows = story_windows(list(documents), windows_per_document)
    if not windows:
        raise ValueError(f"no held-out document has {PROMPT_SENTENCES + 1} sentences: topic storycloze has no items")
    if max_items is not None and len(windows) > max_items:
        windows = [windows[i] for i in np.sort(rng.choice(len(windows), size=max_items, replace=False))]
    distant = {index: distant_documents(documents, index) for index in sorted({index for index, _ in windows})}
    items = []
    for document_index, start in windows:
        sentences = documents[document_index].sentences[start:start + PROMPT_SENTENCES + 1]
        true_ending = sentences[-1]
        distractor = None
        for other in rng.permutation(distant[document_index]):
            distractor = length_matched_sentence(documents[other].sentences, true_ending, rng)
            if distractor is not None:
                break
        if distractor is None:
            raise ValueError(f"no distractor sentence for document {documents[document_index].id}")
        label = int(rng.integers(2))
        endings = [Part(text=distractor)]
        endings.insert(label, Part(text=true_ending))
        items.append(Item(id=f"topic_storycloze/{documents[document_index].id}/{start}", label=label,
                          prompt=Part(text=" ".join(sentences[:-1])), endings=tuple(endings)))
    return items
