"""Importers read small files written in the real layouts: the Story Cloze Test CSV, the HellaSwag
jsonl (release and Hugging Face label types), and the spoken StoryCloze folder's units jsonl."""

from __future__ import annotations

import json

import pytest

from megatron_lst.evaluation.importers import read_benchmark
from megatron_lst.evaluation.scoring import DIRECTIONS, skip_reason
from megatron_lst.validation import InputError

STORYCLOZE_HEADER = ("InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,"
                     "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding\n")


def test_storycloze_csv(tmp_path):
    path = tmp_path / "cloze_test_val__spring2016.csv"
    path.write_text(STORYCLOZE_HEADER
                    + '138d5bfb-05cc-41e3-bf2c-fa85ebad14e2,Rick grew up in a troubled household.,"He never found '
                      'good support in family, and turned to gangs.",It wasn\'t long before Rick got shot in a robbery.,'
                      'The incident caused him to turn a new leaf.,He is happy now.,He joined a gang.,1\n'
                    + "bff9f820-9605-4875-b9af-fe6f14d04256,Laverne needs to prepare something.,She decides to bake.,"
                      "She makes cookies.,She packs them.,The group is happy.,The group is angry.,2\n", encoding="utf-8")
    first, second = read_benchmark(path, "storycloze-csv")
    assert first.id == "138d5bfb-05cc-41e3-bf2c-fa85ebad14e2" and first.label == 0
    assert first.prompt.text.startswith("Rick grew up in a troubled household. He never found good support in family,")
    assert [e.text for e in first.endings] == ["He is happy now.", "He joined a gang."]
    assert second.label == 1 and second.prompt.units is None
    assert skip_reason([first, second], DIRECTIONS["tt"]) is None
    assert skip_reason([first, second], DIRECTIONS["ss"]) is not None
    path.write_text(STORYCLOZE_HEADER + "x,a,b,c,d,e,f,3\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"cloze_test_val__spring2016.csv:2: AnswerRightEnding: must be 1 or 2"):
        read_benchmark(path, "storycloze-csv")
    path.write_text("InputStoryid,InputSentence1\nx,a\n", encoding="utf-8")
    with pytest.raises(InputError, match="no column 'InputSentence2'"):
        read_benchmark(path, "storycloze-csv")


def test_hellaswag_jsonl(tmp_path):
    rows = [
        {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
         "ctx": "A man is sitting on a roof. he", "split": "val", "split_type": "indomain", "label": 3,
         "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                     "is holding a rubik's cube.", "starts pulling up roofing on a roof."], "source_id": "activitynet~v_-JhWjGDPHMY"},
        {"ind": 92, "activity_label": "Clean and jerk", "ctx_a": "A lady walks to a barbell.", "ctx_b": "she",
         "label": "1", "endings": ["a", "b", "c", "d"]},  # the Hugging Face copy: label a string, no ctx
    ]
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    first, second = read_benchmark(path, "hellaswag")
    assert first.id == "24" and first.label == 3 and len(first.endings) == 4
    assert first.prompt.text == "Roof shingle removal: A man is sitting on a roof. he"
    assert second.prompt.text == "Clean and jerk: A lady walks to a barbell. she" and second.label == 1
    rows[1]["label"] = ""  # the test split
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(InputError, match=r"hellaswag_val.jsonl:2: label: must be an ending index"):
        read_benchmark(path, "hellaswag")


def test_spoken_storycloze_units(tmp_path):
    """tools/extract_units.py over the folder: one line per wav, id = stem, in any order."""
    path = tmp_path / "sSC_units.jsonl"
    lines = [{"id": "3_incorrect", "units": [7, 7, 2]}, {"id": "0_correct", "units": [1, 2, 3]},
             {"id": "1_incorrect", "units": [4, 5]}, {"id": "2_correct", "units": [6]}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    first, second = read_benchmark(path, "slamkit", num_units=10)
    assert first.endings[first.label].units == (1, 2, 3) and first.endings[1 - first.label].units == (4, 5)
    assert second.endings[second.label].units == (6,) and first.label != second.label
    assert first.prompt.units == () and first.id == "0_correct|1_incorrect"
    assert skip_reason([first, second], DIRECTIONS["ss"]) is None
    path.write_text(json.dumps({"id": "0_a", "units": [1]}) + "\n" + json.dumps({"id": "0_b", "units": [2]}) + "\n")
    with pytest.raises(InputError, match=r"sSC_units.jsonl:2: id: '0_b' and '0_a' \(line 1\) share the index 0"):
        read_benchmark(path, "slamkit")
    path.write_text(json.dumps({"id": "0_a", "units": [12]}) + "\n")
    with pytest.raises(InputError, match=r":1: units\[0\]: 12 is outside \[0, 10\)"):
        read_benchmark(path, "slamkit", num_units=10)
