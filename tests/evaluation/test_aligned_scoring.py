"""Word times on benchmark parts and aligned scoring of LST, against patch lengths worked by hand.

Toy joint vocabulary (evaluation_toys.toy_tokenizer): words a-f 0-5, BOS 6, EOS 7, PAD 8, <t> 9,
<s> 10, units 0-3 -> 11-14.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from evaluation_toys import BigramScorer, toy_tokenizer
from megatron_lst.evaluation.items import Item, Part, Segment, read_items, write_items
from megatron_lst.evaluation.model_scorer import CheckpointScorer, patched_lst_logits, scoring_patch_lengths
from megatron_lst.evaluation.patching_choice import choose_patching
from megatron_lst.evaluation.scoring import DIRECTIONS, SequenceBuilder, score_direction
from megatron_lst.patching import PatchingConfig

BOS, PAD, T_MARK, S_MARK, U = 6, 8, 9, 10, 11
W, SIL = "word", "sil"

# prompt "a b": 3 units, one word (2 units) then a silence (1 unit)
PROMPT = Part(text="a b", units=(0, 1, 2), segments=(Segment(0, 2, W), Segment(2, 3, SIL)))
# a 2-word ending: word (2 units), silence (1), word (2)
TWO_WORDS = Part(text="c d", units=(3, 3, 0, 1, 1),
                 segments=(Segment(0, 2, W), Segment(2, 3, SIL), Segment(3, 5, W)))
ONE_WORD = Part(text="e", units=(2, 2, 2), segments=(Segment(0, 3, W),))


def hand_item() -> Item:
    return Item("hand", 0, PROMPT, (TWO_WORDS, ONE_WORD))


# ----------------------------------------------------------------------------- the format


def test_segments_round_trip_and_give_per_unit_metadata(tmp_path):
    write_items(tmp_path / "b.jsonl", [hand_item()])
    row = json.loads((tmp_path / "b.jsonl").read_text())
    assert row["endings"][0]["segments"] == [[0, 2, "word"], [2, 3, "sil"], [3, 5, "word"]]
    (item,) = read_items(tmp_path / "b.jsonl")
    assert item == hand_item()
    segment_ids, is_silence = item.endings[0].segment_metadata()
    assert segment_ids.tolist() == [0, 0, 1, 2, 2]
    assert is_silence.tolist() == [False, False, True, False, False]
    # a file without word times stays valid
    plain = Item("p", 0, Part(text="a", units=(1,)), (Part(text="b", units=(2,)), Part(text="c")))
    write_items(tmp_path / "plain.jsonl", [plain])
    assert "segments" not in (tmp_path / "plain.jsonl").read_text()
    assert read_items(tmp_path / "plain.jsonl") == [plain]


@pytest.mark.parametrize("segments,message", [
    ([[0, 2, "word"], [3, 5, "word"]], "segment 1 [3, 5) starts at 3, not at where segment 0 ends (2)"),
    ([[0, 3, "word"], [2, 5, "word"]], "segment 1 [2, 5) starts at 2, not at where segment 0 ends (3)"),
    ([[1, 5, "word"]], "starts at 1, not at the part's first unit (0)"),
    ([[0, 2, "word"], [2, 4, "sil"]], "the segments end at unit 4 but the part has 5 units"),
    ([[0, 6, "word"]], "the segments end at unit 6 but the part has 5 units"),
    ([[0, 0, "word"], [0, 5, "word"]], "segment 0 [0, 0) is empty"),
    ([[0, 5, "pause"]], "segment 0 is [0, 5, 'pause'], not [start, end"),
    ([[0, 5]], "segment 0 is [0, 5], not [start, end"),
    ({"0": 5}, "must be a list of [start, end, kind] triples"),
    ([], "is empty but the part has 5 units"),
])
def test_malformed_segments_name_the_item_and_field(tmp_path, segments, message):
    row = hand_item().to_dict()
    row["id"] = "story-7"
    row["endings"][1] = {"text": "e", "units": [0, 1, 2, 3, 0], "segments": segments}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(hand_item().to_dict()) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError) as error:
        read_items(path)
    text = str(error.value)
    assert f"{path}:2: endings[1].segments: " in text
    assert message in text


def test_segments_without_units_are_an_error():
    with pytest.raises(ValueError, match=r"item x: prompt.segments: has segments but no units"):
        Item("x", 0, Part(text="a", segments=(Segment(0, 1, W),)), (ONE_WORD, TWO_WORDS))


def test_espeak_word_times_become_segments_as_in_the_corpus():
    """Samples at 16 kHz -> 25 Hz frames (640 samples each); uncovered frames are silence."""
    from megatron_lst.demo.espeak import WordTiming
    from megatron_lst.evaluation.speech import word_segments

    words = [WordTiming("he", 640, 1920), WordTiming("ran", 2560, 3840)]
    assert word_segments(words, 16_000, 8) == (Segment(0, 1, SIL), Segment(1, 3, W), Segment(3, 4, SIL),
                                               Segment(4, 6, W), Segment(6, 8, SIL))
    # adjacent words leave no silence between them
    words = [WordTiming("a", 0, 1280), WordTiming("b", 1280, 2560)]
    assert word_segments(words, 16_000, 4) == (Segment(0, 2, W), Segment(2, 4, W))


# ----------------------------------------------------------------------------- sequences and patches


def test_aligned_sequences_carry_segment_ids_laid_out_by_hand():
    builder = SequenceBuilder(toy_tokenizer(), word_times=True)
    ss = builder.item_sequences(hand_item(), DIRECTIONS["ss"])[0]
    assert ss.tokens.tolist() == [BOS, S_MARK, U + 0, U + 1, U + 2, U + 3, U + 3, U + 0, U + 1, U + 1]
    # the ending's segments are numbered after the prompt's (0, 1): 2, 3, 4
    assert ss.segment_ids.tolist() == [-1, -1, 0, 0, 1, 2, 2, 3, 4, 4]
    assert ss.is_silence.tolist() == [False] * 4 + [True, False, False, True, False, False]
    ts = builder.item_sequences(hand_item(), DIRECTIONS["ts"])[0]
    assert ts.tokens.tolist() == [BOS, T_MARK, 0, 1, S_MARK, U + 3, U + 3, U + 0, U + 1, U + 1]
    assert ts.segment_ids.tolist() == [-1] * 5 + [0, 0, 1, 2, 2]
    # a prompt cut by --max-length keeps the rest of a cut word as a shorter segment
    short = SequenceBuilder(toy_tokenizer(), max_length=9, word_times=True).item_sequences(hand_item(), DIRECTIONS["ss"])[0]
    assert short.tokens.tolist() == [BOS, S_MARK, U + 1, U + 2, U + 3, U + 3, U + 0, U + 1, U + 1]
    assert short.segment_ids.tolist() == [-1, -1, 0, 1, 2, 2, 3, 4, 4]
    # without word times nothing changes
    assert SequenceBuilder(toy_tokenizer()).item_sequences(hand_item(), DIRECTIONS["ss"])[0].segment_ids is None


def test_aligned_scoring_needs_word_times_on_the_parts_it_reads():
    item = replace(hand_item(), endings=(TWO_WORDS, replace(ONE_WORD, segments=None)))
    builder = SequenceBuilder(toy_tokenizer(), word_times=True)
    with pytest.raises(ValueError, match=r"item hand: endings\[1\] has units but no word times"):
        builder.item_sequences(item, DIRECTIONS["ss"])
    assert builder.item_sequences(item, DIRECTIONS["tt"])[1].segment_ids.tolist() == [-1] * 5  # text: no segments


def patch_rows(direction: str, config: PatchingConfig) -> list[list[int]]:
    """Both endings' rows patched in one right-padded batch; each row's patches up to its length."""
    tokenizer = toy_tokenizer()
    sequences = SequenceBuilder(tokenizer, word_times=True).item_sequences(hand_item(), DIRECTIONS[direction])
    width = max(len(s.tokens) for s in sequences)
    tokens = torch.full((len(sequences), width), PAD, dtype=torch.long)
    segment_ids = torch.full(tokens.shape, -1, dtype=torch.int32)
    is_silence = torch.zeros(tokens.shape, dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        tokens[row, :len(sequence.tokens)] = torch.as_tensor(sequence.tokens)
        segment_ids[row, :len(sequence.tokens)] = torch.as_tensor(sequence.segment_ids)
        is_silence[row, :len(sequence.tokens)] = torch.as_tensor(sequence.is_silence)
    lengths = scoring_patch_lengths(tokens, config, tokenizer, segment_ids, is_silence)
    return [[int(n) for n in row if n > 0] for row in lengths]


def test_aligned_patch_lengths_worked_by_hand():
    aligned = PatchingConfig(strategy="aligned", patch_size=4)
    # S->S ending 0: BOS | <s> | prompt word 2 | sil 1 | word 2 | sil 1 | word 2 (10 tokens, no padding)
    # ending 1 (8 tokens): BOS | <s> | 2 | 1 | word 3, then its 2 PAD tokens as one patch
    assert patch_rows("ss", aligned) == [[1, 1, 2, 1, 2, 1, 2], [1, 1, 2, 1, 3, 2]]
    # T->S: every text token and marker is a patch of its own
    assert patch_rows("ts", aligned)[0] == [1, 1, 1, 1, 1, 2, 1, 2]
    # S->T: the text ending is single-token patches after the aligned prompt
    assert patch_rows("st", aligned)[0] == [1, 1, 2, 1, 1, 1, 1]
    # sil_merged: a silence joins the word before it
    assert patch_rows("ss", replace(aligned, silence_mode="sil_merged"))[0] == [1, 1, 3, 3, 2]
    # the run's cap splits long patches
    assert patch_rows("ss", replace(aligned, silence_mode="sil_merged", max_patch_length=2))[0] == [1, 1, 2, 1, 2, 1, 2]
    # a folded <s> joins the first patch of its span
    assert patch_rows("ss", replace(aligned, fold_speech_marker="always"))[0] == [1, 3, 1, 2, 1, 2]
    # static, for contrast: 8 units in runs of 4, <s> folded into the first (the default) or not
    assert patch_rows("ss", PatchingConfig(strategy="static", patch_size=4))[0] == [1, 5, 4]
    assert patch_rows("ss", PatchingConfig(strategy="static", patch_size=4, fold_speech_marker="never"))[0] == [1, 1, 4, 4]


def test_bigram_scores_do_not_depend_on_patching_plumbing():
    """The aligned path hands the same tokens to a scorer: a table model scores identically."""
    table = BigramScorer.random(15, seed=3)

    class Aligned(BigramScorer):
        def token_logprobs(self, sequences, alignments=None):
            assert alignments is not None and len(alignments) == len(sequences)
            return super().token_logprobs(sequences)

    plain = score_direction([hand_item()], DIRECTIONS["ss"], SequenceBuilder(toy_tokenizer()), table)
    aligned = score_direction([hand_item()], DIRECTIONS["ss"], SequenceBuilder(toy_tokenizer(), word_times=True),
                              Aligned(table.table))
    assert plain.per_item == aligned.per_item


# ----------------------------------------------------------------------------- a real LST model


@pytest.fixture(scope="module")
def lst_model(single_rank_parallel_state):
    from megatron_lst.models.config import model_flavour
    from megatron_lst.models.lst import LSTModel, lst_transformer_configs

    torch.manual_seed(0)
    shape = model_flavour("debug", local_window_size=6)
    return LSTModel(shape, *lst_transformer_configs(shape), vocab_size=64).eval()


def test_aligned_scoring_equals_a_direct_model_call_with_hand_patch_lengths(lst_model):
    tokenizer = toy_tokenizer()
    device = torch.device("cpu")
    aligned = CheckpointScorer(patched_lst_logits(lst_model, PatchingConfig(strategy="aligned"), tokenizer),
                               lst_model, tokenizer, device)
    static = CheckpointScorer(patched_lst_logits(lst_model, PatchingConfig(strategy="static"), tokenizer),
                              lst_model, tokenizer, device)
    result = score_direction([hand_item()], DIRECTIONS["ss"], SequenceBuilder(tokenizer, word_times=True), aligned,
                             batch_size=2)
    static_result = score_direction([hand_item()], DIRECTIONS["ss"], SequenceBuilder(tokenizer), static)
    hand = {0: [[1, 1, 2, 1, 2, 1, 2]], 1: [[1, 1, 2, 1, 3]]}
    sequences = SequenceBuilder(tokenizer).item_sequences(hand_item(), DIRECTIONS["ss"])
    for index, sequence in enumerate(sequences):
        tokens = torch.as_tensor(sequence.tokens)[None]
        with torch.no_grad():
            logits = lst_model(tokens[:, :-1], torch.tensor(hand[index]))[..., :tokenizer.vocab_size].float()
        logprobs = torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None])[0, :, 0].double().numpy()
        direct = logprobs[sequence.ending_start - 1:].sum()
        assert result.per_item[0]["scores"]["sum"][index] == pytest.approx(direct, abs=1e-4)
        # and the patching matters: static patches give other numbers
        assert abs(static_result.per_item[0]["scores"]["sum"][index] - direct) > 1e-3


# ----------------------------------------------------------------------------- --patching auto


def without_word_times(item: Item, ending: int) -> Item:
    endings = list(item.endings)
    endings[ending] = replace(endings[ending], segments=None)
    return replace(item, endings=tuple(endings))


def test_auto_picks_aligned_only_when_model_and_benchmark_allow():
    items = [hand_item(), replace(hand_item(), id="two")]
    for trained in ("aligned", "mixed", "curriculum"):
        assert choose_patching("auto", "lst", trained, items).patching == "aligned"
    assert choose_patching("auto", "lst", "static", items).patching == "static"
    partial = [hand_item(), without_word_times(replace(hand_item(), id="two"), 1)]
    choice = choose_patching("auto", "lst", "curriculum", partial)
    assert choice.patching == "static" and "1 of 6 speech parts" in choice.reason and "item two: endings[1]" in choice.reason
    text_only = [Item("t", 0, Part(text="a"), (Part(text="b"), Part(text="c")))]
    assert choose_patching("auto", "lst", "curriculum", text_only).patching == "static"
    # explicit requests; baselines are never patched and say an explicit request was ignored
    assert choose_patching("static", "lst", "curriculum", items).patching == "static"
    forced = choose_patching("aligned", "lst", "static", items)
    assert forced.patching == "aligned" and "new to it" in forced.note
    baseline = choose_patching("aligned", "baseline", None, partial)
    assert baseline.patching == "none" and "ignored" in baseline.note
    assert choose_patching("auto", "bpe-baseline", None, items).note is None
    assert choose_patching(None, "baseline", None, items).note is None  # --patching not given: nothing to note
    assert choose_patching(None, "lst", "curriculum", items).patching == "static"
    with pytest.raises(ValueError, match=r"1 of 6 have none, e.g. item two: endings\[1\]"):
        choose_patching("aligned", "lst", "curriculum", partial)


def test_an_empty_speech_prompt_needs_no_word_times():
    """A lexical item's prompt is speech of zero units: nothing to patch, so aligned scoring takes it."""
    lexical = replace(hand_item(), prompt=Part(text="", units=()))
    choice = choose_patching("aligned", "lst", "curriculum", [lexical])
    assert choice.patching == "aligned"
    sequence = SequenceBuilder(toy_tokenizer(), word_times=True).item_sequences(lexical, DIRECTIONS["ss"])[0]
    ending = hand_item().endings[0]
    # BOS <s>, then the ending's units with their own segments (numbered from 0)
    assert sequence.segment_ids.tolist()[:2] == [-1, -1]
    assert sequence.segment_ids.tolist()[2:] == ending.segment_metadata()[0].tolist()
