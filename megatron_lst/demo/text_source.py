"""Real English text from the gensim wheel, as normalised documents of sentences.

No text corpus can be downloaded on this project's machines, but ``pip install --no-deps gensim``
ships ``gensim/test/test_data/`` with news and Wikipedia text (docs/demo_data.md). This module
finds that folder *without importing gensim* (its import needs dependencies we do not install),
reads the sources below and returns :class:`Document` objects whose sentences are already reduced to
plain speakable words by :mod:`megatron_lst.demo.normalise`:

    lee_background   299 news stories, one per line (ASCII)
    lee              50 further news stories, one per line (latin-1)
    wiki             ~200 Wikipedia articles from a shortened bz2 XML dump, markup stripped

The texts are read at run time and never committed: their licence is unclear.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from megatron_lst.demo.normalise import normalise_text, split_sentences, words_of
from megatron_lst.demo.wiki_markup import iter_wiki_pages, strip_wiki_markup

SOURCES = ("lee_background", "lee", "wiki")
_FILES = {
    "lee_background": "lee_background.cor",
    "lee": "lee.cor",
    "wiki": "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
}
INSTALL_HINT = "pip install --no-deps gensim==4.4.0"


@dataclass(frozen=True)
class Document:
    """One source document: ``id`` is stable across runs (``"<source>-<index or page id>"``) and
    ``sentences`` are normalised, each ending in ``.``, ``?`` or ``!``."""

    id: str
    sentences: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.sentences)

    @property
    def num_words(self) -> int:
        return sum(len(words_of(sentence)) for sentence in self.sentences)


def gensim_data_dir() -> Path:
    """The ``gensim/test/test_data`` folder of the installed gensim wheel.

    Raises a ``FileNotFoundError`` that says how to install gensim when it is absent.
    """
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The demo text comes from the gensim wheel, which is not installed. Install it with "
            f"`{INSTALL_HINT}` (no dependencies needed; it is never imported)."
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing; reinstall with `{INSTALL_HINT}`.")
    return folder


def source_path(source: str) -> Path:
    """The file that holds ``source`` (one of :data:`SOURCES`)."""
    if source not in _FILES:
        raise ValueError(f"unknown text source {source!r}; choose from {', '.join(SOURCES)}")
    path = gensim_data_dir() / _FILES[source]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `{INSTALL_HINT}`.")
    return path


def source_fingerprint(sources: Sequence[str]) -> str:
    """SHA-256 over the raw bytes of the given sources, for content-addressed caches."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.encode())
        digest.update(source_path(source).read_bytes())
    return digest.hexdigest()


def _raw_documents(source: str) -> Iterator[tuple[str, list[str]]]:
    """``(id, paragraphs)`` of one source before normalisation."""
    path = source_path(source)
    if source == "wiki":
        for page_id, _title, wikitext in iter_wiki_pages(path):
            yield f"wiki-{page_id}", strip_wiki_markup(wikitext)
        return
    encoding = "ascii" if source == "lee_background" else "latin-1"
    with open(path, encoding=encoding, errors="replace") as lines:
        for index, line in enumerate(lines):
            if line.strip():
                yield f"{source}-{index:04d}", [line]


def iter_documents(
    source: str | Iterable[str] = "lee_background",
    min_words_per_sentence: int = 3,
    min_sentences: int = 1,
) -> Iterator[Document]:
    """Normalised documents of one source (or several, in the order given).

    Sentences shorter than ``min_words_per_sentence`` words (headlines, list debris) are dropped;
    documents left with fewer than ``min_sentences`` sentences are skipped. The order is the file
    order, so the same call always yields the same documents.
    """
    sources = [source] if isinstance(source, str) else list(source)
    for name in sources:
        for doc_id, paragraphs in _raw_documents(name):
            sentences: list[str] = []
            for paragraph in paragraphs:
                sentences.extend(split_sentences(normalise_text(paragraph), min_words_per_sentence))
            if len(sentences) >= min_sentences:
                yield Document(doc_id, tuple(sentences))
