"""The run config a checkpoint records is JSON, and one function reads it back (old repr-dict checkpoints too)."""

from __future__ import annotations

import json

import pytest

from megatron_lst.training.arguments import parse_args
from megatron_lst.training.run_config import config_from_saved, decode_saved, encode_saved

FLAGS = ["--model-flavour", "demo", "--model", "lst", "--patching", "curriculum", "--curriculum-tau2", "0.5",
         "--data-path", "0.3", "speech", "0.7", "text", "--train-flops", "1e15", "--num-workers", "2"]


def test_the_saved_config_is_json_and_rebuilds_the_same_config():
    trained = parse_args(FLAGS)
    text = encode_saved(trained.to_dict())
    assert json.loads(text)["train"]["model"] == "lst"  # any JSON reader can read it
    assert config_from_saved(text) == trained


def test_settings_older_versions_kept_in_extra_are_read_as_flags():
    trained = parse_args(FLAGS)
    legacy = trained.to_dict()
    legacy["data"].pop("num_workers")
    legacy["data"].pop("bucket_window")
    legacy["extra"] = {"num_workers": 2, "bucket_window": 16}  # where older versions kept them
    assert config_from_saved(encode_saved(legacy)) == trained


def test_a_python_repr_is_refused_with_the_way_to_adopt_it():
    with pytest.raises(ValueError, match="not JSON.*tools/write_checkpoint_manifest.py"):
        decode_saved(repr({"num_units": 501, "flag": True}), "vocab_layout")


def test_overrides_apply_and_unknown_settings_are_dropped_with_a_note(capsys):
    saved = parse_args(FLAGS).to_dict()
    saved["train"]["setting_from_another_release"] = 1
    config = config_from_saved(encode_saved(saved), tensor_model_parallel_size=1, tokenizer_model="moved.model")
    assert config.data.tokenizer_model == "moved.model"
    assert "ignoring settings this version does not know: ['setting_from_another_release']" in capsys.readouterr().err


@pytest.mark.parametrize("text, reason", [("__import__('os')", "not JSON"),
                                          ("[1, 2]", "a list, not a mapping")])
def test_a_record_that_is_no_mapping_is_refused_and_never_executed(text, reason):
    with pytest.raises(ValueError, match=reason):
        decode_saved(text)


def test_a_saved_choice_this_version_refuses_names_the_flag():
    saved = parse_args(FLAGS).to_dict()
    saved["patching"]["patching"] = "zigzag"
    with pytest.raises(ValueError, match="--patching must be one of static, aligned, mixed, curriculum"):
        config_from_saved(encode_saved(saved))
