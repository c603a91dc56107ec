"""Benchmark items are read strictly: each bad field is one InputError naming file, line and field.

Each case used to be accepted silently: "123" read as units [1, 2, 3], 2.9 truncated to 2, a unit
outside the codebook, a label of 1.7, "1" or true, an id used twice, text that is not a string, an
empty ending.
"""

from __future__ import annotations

import json

import pytest

from megatron_lst.evaluation.benchmarks import read_heldout_documents
from megatron_lst.evaluation.items import read_items
from megatron_lst.evaluation.lexical import read_word_counts
from megatron_lst.validation import InputError


def good_row(item_id: str = "a") -> dict:
    return {"id": item_id, "label": 1, "prompt": {"text": "once", "units": [1, 2]},
            "endings": [{"text": "x", "units": [3]}, {"text": "y", "units": [4, 5]}]}


def with_change(path: tuple, value) -> dict:
    row = good_row("b")
    target = row
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return row


BAD_ROWS = {
    "units as a string": (("prompt", "units"), "123", "prompt.units: must be a list"),
    "float unit": (("endings", 0, "units"), [2.9], "endings[0].units[0]: must be an integer, got the number 2.9"),
    "unit outside the codebook": (("endings", 1, "units"), [4, 50], "endings[1].units[1]: 50 is outside [0, 50)"),
    "negative unit": (("prompt", "units"), [-1], "prompt.units[0]: -1 is outside [0, 50)"),
    "float label": (("label",), 1.7, "label: must be an integer, got the number 1.7"),
    "string label": (("label",), "1", "label: must be an integer, got the string '1'"),
    "boolean label": (("label",), True, "label: must be an integer, got a boolean"),
    "label out of range": (("label",), 2, "label: 2 is not an index of its 2 endings"),
    "text not a string": (("endings", 0, "text"), 7, "endings[0].text: must be a string, got the number 7"),
    "empty ending": (("endings", 1), {}, "endings[1]: is empty"),
    "blank ending text": (("endings", 1), {"text": "  "}, "endings[1]: is empty"),
    "empty ending units": (("endings", 0), {"text": "x", "units": []}, "endings[0].units: is empty"),
    "ending not an object": (("endings", 0), "x", "endings[0]: must be an object"),
    "one ending": (("endings",), [{"text": "x"}], "endings: needs at least 2 endings"),
}


@pytest.mark.parametrize("name", sorted(BAD_ROWS))
def test_bad_field_is_named_with_file_line_and_field(tmp_path, name):
    path, value, message = BAD_ROWS[name]
    source = tmp_path / "bench.jsonl"
    source.write_text(json.dumps(good_row()) + "\n\n" + json.dumps(with_change(path, value)) + "\n")
    with pytest.raises(InputError) as error:
        read_items(source, num_units=50)
    assert str(error.value).startswith(f"{source}:3: {message}"), str(error.value)


def test_duplicate_ids_name_both_lines(tmp_path):
    source = tmp_path / "bench.jsonl"
    source.write_text("\n".join(json.dumps(good_row(i)) for i in ("a", "b", "a")) + "\n")
    with pytest.raises(InputError, match=r"bench.jsonl:3: id: 'a' is already the id of line 1"):
        read_items(source)


def test_a_good_file_reads_back(tmp_path):
    source = tmp_path / "bench.jsonl"
    source.write_text(json.dumps(good_row("a")) + "\n" + json.dumps(good_row("b")) + "\n")
    items = read_items(source, num_units=6)
    assert [item.id for item in items] == ["a", "b"] and items[0].endings[1].units == (4, 5)


def test_non_utf8_benchmark_text_is_refused(tmp_path):
    source = tmp_path / "bench.jsonl"
    source.write_bytes(json.dumps(good_row()).replace('"once"', '"on\\u00e9"').encode().replace(b"\\u00e9", b"\xe9")
                       + b"\n")
    with pytest.raises(InputError, match=r"bench.jsonl:1: prompt.text: invalid UTF-8 byte 0xe9"):
        read_items(source)


def test_heldout_documents_and_word_counts_share_the_reader(tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text('{"id": "d", "sentences": ["a b."]}\n{"id": "e", "sentences": ["ok", 3]}\n')
    with pytest.raises(InputError, match=r"heldout.jsonl:2: sentences\[1\]: must be a string"):
        read_heldout_documents(heldout)
    text = tmp_path / "text.jsonl"
    text.write_text('{"text": "Cat cat"}\n{"text": null}\n')
    with pytest.raises(InputError, match=r"text.jsonl:2: text: must be a string, got null"):
        read_word_counts([text])
