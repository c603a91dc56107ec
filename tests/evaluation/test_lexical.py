"""Lexical (sWUGGY-like) items: real word vs a documented non-word, empty prompt, seeded."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from evaluation_toys import BigramScorer, toy_tokenizer

from megatron_lst.demo.espeak import espeak_available
from megatron_lst.evaluation.benchmarks import HeldoutDocument, main
from megatron_lst.evaluation.items import Item, Part, read_items
from megatron_lst.evaluation.lexical import (SIMILAR_CONSONANTS, VOWELS, Edit, build_lexical, candidate_edits,
                                             letter_edits)
from megatron_lst.evaluation.scoring import DIRECTIONS, SequenceBuilder, score_direction

DOCUMENTS = [HeldoutDocument("d1", ("The government announced a strategy yesterday.",
                                    "Firefighters protected the community.")),
             HeldoutDocument("d2", ("Sydney Government officials spoke.",))]
TRAIN = Counter({"government": 40, "strategy": 9, "yesterday": 12, "firefighters": 7, "community": 30,
                 "announced": 2, "protected": 6, "the": 500, "sydney": 50})


def test_letter_edits_follow_the_documented_rule():
    # 'beta': e (vowel) and t (consonant) are inside; b and a are the first and last letters
    assert letter_edits("beta") == [(1, "a"), (1, "i"), (1, "o"), (1, "u"), (2, "d"), (2, "p")]
    assert letter_edits("beta", "c") == [(2, "d"), (2, "p")]
    # digraph letters ('th', 'ck') and doubled letters ('ll') are never edited
    assert letter_edits("other") == [(3, "a"), (3, "i"), (3, "o"), (3, "u")]
    assert letter_edits("ballot") == [(1, "e"), (1, "i"), (1, "o"), (1, "u"), (4, "a"), (4, "e"), (4, "i"), (4, "u")]


def test_non_words_differ_by_the_documented_changes_and_are_not_words():
    items = build_lexical(DOCUMENTS, TRAIN, seed=0, min_letters=7, min_count=5, num_changes=2)
    vocabulary = set(TRAIN) | {"officials", "spoke", "a"}
    words = {item.endings[item.label].text for item in items}
    # 'announced' is too rare in training, 'officials' was never trained on, 'Sydney' and 'Firefighters'
    # are only written capitalised in the held-out text (names are left out; sentence starts too)
    assert words == {"government", "strategy", "yesterday", "community", "protected"}
    for item in items:
        word, nonword = item.endings[item.label].text, item.endings[1 - item.label].text
        assert item.prompt == Part(text="") and nonword not in vocabulary and len(nonword) == len(word)
        changed = [i for i, (a, b) in enumerate(zip(word, nonword)) if a != b]
        assert len(changed) == 2 and 0 not in changed and len(word) - 1 not in changed
        assert changed[1] - changed[0] >= 2  # distinct, non-adjacent positions
        for i in changed:
            if word[i] in VOWELS:
                assert nonword[i] in VOWELS
            else:
                assert nonword[i] in SIMILAR_CONSONANTS[word[i]]


def test_candidate_edits_exclude_vocabulary_words():
    edits = candidate_edits("beta", {"bota", "beda"})
    assert Edit("beta", ((1, "o"),)) not in edits and Edit("beta", ((2, "d"),)) not in edits
    assert Edit("beta", ((1, "a"),)) in edits and Edit("beta", ((1, "a"),)).nonword == "bata"


def test_deterministic_per_seed():
    first = build_lexical(DOCUMENTS, TRAIN, seed=1, min_letters=7, min_count=5)
    assert first == build_lexical(list(reversed(DOCUMENTS)), TRAIN, seed=1, min_letters=7, min_count=5)
    others = [build_lexical(DOCUMENTS, TRAIN, seed=s, min_letters=7, min_count=5) for s in range(2, 6)]
    assert any(other != first for other in others)
    assert len(build_lexical(DOCUMENTS, TRAIN, seed=0, max_items=2, min_letters=7, min_count=5)) == 2


def test_no_usable_word_is_a_clear_error():
    with pytest.raises(ValueError, match="--min-letters or --min-count"):
        build_lexical(DOCUMENTS, TRAIN, min_letters=30)
    with pytest.raises(ValueError, match="text_train.jsonl"):
        build_lexical(DOCUMENTS, Counter())


def test_cli_builds_from_training_jsonl(tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"id": d.id, "sentences": list(d.sentences)}) + "\n" for d in DOCUMENTS))
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"text": " ".join(w for w, n in TRAIN.items() for _ in range(n))}) + "\n")
    args = ["--heldout", str(heldout), "--kind", "lexical", "--output", str(tmp_path / "lex.jsonl"),
            "--min-letters", "7", "--edit-letters", "2"]
    with pytest.raises(SystemExit):  # no --train-text
        main(args)
    assert main(args + ["--train-text", str(train)]) == 0
    items = read_items(tmp_path / "lex.jsonl")
    assert len(items) == 5 and all(item.prompt.text == "" for item in items)


def test_empty_prompt_is_scored_from_bos_and_marker():
    """Hand-computed: the S->S sequence of an empty-prompt item is BOS <s> ending (ids 6 10 ...)."""
    tokenizer = toy_tokenizer()
    scorer = BigramScorer.random(tokenizer.vocab_size, seed=3)
    t = scorer.table
    item = Item("w", 0, Part(text="", units=()), (Part(text="a b", units=(0, 1)), Part(text="c", units=(2,))))
    builder = SequenceBuilder(tokenizer)
    ss = score_direction([item], DIRECTIONS["ss"], builder, scorer).per_item[0]["scores"]
    # tokens: BOS 6, <s> 10, units 0,1,2 -> 11,12,13
    assert ss["sum"] == pytest.approx([t[10, 11] + t[11, 12], t[10, 13]])
    assert ss["mean"] == pytest.approx([(t[10, 11] + t[11, 12]) / 2, t[10, 13]])
    assert ss["seq_nll"] == pytest.approx([-(t[6, 10] + t[10, 11] + t[11, 12]) / 3, -(t[6, 10] + t[10, 13]) / 2])
    tt = score_direction([item], DIRECTIONS["tt"], builder, scorer).per_item[0]["scores"]
    # tokens: BOS 6, <t> 9, words a b c -> 0 1 2
    assert tt["sum"] == pytest.approx([t[9, 0] + t[0, 1], t[9, 2]])


@pytest.mark.skipif(not espeak_available(), reason="pip install espeakng-loader")
def test_synthesis_adds_units_to_lexical_items_and_none_to_the_empty_prompt(tmp_path):
    from megatron_lst.demo.espeak import get_espeak
    from megatron_lst.demo.units import FrontEndConfig, LogMelUnitExtractor, log_mel_features
    from megatron_lst.evaluation.speech import PartSynthesizer, synthesize_items

    small = FrontEndConfig(pca_dim=16, num_units=20)
    speech = get_espeak().synthesize("The government protected the community yesterday.")
    extractor = LogMelUnitExtractor.fit([log_mel_features(speech.waveform, speech.sample_rate, small)], small)
    items = build_lexical(DOCUMENTS, TRAIN, seed=0, max_items=2, min_letters=7, min_count=5)
    spoken = list(synthesize_items(items, PartSynthesizer(extractor)))
    assert len(spoken) == 2
    for item in spoken:
        assert item.prompt.units == () and item.has("units", "units") and item.has("text", "text")
        assert all(len(ending.units) > 3 and max(ending.units) < 20 for ending in item.endings)
    assert np.asarray(spoken[0].endings[0].units).dtype.kind == "i"
