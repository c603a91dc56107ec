"""tools/generate.py writes only inside --wav-dir: an id that is not a plain file name is refused
(exit 2, one line naming the input file, line and field) before anything is loaded or written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_lst.data.jsonl_records import RecordError
from megatron_lst.inference.prompt_records import PromptFileError, plain_file_name, read_prompt_records
from tests.conftest import REPO_ROOT, child_env

BAD_IDS = ["../x", "/tmp/x", "a/b", "..", ".", "", "a\0b", "x" * 300, ["list"], 1.5, True, "a\\b"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_ids_that_would_leave_the_folder_are_refused(bad):
    with pytest.raises(RecordError):
        plain_file_name(bad, ".wav")


@pytest.mark.parametrize("good", ["s1", 7, "utt-0001_a.b", "été", "x" * 251])
def test_plain_names_pass(good):
    assert plain_file_name(good, ".wav") == str(good)


def write_prompts(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_the_error_names_file_line_and_field(tmp_path):
    prompts = write_prompts(tmp_path / "texts.jsonl", [{"id": "ok", "text": "hi"}, "", {"id": "../evil", "text": "x"}])
    with pytest.raises(PromptFileError, match=r"texts\.jsonl:3: field 'id' '\.\./evil' contains a path separator"):
        read_prompt_records(prompts, "tts", names_wavs=True)
    # without wavs the id is only echoed into the output: no file is named after it
    assert [p.id for p in read_prompt_records(prompts, "tts", names_wavs=False)] == ["ok", "../evil"]


def test_duplicate_ids_and_bad_records_are_refused(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    with pytest.raises(PromptFileError, match=r"p\.jsonl:2: field 'id' 'a' is also the id on line 1"):
        read_prompt_records(prompts, "tts", names_wavs=True)
    prompts = write_prompts(tmp_path / "q.jsonl", [{"units": [1, -2]}])
    with pytest.raises(PromptFileError, match=r"q\.jsonl:1: field 'units'"):
        read_prompt_records(prompts, "asr", names_wavs=False)
    prompts = write_prompts(tmp_path / "r.jsonl", ["{not json"])
    with pytest.raises(PromptFileError, match=r"r\.jsonl:1: malformed JSON"):
        read_prompt_records(prompts, "continue", names_wavs=False)


@pytest.mark.parametrize("bad", ["../outside", "/abs/outside", "", "sub/x"])
def test_cli_refuses_the_id_before_writing_anything(tmp_path, bad):
    prompts = write_prompts(tmp_path / "texts.jsonl", [{"id": "fine", "text": "hello"}, {"id": bad, "text": "bye"}])
    output = tmp_path / "out.jsonl"
    output.write_text("previous results\n")
    wav_dir = tmp_path / "wavs" / "inner"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "generate.py"), "tts", "--checkpoint", str(tmp_path / "no_ckpt"),
         "--input", str(prompts), "--output", str(output), "--vocoder", "demo:none.npz", "--wav-dir", str(wav_dir)],
        env=child_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {prompts}:2: field 'id'"), result.stderr
    assert output.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out.jsonl", "texts.jsonl"]
