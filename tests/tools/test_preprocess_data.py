"""tools/preprocess_data.py: what megatron-core reads back, worker invariance, bad-line handling."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_lst.tokenizer import JointTokenizer
from conftest import random_sentence

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "preprocess_data.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("preprocess_data", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


preprocess_data = load_tool()


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def text_records(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": random_sentence(rng, rng.randint(0, 25))} for _ in range(count)]


def test_text_dataset_holds_the_tokenised_documents(tmp_path, sentencepiece_model):
    records = text_records(60)
    source = write_jsonl(tmp_path / "in.jsonl", records)
    code = preprocess_data.main(["--input", str(source), "--output-prefix", str(tmp_path / "out"),
                                 "--tokenizer-model", sentencepiece_model, "--append-eod", "--quiet"])
    assert code == 0
    tokenizer = JointTokenizer.from_file(sentencepiece_model)
    dataset = IndexedDataset(str(tmp_path / "out_text_document"))
    assert len(dataset) == len(records)
    assert dataset.index.dtype == np.uint16
    for index, record in enumerate(records):
        expected = tokenizer.encode_text(record["text"]) + [tokenizer.eos_id]
        assert dataset[index].tolist() == expected


def test_multiple_json_keys_give_one_dataset_each(tmp_path, sentencepiece_model):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "the fox", "title": "a dog"}] * 3)
    code = preprocess_data.main(["--input", str(source), "--output-prefix", str(tmp_path / "out"),
                                 "--tokenizer-model", sentencepiece_model, "--json-keys", "text", "title",
                                 "--quiet"])
    assert code == 0
    tokenizer = JointTokenizer.from_file(sentencepiece_model)
    # Keep the dataset alive while reading: megatron-core unmaps the file in __del__.
    titles = IndexedDataset(str(tmp_path / "out_title_document"))
    assert titles[2].tolist() == tokenizer.encode_text("a dog")
    assert len(IndexedDataset(str(tmp_path / "out_text_document"))) == 3


def test_workers_produce_identical_files(tmp_path, sentencepiece_model):
    source = write_jsonl(tmp_path / "in.jsonl", text_records(300, seed=1))
    common = ["--input", str(source), "--tokenizer-model", sentencepiece_model, "--quiet"]
    assert preprocess_data.main(common + ["--output-prefix", str(tmp_path / "one")]) == 0
    completed = subprocess.run(
        [sys.executable, str(TOOL), *common, "--output-prefix", str(tmp_path / "two"), "--workers", "2"],
        capture_output=True, text=True, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "documents: 300" in completed.stderr
    for suffix in (".bin", ".idx"):
        one = (tmp_path / f"one_text_document{suffix}").read_bytes()
        assert one == (tmp_path / f"two_text_document{suffix}").read_bytes()


def test_bad_line_fails_with_exit_2_and_no_output(tmp_path, sentencepiece_model, capsys):
    records = text_records(10) + ['{"text": "truncated']  + text_records(5)
    source = write_jsonl(tmp_path / "in.jsonl", records)
    code = preprocess_data.main(["--input", str(source), "--output-prefix", str(tmp_path / "out"),
                                 "--tokenizer-model", sentencepiece_model, "--quiet"])
    assert code == 2
    assert f"{source}:11:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [source]


def test_skip_mode_counts_and_leaves_bad_lines_out(tmp_path, sentencepiece_model, capsys):
    records = text_records(4) + [{"text": 5}, {"body": "x"}, "[1, 2]"] + text_records(3, seed=2)
    source = write_jsonl(tmp_path / "in.jsonl", records)
    code = preprocess_data.main(["--input", str(source), "--output-prefix", str(tmp_path / "out"),
                                 "--tokenizer-model", sentencepiece_model, "--on-error", "skip", "--quiet"])
    assert code == 0
    err = capsys.readouterr().err
    assert "skipped lines: 3" in err and f"{source}:6: missing field 'text'" in err
    assert len(IndexedDataset(str(tmp_path / "out_text_document"))) == 7
