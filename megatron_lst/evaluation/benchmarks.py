"""Held-out story-completion benchmarks built from demo text that training never saw.

The demo corpus writes ``heldout_documents.jsonl`` (``{"id", "sentences": [...]}``), documents that
``megatron_lst.demo.corpus`` kept out of every training file. Each window of five consecutive
sentences becomes one item: four sentences of prompt, and the true fifth sentence among endings
taken from *other* documents, so that a model that follows the story beats chance while a model that
only judges sentence fluency does not.

* StoryCloze-like: 1 true ending + 1 distractor (chance 50%).
* HellaSwag-like:  1 true ending + 3 distractors from three different documents (chance 25%).

Two more kinds are built by their own modules and reached through the same command line:
``topic_storycloze`` (an off-topic, length-matched distractor, ``topic_storycloze.py``) and
``lexical`` (a spoken word vs a non-word, empty prompt, ``lexical.py``).

Everything is drawn from one ``numpy`` generator seeded by ``seed`` over documents sorted by id, so
the same file and seed give the same benchmark whatever the order of the input lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from megatron_lst.evaluation.items import Item, Part
from megatron_lst.validation import (ArgumentParser, InputError, at_line, is_int, json_type, read_jsonl, require_field,
                                     require_str)

PROMPT_SENTENCES = 4


@dataclass(frozen=True)
class HeldoutDocument:
    id: str
    sentences: tuple[str, ...]


@dataclass(frozen=True)
class BenchmarkSpec:
    """How a benchmark is drawn: endings per item, and how many 5-sentence windows per document."""

    name: str
    num_endings: int
    windows_per_document: int = 1


STORY_CLOZE = BenchmarkSpec("storycloze", num_endings=2)
HELLASWAG = BenchmarkSpec("hellaswag", num_endings=4)
BENCHMARKS = {spec.name: spec for spec in (STORY_CLOZE, HELLASWAG)}


def read_heldout_documents(path: str | Path) -> list[HeldoutDocument]:
    """``{"id", "sentences": [str, ...]}`` rows; a bad row is an InputError naming file, line, field."""
    documents = []
    for line_number, row in read_jsonl(path):
        with at_line(path, line_number):
            doc_id = require_field(row, "id")
            if not isinstance(doc_id, str) and not is_int(doc_id):
                raise InputError(f"must be a string, got {json_type(doc_id)}", field="id")
            sentences = require_field(row, "sentences")
            if not isinstance(sentences, list):
                raise InputError(f"must be a list of strings, got {json_type(sentences)}", field="sentences")
            for index, sentence in enumerate(sentences):
                require_str(sentence, f"sentences[{index}]")
        documents.append(HeldoutDocument(str(doc_id), tuple(sentences)))
    return documents


def story_windows(documents: list[HeldoutDocument], windows_per_document: int) -> list[tuple[int, int]]:
    """(document index, first sentence) of non-overlapping 5-sentence windows; short documents
    (fewer than five sentences) give none."""
    window = PROMPT_SENTENCES + 1
    windows = []
    for index, document in enumerate(documents):
        count = min(len(document.sentences) // window, windows_per_document)
        windows.extend((index, start * window) for start in range(count))
    return windows


def _distractors(documents: list[HeldoutDocument], own_index: int, true_ending: str, count: int,
                 rng: np.random.Generator) -> list[str]:
    """``count`` sentences, each from a different document than the item's and than each other."""
    others = [i for i in range(len(documents)) if i != own_index and documents[i].sentences]
    if len(others) < count:
        raise ValueError(f"need at least {count + 1} documents to draw {count} distractors per item, "
                         f"got {len(others) + 1}")
    chosen: list[str] = []
    for document_index in rng.permutation(others):
        sentences = [s for s in documents[document_index].sentences if s != true_ending and s not in chosen]
        if sentences:
            chosen.append(sentences[int(rng.integers(len(sentences)))])
        if len(chosen) == count:
            return chosen
    raise ValueError(f"could not find {count} distinct distractor sentences for document {own_index}")


