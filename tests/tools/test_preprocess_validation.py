"""tools/preprocess_data.py refuses bad input with exit 2, one line naming file/line/field, and no files.

Each case is one that used to pass silently or end in a traceback: a bad --unit-rate, an empty
input, a non-UTF-8 byte (once stored as U+FFFD), a speech record after a text record (its units
once dropped), and a full disk (once a bare RuntimeError).
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_lst.data import indexed_writer
from megatron_lst.data.synthetic import random_aligned_records
from tests.conftest import child_env
from tests.tools.test_preprocess_data import REPO, TOOL, preprocess_data, text_records, write_jsonl


def run(tmp_path: Path, source: Path, model: str, *extra: str) -> int:
    return preprocess_data.main(["--input", str(source), "--output-prefix", str(tmp_path / "out"),
                                 "--tokenizer-model", model, "--quiet", *extra])


def error_line(capsys) -> str:
    """The run's stderr, which must be exactly one ``error:`` line."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("rate", ["0", "nan", "-25", "inf"])
def test_unit_rate_must_be_positive_and_finite(tmp_path, sentencepiece_model, capsys, rate):
    source = write_jsonl(tmp_path / "in.jsonl", random_aligned_records(2, seed=1))
    assert run(tmp_path, source, sentencepiece_model, "--unit-rate", rate) == 2
    assert "--unit-rate: must be a positive finite number" in error_line(capsys)
    assert list(tmp_path.iterdir()) == [source]


@pytest.mark.parametrize("content", [b"", b"\n  \n\n"])
def test_an_input_without_records_is_an_error_not_an_empty_dataset(tmp_path, sentencepiece_model, capsys, content):
    source = tmp_path / "in.jsonl"
    source.write_bytes(content)
    assert run(tmp_path, source, sentencepiece_model) == 2
    assert f"{source}: no documents" in error_line(capsys)
    assert list(tmp_path.iterdir()) == [source]


def test_skipping_every_line_is_an_error_too(tmp_path, sentencepiece_model, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": 1}, {"body": "x"}])
    assert run(tmp_path, source, sentencepiece_model, "--on-error", "skip") == 2
    assert "no documents" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [source]


def test_a_non_utf8_byte_is_named_with_its_line_and_field(tmp_path, sentencepiece_model, capsys):
    lines = [json.dumps(r).encode() for r in text_records(3)]
    lines.insert(1, b'{"id": "x", "text": "caf\xe9 au lait"}')
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    assert run(tmp_path, source, sentencepiece_model) == 2
    line = error_line(capsys)
    assert f"{source}:2: text: invalid UTF-8 byte 0xe9" in line
    assert list(tmp_path.iterdir()) == [source]


def test_a_non_utf8_byte_in_a_speech_word(tmp_path, sentencepiece_model, capsys):
    records = random_aligned_records(2, seed=3)
    raw = json.dumps(records[1]).replace(json.dumps(records[1]["words"][0]["text"]), '"w\udcff"', 1)
    source = tmp_path / "in.jsonl"
    source.write_bytes(json.dumps(records[0]).encode() + b"\n"
                       + raw.encode("utf-8", errors="surrogateescape") + b"\n")
    assert run(tmp_path, source, sentencepiece_model) == 2
    assert f"{source}:2: words[0].text: invalid UTF-8 byte 0xff" in error_line(capsys)


def test_a_speech_record_after_a_text_record_is_refused(tmp_path, sentencepiece_model, capsys):
    speech = random_aligned_records(1, seed=2)[0]
    source = write_jsonl(tmp_path / "in.jsonl", [*text_records(2), {**speech, "text": "spoken words"}])
    assert run(tmp_path, source, sentencepiece_model) == 2
    assert f"{source}:3: units: a speech record in a file detected as text" in error_line(capsys)
    assert list(tmp_path.iterdir()) == [source]
    # asked for explicitly, the transcripts alone are kept
    assert run(tmp_path, source, sentencepiece_model, "--format", "text") == 0


class FullDiskWriter:
    """The C++ builder, failing as a full file system does on the first append."""

    def __init__(self, path: str, *args):
        self.real = REAL_WRITER(path, *args)

    def add_documents(self, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    def finalize(self, path: str):
        self.real.finalize(path)


REAL_WRITER = indexed_writer.IndexedDatasetWriter


def test_disk_full_names_the_file_and_keeps_the_previous_outputs(tmp_path, sentencepiece_model, capsys, monkeypatch):
    source = write_jsonl(tmp_path / "in.jsonl", text_records(5))
    previous = {tmp_path / "out_text_document.bin": b"an earlier run", tmp_path / "out_text_document.idx": b"idx"}
    for path, content in previous.items():
        path.write_bytes(content)
    monkeypatch.setattr(indexed_writer, "IndexedDatasetWriter", FullDiskWriter)
    assert run(tmp_path, source, sentencepiece_model) == 2
    assert error_line(capsys) == f"error: disk full writing {tmp_path / 'out_text_document.bin'}"
    assert sorted(tmp_path.iterdir()) == sorted([source, *previous])  # no temporary files left
    assert all(path.read_bytes() == content for path, content in previous.items())


def test_cli_bad_line_exit_2_single_stderr_line_and_untouched_outputs(tmp_path, sentencepiece_model):
    source = write_jsonl(tmp_path / "in.jsonl", [*text_records(3), {"text": ["not", "a", "string"]}])
    earlier = tmp_path / "out_text_document.bin"
    earlier.write_bytes(b"an earlier run")
    completed = subprocess.run(
        [sys.executable, str(TOOL), "--input", str(source), "--output-prefix", str(tmp_path / "out"),
         "--tokenizer-model", sentencepiece_model, "--quiet"],
        capture_output=True, text=True, cwd=REPO, env=child_env(), timeout=120)
    assert completed.returncode == 2
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {source}:4: text: must be a string, got a list "
                     "(nothing written; --on-error skip leaves bad lines out)"], completed.stderr
    assert earlier.read_bytes() == b"an earlier run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out_text_document.bin"]
