"""The gensim-shipped sources read as normalised documents (skipped when gensim is absent)."""

import importlib.util
import re

import pytest

from megatron_lst.demo import text_source
from megatron_lst.demo.text_source import Document, iter_documents
from megatron_lst.demo.wiki_markup import strip_wiki_markup

needs_gensim = pytest.mark.skipif(
    importlib.util.find_spec("gensim") is None, reason="pip install --no-deps gensim==4.4.0")

PLAIN = re.compile(r"[A-Z][A-Za-z'.,?! ]*[.?!]")


@needs_gensim
def test_lee_background_documents_are_plain_and_stable():
    documents = list(iter_documents("lee_background"))
    assert len(documents) >= 299
    assert len({doc.id for doc in documents}) == len(documents)
    assert sum(len(doc.sentences) for doc in documents) > 2500
    assert sum(doc.num_words for doc in documents) > 55_000
    assert all(PLAIN.fullmatch(s) for doc in documents for s in doc.sentences)
    first = documents[0]
    assert first.id == "lee_background-0000"
    assert first.sentences[0].startswith("Hundreds of people have been forced to vacate")
    assert "An estimated five hundred residents" in first.text
    assert list(iter_documents("lee_background"))[:3] == documents[:3]


@needs_gensim
def test_lee_is_read_as_latin1():
    documents = list(iter_documents("lee"))
    assert len(documents) >= 49
    assert all(PLAIN.fullmatch(s) for doc in documents for s in doc.sentences)


def test_missing_gensim_gives_install_hint(monkeypatch):
    monkeypatch.setattr(text_source.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gensim"):
        text_source.gensim_data_dir()


def test_unknown_source_is_rejected():
    with pytest.raises(ValueError, match="lee_background"):
        text_source.source_path("nope")


def test_strip_wiki_markup():
    wikitext = (
        "{{Infobox|name=X {{nested}}}}\n"
        "'''Anarchism''' is a [[political philosophy]] that advocates [[self-governance|self-governed]]"
        " societies.<ref>Some ref</ref> See [http://example.org the site].\n"
        "[[File:A.jpg|thumb|A [[caption]] here]]\n"
        "== History ==\n* a list item\n{| class=wikitable\n|cell\n|}\n"
        "It grew.<!-- hidden -->\n== See also ==\nEverything after is dropped.\n"
    )
    assert strip_wiki_markup(wikitext) == [
        "Anarchism is a political philosophy that advocates self-governed societies. "
        "See the site.",
        "It grew.",
    ]


def test_document_text_and_word_count():
    doc = Document("d", ("One two three.", "Four, five!"))
    assert doc.text == "One two three. Four, five!"
    assert doc.num_words == 5
