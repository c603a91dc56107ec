"""Known answers for the text normaliser: what espeak is asked to say must be plain words."""

import re

import pytest

from megatron_lst.demo.normalise import (
    normalise_text,
    spell_number,
    spell_ordinal,
    spell_year,
    split_sentences,
    words_of,
)


@pytest.mark.parametrize(
    "number, words",
    [
        (0, "zero"),
        (42, "forty two"),
        (100, "one hundred"),
        (1205, "one thousand two hundred five"),
        (2_000_017, "two million seventeen"),
    ],
)
def test_spell_number(number, words):
    assert spell_number(number) == words


def test_spell_ordinal_and_year():
    assert [spell_ordinal(n) for n in (1, 2, 3, 12, 21, 57, 100)] == [
        "first", "second", "third", "twelfth", "twenty first", "fifty seventh", "one hundredth"]
    assert [spell_year(y) for y in (1999, 1905, 1900, 2001, 2016)] == [
        "nineteen ninety nine", "nineteen oh five", "nineteen hundred", "two thousand one",
        "twenty sixteen"]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("There are 42 cats.", "There are forty two cats."),
        ("AMP shelved a $400 million plan.", "AMP shelved a four hundred million dollars plan."),
        ("Some 1,000 people, 5% of them.", "Some one thousand people, five percent of them."),
        ("At 4:00pm AEDT it rained.", "At four p m AEDT it rained."),
        ("The 28-year-old won in 1999.", "The twenty eight year old won in nineteen ninety nine."),
        ('Mr. Bush said "no" (twice).', "Mister Bush said no twice."),
        ("Rock & roll -- the 1990s; cafe\u0301.", "Rock and roll, the nineteen nineties, cafe."),
        ("New Year's Eve in Sydney's west.", "New Year's Eve in Sydney's west."),
        ("Pi is 3.14 roughly...", "Pi is three point one four roughly."),
    ],
)
def test_normalise_text_known_answers(raw, expected):
    assert normalise_text(raw) == expected


def test_normalised_text_has_only_letters_and_simple_punctuation():
    messy = "Ümlaut <b>bold</b> @home #1 ~50 [note] {x} * / \\ |pipe| 3^2 = 9 \u2014 done\u2026"
    assert re.fullmatch(r"[A-Za-z'.,?! ]*", normalise_text(messy))


def test_split_sentences_ends_each_in_punctuation_and_drops_fragments():
    text = normalise_text("The U.S. envoy left. Really? Yes! Then, finally it ended")
    assert split_sentences(text) == [
        "The US envoy left.", "Really?", "Yes!", "Then, finally it ended."]
    assert split_sentences(text, min_words=2) == ["The US envoy left.", "Then, finally it ended."]


def test_words_of_keeps_inner_apostrophes_and_drops_punctuation():
    assert words_of("Hill Top's fire, 'quoted' here.") == ["Hill", "Top's", "fire", "quoted", "here"]