def build_benchmark(documents: list[HeldoutDocument], spec: BenchmarkSpec, seed: int = 0,
                    max_items: Optional[int] = None) -> list[Item]:
    """Text-only items (add speech with ``tools/synthesize_benchmark.py``)."""
    documents = sorted(documents, key=lambda document: document.id)
    rng = np.random.default_rng(seed)
    windows = story_windows(documents, spec.windows_per_document)
    if max_items is not None and len(windows) > max_items:
        keep = np.sort(rng.choice(len(windows), size=max_items, replace=False))
        windows = [windows[i] for i in keep]
    items = []
    for document_index, start in windows:
        sentences = documents[document_index].sentences[start:start + PROMPT_SENTENCES + 1]
        true_ending = sentences[-1]
        endings = _distractors(documents, document_index, true_ending, spec.num_endings - 1, rng)
        label = int(rng.integers(spec.num_endings))
        endings.insert(label, true_ending)
        items.append(Item(
            id=f"{spec.name}/{documents[document_index].id}/{start}",
            label=label,
            prompt=Part(text=" ".join(sentences[:-1])),
            endings=tuple(Part(text=ending) for ending in endings),
        ))
    return items


NEW_KINDS = ("topic_storycloze", "lexical")  # built by their own modules (topic_storycloze.py, lexical.py)


def build_kind(args) -> list[Item]:
    """The items of ``args.kind`` from the parsed command line."""
    documents = read_heldout_documents(args.heldout)
    if args.kind == "topic_storycloze":
        from megatron_lst.evaluation.topic_storycloze import build_topic_storycloze

        return build_topic_storycloze(documents, args.seed, args.max_items, args.windows_per_document)
    if args.kind == "lexical":
        from megatron_lst.evaluation.lexical import build_lexical, read_word_counts

        if not args.train_text:
            raise ValueError("--kind lexical needs --train-text (the corpus's text_train.jsonl, speech_train.jsonl)")
        counts = read_word_counts(args.train_text)
        print(f"read {sum(counts.values())} training words ({len(counts)} distinct) from {len(args.train_text)} files")
        return build_lexical(documents, counts, args.seed, args.max_items, args.min_letters, args.min_count,
                             args.edit_kinds, args.edit_letters)
    spec = BenchmarkSpec(args.kind, BENCHMARKS[args.kind].num_endings, args.windows_per_document)
    return build_benchmark(documents, spec, args.seed, args.max_items)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m megatron_lst.evaluation.benchmarks --heldout DIR/heldout_documents.jsonl ...``"""
    from megatron_lst.evaluation.items import write_items

    parser = ArgumentParser(description="Build a text-only benchmark from held-out "
                                        "documents (add speech with tools/synthesize_benchmark.py).")
    parser.add_argument("--heldout", required=True, help="heldout_documents.jsonl of the demo corpus")
    parser.add_argument("--kind", choices=sorted(BENCHMARKS) + list(NEW_KINDS), default="storycloze",
                        help="storycloze: true 5th sentence vs 1 other; hellaswag: vs 3 others; "
                             "topic_storycloze: vs 1 off-topic sentence of similar length; "
                             "lexical: a real word vs a non-word a few letters away, empty prompt")
    parser.add_argument("--output", required=True, help="benchmark jsonl to write")
    parser.add_argument("--seed", type=int, default=0, help="same seed and input, same benchmark")
    parser.add_argument("--max-items", type=int, default=None, help="keep at most this many items")
    parser.add_argument("--windows-per-document", type=int, default=1,
                        help="non-overlapping 5-sentence windows taken from one document")
    parser.add_argument("--train-text", nargs="+", default=None,
                        help="lexical: training jsonl files with a 'text' field; words are chosen frequent "
                             "there and non-words must not occur there")
    parser.add_argument("--min-letters", type=int, default=7, help="lexical: shortest word")
    parser.add_argument("--min-count", type=int, default=5, help="lexical: fewest training occurrences of a word")
    parser.add_argument("--edit-kinds", default="vc", choices=["v", "c", "vc"],
                        help="lexical: letters a non-word may change: vowels, similar consonants, or both")
    parser.add_argument("--edit-letters", type=int, default=3, help="lexical: letters changed per non-word")
    args = parser.parse_args(argv)
    try:
        items = build_kind(args)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    write_items(args.output, items)
    print(f"wrote {len(items)} {args.kind} items to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
