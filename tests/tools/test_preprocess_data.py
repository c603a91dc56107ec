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
from megatron_lst.data.synthetic import random_aligned_records, random_sentence

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
    assert "skipped lines: 3" in err and f"{source}:6: text: missing field" in err
    assert len(IndexedDataset(str(tmp_path / "out_text_document"))) == 7


def run_speech(tmp_path: Path, records: list, model: str, *extra: str) -> int:
    source = write_jsonl(tmp_path / "speech.jsonl", records)
    return preprocess_data.main(["--input", str(source), "--output-prefix", str(tmp_path / "sp"),
                                 "--tokenizer-model", model, "--quiet", *extra])


def test_speech_dataset_returns_the_source_ids(tmp_path, sentencepiece_model):
    from megatron_lst.data.speech_documents import SpeechTextDocuments

    records = random_aligned_records(300, seed=3)
    assert run_speech(tmp_path, records, sentencepiece_model) == 0
    tokenizer = JointTokenizer.from_file(sentencepiece_model)
    raw = IndexedDataset(str(tmp_path / "sp_speech_document"), multimodal=True)
    documents = SpeechTextDocuments(str(tmp_path / "sp_speech_document"))
    assert len(documents) == len(raw.document_indices) - 1 == len(records)
    for index, record in enumerate(records):
        first, last = raw.document_indices[index], raw.document_indices[index + 1]
        sequences = [raw[int(i)] for i in range(first, last)]
        units = np.concatenate([ids for ids, mode in sequences if mode == 1] or [np.empty(0)])
        assert units.tolist() == record["units"]
        word_ids = [ids.tolist() for ids, mode in sequences if mode == 0]
        assert word_ids == [tokenizer.encode_text(w["text"]) if w["text"] else [] for w in record["words"]]
        document = documents[index]
        assert document.unit_ids.tolist() == record["units"]
        covered = sum(w["end"] - w["start"] for w in record["words"])
        silence_frames = np.diff(document.unit_offsets)[document.segment_is_silence].sum()
        assert silence_frames == len(record["units"]) - covered
    metadata = json.loads((tmp_path / "sp_speech_document.json").read_text())
    assert metadata["summary"]["documents"] == 300
    assert metadata["summary"]["units"] == sum(len(r["units"]) for r in records)


def test_seconds_are_converted_at_the_unit_rate(tmp_path, sentencepiece_model):
    from megatron_lst.data.speech_documents import SpeechTextDocuments

    record = {"units": list(range(50)), "words": [{"text": "fox", "start_s": 0.4, "end_s": 1.0}]}
    assert run_speech(tmp_path, [record], sentencepiece_model, "--unit-rate", "50") == 0
    document = SpeechTextDocuments(str(tmp_path / "sp_speech_document"))[0]
    assert document.unit_offsets.tolist() == [0, 20, 50]
    assert document.segment_is_silence.tolist() == [True, False]


BAD_SPEECH_LINES = {
    "truncated": '{"units": [1, 2, 3], "words": [{"text": "a", "st',
    "units not a list": {"units": "1 2 3", "words": []},
    "float unit": {"units": [1, 2.5], "words": []},
    "bool unit": {"units": [True], "words": []},
    "negative unit": {"units": [1, -1], "words": []},
    "huge unit": {"units": [10**30], "words": []},
    "unit at codebook size": {"units": [501], "words": []},
    "nan seconds": '{"units": [1, 2], "words": [{"text": "a", "start_s": NaN, "end_s": 0.04}]}',
    "missing words": {"units": [1, 2]},
    "word text not a string": {"units": [1, 2], "words": [{"text": 3, "start": 0, "end": 1}]},
    "unsorted": {"units": [1] * 10, "words": [{"text": "a", "start": 5, "end": 6}, {"text": "b", "start": 1, "end": 2}]},
    "overlap": {"units": [1] * 10, "words": [{"text": "a", "start": 0, "end": 5}, {"text": "b", "start": 4, "end": 6}]},
    "past the end": {"units": [1] * 4, "words": [{"text": "a", "start": 2, "end": 9}]},
    "end before start": {"units": [1] * 4, "words": [{"text": "a", "start": 3, "end": 1}]},
    "string frame": {"units": [1] * 4, "words": [{"text": "a", "start": "0", "end": 1}]},
    "not an object": "[1, 2, 3]",
}


