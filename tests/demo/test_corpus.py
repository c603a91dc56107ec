"""A tiny real corpus end to end: format, alignment, held-out isolation, caching."""

import importlib.util
import json
from dataclasses import replace

import pytest

from megatron_lst.demo.corpus import FILES, QUICK_CONFIG, build_corpus, is_heldout
from megatron_lst.demo.espeak import espeak_available
from megatron_lst.demo.normalise import words_of
from megatron_lst.demo.text_source import Document
from megatron_lst.demo.units import FrontEndConfig, LogMelUnitExtractor

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gensim") is None or not espeak_available(),
    reason="needs gensim (--no-deps) and espeakng-loader")

TINY = replace(QUICK_CONFIG, hours=0.03, heldout_percent=30.0, max_sentences_per_utterance=3,
               front_end=FrontEndConfig(pca_dim=16, num_units=50))


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    manifest = build_corpus(TINY, out, workers=1, progress=False)
    return out, manifest


def test_aligned_speech_format(corpus):
    out, manifest = corpus
    rows = _rows(out / FILES["speech_train"]) + _rows(out / FILES["speech_heldout"])
    assert len(rows) == manifest["summary"]["utterances"] >= 2
    for row in rows:
        assert set(row) == {"id", "units", "words", "text"}
        assert all(0 <= unit < 50 for unit in row["units"])
        assert [w["text"] for w in row["words"]] == words_of(row["text"])
        previous_end = 0
        for word in row["words"]:
            assert previous_end <= word["start"] < word["end"] <= len(row["units"])
            previous_end = word["end"]
    assert sum(len(r["units"]) for r in rows) == manifest["summary"]["units"]
    hours = manifest["summary"]["speech_hours"]
    assert abs(sum(len(r["units"]) for r in rows) / 25 / 3600 - hours) < 0.002


def test_heldout_documents_never_reach_training(corpus):
    out, _ = corpus
    heldout = _rows(out / FILES["heldout_documents"])
    assert heldout and all(
        is_heldout(Document(doc["id"], tuple(doc["sentences"])), TINY.heldout_percent, TINY.seed)
        for doc in heldout)
    assert all(len(doc["sentences"]) >= 1 for doc in heldout)
    train_text = {row["text"] for row in _rows(out / FILES["text_train"])}
    assert not train_text & {" ".join(doc["sentences"]) for doc in heldout}
    info = _rows(out / FILES["speech_info"])
    heldout_ids = {doc["id"] for doc in heldout}
    train_ids = {row["id"] for row in _rows(out / FILES["speech_train"])}
    assert {"train", "heldout"} == {row["split"] for row in info}
    for row in info:
        assert (row["document_id"] in heldout_ids) == (row["split"] == "heldout")
        assert (row["id"] in train_ids) == (row["split"] == "train")


def test_saved_extractor_loads(corpus):
    out, _ = corpus
    extractor = LogMelUnitExtractor.load(out / FILES["extractor"])
    assert extractor.num_units == 50


def test_second_build_is_cached(corpus):
    out, manifest = corpus
    again = build_corpus(TINY, out, workers=1, progress=False)
    assert again["summary"]["cached"] and again["key"] == manifest["key"]
    other = replace(TINY, seed=1)
    from megatron_lst.demo.corpus import corpus_key
    assert corpus_key(other) != manifest["key"]
