"""Benchmark builders: filtering of short documents, distractors from other documents, determinism."""

from __future__ import annotations

import json

import pytest

from megatron_lst.evaluation.benchmarks import (HELLASWAG, STORY_CLOZE, BenchmarkSpec, build_benchmark,
                                                main, read_heldout_documents)
from megatron_lst.evaluation.items import read_items


def write_documents(path, count: int = 12) -> list[dict]:
    rows = []
    for index in range(count):
        length = 3 if index % 4 == 0 else 5 + index % 6  # every fourth document is too short
        rows.append({"id": f"doc{index:02d}", "sentences": [f"doc {index} sentence {s}." for s in range(length)]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


@pytest.mark.parametrize("spec", [STORY_CLOZE, HELLASWAG])
def test_items_follow_their_document_and_draw_endings_elsewhere(tmp_path, spec):
    write_documents(tmp_path / "heldout.jsonl")
    documents = read_heldout_documents(tmp_path / "heldout.jsonl")
    items = build_benchmark(documents, spec, seed=1)
    assert len(items) == 9  # 12 documents, 3 shorter than five sentences
    labels = set()
    for item in items:
        document = item.id.split("/")[1]
        index = int(document[3:])
        assert item.prompt.text == " ".join(f"doc {index} sentence {s}." for s in range(4))
        assert len(item.endings) == spec.num_endings
        assert item.endings[item.label].text == f"doc {index} sentence 4."
        sources = [e.text.split()[1] for i, e in enumerate(item.endings) if i != item.label]
        assert str(index) not in sources and len(set(sources)) == len(sources)
        assert all(e.units is None for e in item.endings)
        labels.add(item.label)
    assert len(labels) > 1


def test_same_seed_same_benchmark_whatever_the_line_order(tmp_path):
    rows = write_documents(tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(row) + "\n" for row in reversed(rows)))
    first = build_benchmark(read_heldout_documents(tmp_path / "a.jsonl"), HELLASWAG, seed=3)
    second = build_benchmark(read_heldout_documents(tmp_path / "b.jsonl"), HELLASWAG, seed=3)
    other_seed = build_benchmark(read_heldout_documents(tmp_path / "a.jsonl"), HELLASWAG, seed=4)
    assert first == second and first != other_seed


def test_windows_and_max_items(tmp_path):
    write_documents(tmp_path / "heldout.jsonl")
    documents = read_heldout_documents(tmp_path / "heldout.jsonl")
    two_windows = build_benchmark(documents, BenchmarkSpec("storycloze", 2, windows_per_document=2), seed=0)
    assert len(two_windows) == 9 + 2  # doc05 and doc11 (10 sentences) give a second window
    assert len(build_benchmark(documents, STORY_CLOZE, seed=0, max_items=4)) == 4


def test_cli_writes_a_readable_benchmark(tmp_path, capsys):
    write_documents(tmp_path / "heldout.jsonl")
    assert main(["--heldout", str(tmp_path / "heldout.jsonl"), "--kind", "hellaswag",
                 "--output", str(tmp_path / "bench.jsonl")]) == 0
    assert len(read_items(tmp_path / "bench.jsonl")) == 9
    assert "wrote 9 hellaswag items" in capsys.readouterr().out