@pytest.mark.parametrize("name", sorted(BAD_SPEECH_LINES))
def test_bad_speech_line_fails_cleanly_with_nothing_written(tmp_path, sentencepiece_model, capsys, name):
    good = random_aligned_records(3, seed=4)
    code = run_speech(tmp_path, [*good, BAD_SPEECH_LINES[name], *good], sentencepiece_model, "--format", "speech")
    assert code == 2
    err = capsys.readouterr().err
    assert "speech.jsonl:4: " in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speech.jsonl"]


def test_skip_mode_keeps_good_speech_lines(tmp_path, sentencepiece_model, capsys):
    good = random_aligned_records(5, seed=5)
    bad = [BAD_SPEECH_LINES[name] for name in sorted(BAD_SPEECH_LINES)]
    assert run_speech(tmp_path, [*good, *bad], sentencepiece_model, "--format", "speech", "--on-error", "skip") == 0
    assert f"skipped lines: {len(bad)}" in capsys.readouterr().err
    assert len(IndexedDataset(str(tmp_path / "sp_speech_document"), multimodal=True).document_indices) == 6


def test_unit_bpe_round_trips_each_segment(tmp_path, sentencepiece_model):
    from megatron_lst.data.speech_documents import SpeechTextDocuments
    from megatron_lst.data.unit_bpe import UnitBPE, train_unit_bpe

    records = random_aligned_records(40, seed=6)
    model = train_unit_bpe([r["units"] for r in records], tmp_path / "bpe" / "units", vocab_size=600)
    assert run_speech(tmp_path, records, sentencepiece_model, "--unit-bpe", str(model)) == 0
    bpe = UnitBPE(model)
    documents = SpeechTextDocuments(str(tmp_path / "sp_speech_document"))
    for index, record in enumerate(records[:10]):
        document = documents[index]
        decoded = [bpe.decode(document.unit_ids[a:b]) for a, b in zip(document.unit_offsets[:-1], document.unit_offsets[1:])]
        assert np.concatenate(decoded or [np.empty(0)]).tolist() == record["units"]
        assert len(document.unit_ids) <= len(record["units"])


def test_segment_words_cuts_each_utterance_into_word_groups(tmp_path, sentencepiece_model):
    from megatron_lst.data.speech_documents import SpeechTextDocuments

    records = [r for r in random_aligned_records(40, seed=5) if len(r["words"]) >= 2]
    assert run_speech(tmp_path, records, sentencepiece_model, "--segment-words", "4") == 0
    documents = SpeechTextDocuments(str(tmp_path / "sp_speech_document"))
    expected = []  # (units, number of words) per segment, cut by hand: 4 words, a remainder of >= 2 kept
    for record in records:
        words = record["words"]
        for first in range(0, len(words), 4):
            group = words[first:first + 4]
            if len(group) >= 2 and group[-1]["end"] > group[0]["start"]:
                expected.append(record["units"][group[0]["start"]:group[-1]["end"]])
    assert len(documents) == len(expected) > len(records)
    for index, units in enumerate(expected):
        assert documents[index].unit_ids.tolist() == units
    summary = json.loads((tmp_path / "sp_speech_document.json").read_text())["summary"]
    assert summary["lines"] == len(records) and summary["documents"] == len(expected)


def test_negative_segment_words_is_refused(tmp_path, sentencepiece_model, capsys):
    assert run_speech(tmp_path, random_aligned_records(3, seed=1), sentencepiece_model, "--segment-words", "-1") == 2
    assert "--segment-words" in capsys.readouterr().err
    assert not list(tmp_path.glob("sp_*"))
