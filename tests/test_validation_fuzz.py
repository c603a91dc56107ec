"""Property tests: arbitrary JSON values or bytes in any field either parse to a valid record or
raise InputError, never another exception (the readers of megatron_lst/validation.py's layer)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megatron_lst.data.input_checks import parse_blend
from megatron_lst.data.jsonl_records import load_json_object, parse_speech_record, text_field
from megatron_lst.evaluation.items import Item, read_items
from megatron_lst.validation import InputError, parse_json_object

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


def speech_record():
    word = st.fixed_dictionaries({"text": json_values | st.text(max_size=5)},
                                 optional={"start": json_values | st.integers(-2, 12),
                                           "end": json_values | st.integers(-2, 12),
                                           "start_s": json_values, "end_s": json_values})
    return st.fixed_dictionaries({}, optional={
        "id": json_values, "units": json_values | st.lists(st.integers(-3, 600), max_size=12),
        "words": json_values | st.lists(word | json_values, max_size=4), "text": json_values})


def part():
    return json_values | st.fixed_dictionaries({}, optional={
        "text": json_values | st.text(max_size=5), "units": json_values | st.lists(st.integers(-2, 60), max_size=5),
        "segments": json_values | st.lists(st.lists(json_values | st.integers(0, 5), max_size=3), max_size=3)})


def item_row():
    return st.fixed_dictionaries({}, optional={
        "id": json_values | st.text(max_size=3), "label": json_values | st.integers(-1, 3),
        "prompt": part(), "endings": json_values | st.lists(part(), max_size=4)})


@FUZZ
@given(st.binary(max_size=40) | st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_any_bytes_are_an_object_or_an_input_error(raw):
    try:
        assert isinstance(parse_json_object(raw), dict)
    except InputError:
        pass


@FUZZ
@given(speech_record(), st.sampled_from([1.0, 25.0, 1e300]))
def test_aligned_records_parse_or_raise_input_error(record, unit_rate):
    try:
        utterance = parse_speech_record(load_json_object(json.dumps(record)), 501, unit_rate)
    except InputError:
        return
    assert len(utterance.word_texts) == len(utterance.word_starts)
    assert ((0 <= utterance.units) & (utterance.units < 501)).all()
    assert (utterance.word_ends <= len(utterance.units)).all()


@FUZZ
@given(st.dictionaries(st.sampled_from(["text", "body"]), json_values, max_size=2))
def test_text_records_parse_or_raise_input_error(record):
    try:
        assert isinstance(text_field(load_json_object(json.dumps(record)), "text"), str)
    except InputError:
        pass


@FUZZ
@given(item_row())
def test_benchmark_items_parse_or_raise_input_error(row):
    try:
        item = Item.from_dict(row, num_units=50)
    except InputError:
        return
    assert 0 <= item.label < len(item.endings) and all(not ending.is_empty() for ending in item.endings)


@FUZZ
@given(st.lists(item_row(), min_size=1, max_size=3))
def test_benchmark_files_parse_or_raise_input_error_with_a_line(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("fuzz") / "bench.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    try:
        read_items(path)
    except InputError as error:
        assert error.file == str(path) and error.line is not None


@FUZZ
@given(st.lists(st.text(max_size=6) | st.floats().map(str) | st.integers(-5, 5).map(str), max_size=6))
def test_blend_arguments_parse_or_raise_input_error(data_path):
    try:
        prefixes, weights = parse_blend(data_path)
    except InputError as error:
        assert error.field == "--data-path"
        return
    assert weights is None or all(weight > 0 for weight in weights)
