"""pretrain_lst.py checks its data against its flags at start (megatron_lst/data/input_checks.py).

Blend weights that are not positive and finite, prefixes without files, speech data written with
another text tokenizer or codebook: each one InputError naming the flag or the sidecar and field,
and exit 2 with one line from the command line.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from megatron_lst.data.input_checks import check_training_data, parse_blend
from megatron_lst.data.synthetic import random_aligned_records
from megatron_lst.tokenizer import load_text_model
from megatron_lst.validation import InputError
from tests.conftest import REPO_ROOT, child_env
from tests.tools.test_preprocess_data import preprocess_data, write_jsonl


@pytest.mark.parametrize("weight", ["-0.3", "0", "nan", "inf", "-inf", "x"])
def test_blend_weights_must_be_positive_and_finite(weight):
    with pytest.raises(InputError, match=rf"^--data-path: weight '{weight}' of 'b' "):
        parse_blend(["0.7", "a", weight, "b"])
    assert parse_blend(["0.7", "a", "0.3", "b"]) == (["a", "b"], [0.7, 0.3])


@pytest.fixture(scope="module")
def speech_prefix(tmp_path_factory, sentencepiece_model) -> str:
    folder = tmp_path_factory.mktemp("speech_data")
    source = write_jsonl(folder / "speech.jsonl", random_aligned_records(4, seed=3))
    assert preprocess_data.main(["--input", str(source), "--output-prefix", str(folder / "sp"),
                                 "--tokenizer-model", sentencepiece_model, "--quiet"]) == 0
    return str(folder / "sp_speech_document")


def test_the_data_of_the_run_passes(speech_prefix, sentencepiece_model):
    check_training_data([speech_prefix], load_text_model(sentencepiece_model), 501)


def test_a_prefix_without_files_is_named(speech_prefix, sentencepiece_model, tmp_path):
    missing = str(tmp_path / "nothing_text_document")
    with pytest.raises(InputError, match=rf"--data-path: dataset prefix '{missing}' has no {missing}.bin"):
        check_training_data(["0.5", speech_prefix, "0.5", missing], load_text_model(sentencepiece_model), 501)


def test_speech_data_of_another_text_tokenizer_of_the_same_size_is_refused(speech_prefix, sentencepiece_model,
                                                                          other_sentencepiece_model):
    with pytest.raises(InputError) as error:
        check_training_data([speech_prefix], load_text_model(other_sentencepiece_model), 501)
    text = str(error.value)
    assert text.startswith(f"{speech_prefix}.json: text_model: preprocessed with another text tokenizer")
    assert "pieces_sha256" in text and sentencepiece_model in text and other_sentencepiece_model in text


def test_a_codebook_other_than_the_runs_is_refused(speech_prefix, sentencepiece_model):
    with pytest.raises(InputError, match=rf"{speech_prefix}.json: num_units: 501 .* --num-units 100"):
        check_training_data([speech_prefix], load_text_model(sentencepiece_model), 100)


def test_pretrain_cli_refuses_a_zero_weight_with_exit_2_and_one_line(speech_prefix, sentencepiece_model, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "pretrain_lst.py"), "--model-flavour", "debug", "--model", "lst",
         "--data-path", "1", speech_prefix, "0", speech_prefix, "--tokenizer-model", sentencepiece_model,
         "--seq-length", "64", "--micro-batch-size", "1", "--global-batch-size", "1", "--train-iters", "1",
         "--save", str(tmp_path / "ckpt")],
        env=child_env(), capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: --data-path: weight '0' of '{speech_prefix}' must be a positive finite number"], lines
    assert not (tmp_path / "ckpt").exists()
