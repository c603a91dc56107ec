"""Scoring arithmetic against hand-computed log-probs of a bigram table, and its invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation_toys import BigramScorer, toy_tokenizer
from megatron_lst.evaluation.items import Item, Part
from megatron_lst.evaluation.scoring import (DIRECTIONS, SequenceBuilder, score_direction,
                                             skip_reason, wilson_interval)
from megatron_lst.evaluation.story_completion import evaluate_items, format_report

BOS, T_MARK, S_MARK, UNIT0 = 6, 9, 10, 11


def hand_table() -> np.ndarray:
    """Every transition log(0.1) except the few the hand computation below uses."""
    table = np.full((15, 15), math.log(0.1))
    table[BOS, T_MARK] = math.log(0.5)
    table[T_MARK, 0] = math.log(0.4)      # <t> -> a
    table[0, 1] = math.log(0.3)           # a -> b
    table[1, 2] = math.log(0.6)           # b -> c
    table[1, 3] = math.log(0.2)           # b -> d
    table[3, 4] = math.log(0.9)           # d -> e
    table[1, S_MARK] = math.log(0.25)     # b -> <s>
    table[S_MARK, UNIT0 + 2] = math.log(0.7)
    return table


def test_sequence_layout_per_direction():
    builder = SequenceBuilder(toy_tokenizer())
    item = Item("x", 0, Part(text="a b", units=(3, 1)), (Part(text="c", units=(2,)), Part(text="d e", units=(0, 0))))
    tt = builder.item_sequences(item, DIRECTIONS["tt"])
    assert tt[0].tokens.tolist() == [BOS, T_MARK, 0, 1, 2] and tt[0].ending_start == 4
    assert tt[1].tokens.tolist() == [BOS, T_MARK, 0, 1, 3, 4] and tt[1].ending_start == 4
    ss = builder.item_sequences(item, DIRECTIONS["ss"])
    assert ss[1].tokens.tolist() == [BOS, S_MARK, UNIT0 + 3, UNIT0 + 1, UNIT0, UNIT0]
    ts = builder.item_sequences(item, DIRECTIONS["ts"])
    assert ts[0].tokens.tolist() == [BOS, T_MARK, 0, 1, S_MARK, UNIT0 + 2] and ts[0].ending_start == 5
    st = builder.item_sequences(item, DIRECTIONS["st"])
    assert st[1].tokens.tolist() == [BOS, S_MARK, UNIT0 + 3, UNIT0 + 1, T_MARK, 3, 4]


def test_too_long_prompt_loses_its_oldest_tokens():
    builder = SequenceBuilder(toy_tokenizer(), max_length=5)
    item = Item("x", 0, Part(text="a b c d"), (Part(text="e"), Part(text="f")))
    sequence = builder.item_sequences(item, DIRECTIONS["tt"])[0]
    assert sequence.tokens.tolist() == [BOS, T_MARK, 2, 3, 4]


def test_scores_match_hand_computation():
    item = Item("x", 1, Part(text="a b", units=(0,)), (Part(text="c", units=(2,)), Part(text="d e", units=(1,))))
    result = score_direction([item], DIRECTIONS["tt"], SequenceBuilder(toy_tokenizer()), BigramScorer(hand_table()))
    scores = result.per_item[0]["scores"]
    # ending "c": one token, b -> c
    assert scores["sum"][0] == pytest.approx(math.log(0.6))
    assert scores["mean"][0] == pytest.approx(math.log(0.6))
    assert scores["seq_nll"][0] == pytest.approx(-(math.log(0.5) + math.log(0.4) + math.log(0.3) + math.log(0.6)) / 4)
    # ending "d e": b -> d, d -> e
    assert scores["sum"][1] == pytest.approx(math.log(0.2) + math.log(0.9))
    assert scores["mean"][1] == pytest.approx((math.log(0.2) + math.log(0.9)) / 2)
    assert scores["seq_nll"][1] == pytest.approx(
        -(math.log(0.5) + math.log(0.4) + math.log(0.3) + math.log(0.2) + math.log(0.9)) / 5)
    # sum: log .6 = -0.51 beats log .18 = -1.71 -> ending 0 (wrong); mean: log .6 vs -0.86 -> 0 (wrong);
    # seq_nll: 0.968 vs 1.226 -> 0 (wrong). The label is 1, so every score gets this item wrong.
    assert result.per_item[0]["predicted"] == {"sum": 0, "mean": 0, "seq_nll": 0}
    assert all(acc.correct == 0 and acc.total == 1 for acc in result.accuracy.values())


class PairedUnits(type(toy_tokenizer())):
    """A unit-BPE-like tokenizer: units (0, 1) merge into one piece, spelt by unit id 3; others stay."""

    def encode_units(self, units):
        pieces, index = [], 0
        while index < len(units):
            if tuple(units[index:index + 2]) == (0, 1):
                pieces.append(3)
                index += 2
            else:
                pieces.append(units[index])
                index += 1
        return super().encode_units(pieces)


def test_speech_mean_divides_by_units_not_pieces():
    """A speech ending's mean is per unit it holds, however many tokens spell it: ending 0 (units
    0 1 0 1, two pieces) against ending 1 (units 2 2 2, three tokens), worked by hand; per piece
    the choice flips, so the divisor decides the item."""
    tokenizer = PairedUnits(toy_tokenizer().text_model, num_units=4, spare_units=0)
    table = np.full((15, 15), math.log(0.1))
    table[UNIT0 + 2, UNIT0 + 3] = math.log(0.3)  # unit 2 -> piece
    table[UNIT0 + 3, UNIT0 + 3] = math.log(0.3)  # piece -> piece
    table[UNIT0 + 2, UNIT0 + 2] = math.log(0.5)  # unit 2 -> unit 2
    item = Item("x", 0, Part(units=(2,)), (Part(units=(0, 1, 0, 1)), Part(units=(2, 2, 2))))
    sequences = SequenceBuilder(tokenizer).item_sequences(item, DIRECTIONS["ss"])
    assert sequences[0].tokens[sequences[0].ending_start:].tolist() == [UNIT0 + 3, UNIT0 + 3]
    result = score_direction([item], DIRECTIONS["ss"], SequenceBuilder(tokenizer), BigramScorer(table))
    scores = result.per_item[0]["scores"]
    assert scores["sum"][0] == pytest.approx(2 * math.log(0.3))
    assert scores["mean"][0] == pytest.approx(2 * math.log(0.3) / 4)  # -0.60 per unit (-1.20 per piece)
    assert scores["mean"][1] == pytest.approx(math.log(0.5))  # -0.69 per unit and per token
    assert result.per_item[0]["predicted"]["mean"] == 0


def test_cross_modal_marker_is_scored_in_the_sequence_but_not_in_the_ending():
    item = Item("x", 0, Part(text="a b"), (Part(units=(2,)), Part(units=(1,))))
    result = score_direction([item], DIRECTIONS["ts"], SequenceBuilder(toy_tokenizer()), BigramScorer(hand_table()))
    scores = result.per_item[0]["scores"]
    assert scores["sum"][0] == pytest.approx(math.log(0.7))
    assert scores["seq_nll"][0] == pytest.approx(
        -(math.log(0.5) + math.log(0.4) + math.log(0.3) + math.log(0.25) + math.log(0.7)) / 5)
    assert result.per_item[0]["predicted"]["sum"] == 0


def random_items(count: int, seed: int, num_endings: int = 2) -> list[Item]:
    rng = np.random.default_rng(seed)
    items = []
    for index in range(count):
        words = lambda n: " ".join(rng.choice(["a", "b", "c", "d", "e", "f"], size=n))  # noqa: E731
        endings = []
        while len(endings) < num_endings:
            ending = Part(text=words(int(rng.integers(1, 4))), units=tuple(int(u) for u in rng.integers(0, 4, 3)))
            if all(ending.text != e.text and ending.units != e.units for e in endings):
                endings.append(ending)
        prompt = Part(text=words(5), units=tuple(int(u) for u in rng.integers(0, 4, 8)))
        items.append(Item(f"i{index}", int(rng.integers(num_endings)), prompt, tuple(endings)))
    return items


def swap_endings(item: Item, label_follows: bool) -> Item:
    """The two endings exchanged; the label either follows the true ending or stays put."""
    first, second = item.endings
    return Item(item.id, 1 - item.label if label_follows else item.label, item.prompt, (second, first))


@pytest.mark.parametrize("direction", ["tt", "ss", "st", "ts"])
def test_swapped_endings_give_one_minus_accuracy(direction):
    items = random_items(40, seed=3)
    builder, scorer = SequenceBuilder(toy_tokenizer()), BigramScorer.random(15, seed=5)
    original = score_direction(items, DIRECTIONS[direction], builder, scorer)
    label_on_distractor = score_direction([swap_endings(i, False) for i in items], DIRECTIONS[direction],
                                          builder, scorer)
    label_follows = score_direction([swap_endings(i, True) for i in items], DIRECTIONS[direction],
                                    builder, scorer)
    for name, accuracy in original.accuracy.items():
        assert 0 < accuracy.correct < accuracy.total
        assert label_on_distractor.accuracy[name].value == pytest.approx(1 - accuracy.value)
        assert label_follows.accuracy[name].correct == accuracy.correct


def test_batches_respect_batch_size_and_results_do_not_depend_on_it():
    items = random_items(7, seed=1, num_endings=4)
    builder = SequenceBuilder(toy_tokenizer())
    small, large = BigramScorer.random(15, seed=2), BigramScorer.random(15, seed=2)
    by_three = score_direction(items, DIRECTIONS["tt"], builder, small, batch_size=3)
    by_all = score_direction(items, DIRECTIONS["tt"], builder, large, batch_size=100)
    assert small.batch_sizes == [3] * 9 + [1] and large.batch_sizes == [28]
    assert by_three.per_item == by_all.per_item


def test_text_only_benchmark_runs_tt_and_skips_speech_directions():
    items = [Item(i.id, i.label, Part(text=i.prompt.text), tuple(Part(text=e.text) for e in i.endings))
             for i in random_items(10, seed=4)]
    report = evaluate_items(items, SequenceBuilder(toy_tokenizer()), BigramScorer.random(15, seed=0))
    assert [r.direction.label for r in report.results] == ["T->T"]
    assert set(report.skipped) == {"S->S", "S->T", "T->S"}
    assert report.skipped["S->S"] == "no units in the benchmark's prompts"
    table = format_report(report)
    assert "S->S skipped: no units in the benchmark's prompts" in table
    assert "T->T" in table


def test_items_whose_endings_do_not_fit_are_skipped_one_by_one_not_truncated():
    long_endings = (Part(text="d", units=(0, 1, 2, 3, 0)), Part(text="e", units=(1,)))
    short_endings = (Part(text="d", units=(0, 1)), Part(text="e", units=(1,)))
    items = [Item("long", 0, Part(text="a b c", units=(1, 2)), long_endings),
             Item("short", 1, Part(text="a b c", units=(1, 2)), short_endings)]
    builder = SequenceBuilder(toy_tokenizer(), max_length=6)
    report = evaluate_items(items, builder, BigramScorer.random(15, seed=0), directions=["ss", "tt"])
    ss, tt = report.results
    assert (ss.direction.label, ss.scored, ss.skipped) == ("S->S", 1, ("long",))
    assert [record["id"] for record in ss.per_item] == ["short"] and ss.accuracy["sum"].total == 1
    assert (tt.scored, tt.skipped) == (2, ())
    assert ss.to_dict()["scored"] == 1 and ss.to_dict()["skipped"] == 1
    assert "S->S: 1 items do not fit the model's length and were skipped, e.g. long" in format_report(report)
    # the kept item's scores are those of scoring it alone
    alone = evaluate_items(items[1:], builder, BigramScorer.random(15, seed=0), directions=["ss"])
    assert alone.results[0].per_item == ss.per_item
    # a direction none of whose items fits is skipped as a whole, with the reason
    report = evaluate_items(items[:1], builder, BigramScorer.random(15, seed=0), directions=["ss"])
    assert report.skipped == {"S->S": "none of the 1 items fits in 6 tokens (raise --max-length)"}


def test_partly_synthesised_benchmark_is_skipped_with_a_count():
    items = random_items(4, seed=6)
    items[2] = Item("bare", 0, Part(text="a"), (Part(text="b"), Part(text="c")))
    assert skip_reason(items, DIRECTIONS["ss"]) == "1 of 4 items have no units in their prompts"
    assert skip_reason(items, DIRECTIONS["tt"]) is None


def test_wilson_interval():
    low, high = wilson_interval(50, 100)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
