"""tools/evaluate.py --patching on a real curriculum-trained LST checkpoint (two steps on text).

Marked slow: it trains a checkpoint. The patch lengths themselves are checked by hand in
tests/evaluation/test_aligned_scoring.py; this checks the command line: what auto picks, that the
output says which patching each result used, and that aligned is refused without word times.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from megatron_lst.evaluation.items import Item, Part, Segment, write_items
from tests.conftest import REPO_ROOT, child_env, run_pretrain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def curriculum_checkpoint(text_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lst_curriculum")
    run_pretrain([
        "--model-flavour", "debug", "--model", "lst", "--patching", "curriculum",
        "--data-path", text_corpus.data_prefix, "--tokenizer-model", str(text_corpus.tokenizer_model),
        "--data-cache-path", str(folder / "index_cache"), "--seq-length", "64",
        "--micro-batch-size", "2", "--global-batch-size", "4", "--lr", "1e-3", "--lr-warmup-iters", "2",
        "--eval-interval", "1000", "--eval-iters", "1", "--seed", "7", "--train-iters", "3",
        "--save", str(folder / "ckpt"),
    ])
    return folder / "ckpt"


def spoken(text: str, units: tuple[int, ...], segments: tuple[Segment, ...]) -> Part:
    return Part(text=text, units=units, segments=segments)


def items_with_word_times() -> list[Item]:
    prompt = spoken("The cat sat.", (10, 10, 11, 12, 12, 12, 13, 40, 41, 41, 5),
                    (Segment(0, 3, "word"), Segment(3, 7, "word"), Segment(7, 8, "sil"),
                     Segment(8, 10, "word"), Segment(10, 11, "sil")))
    good = spoken("It purred.", (7, 7, 8, 9, 9, 9, 1), (Segment(0, 2, "word"), Segment(2, 6, "word"),
                                                       Segment(6, 7, "sil")))
    bad = spoken("Markets fell.", (300, 301, 302, 303, 304, 305), (Segment(0, 4, "word"), Segment(4, 6, "word")))
    return [Item(f"i{i}", i % 2, prompt, (good, bad) if i % 2 == 0 else (bad, good)) for i in range(2)]


def evaluate(checkpoint, benchmark, output, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "evaluate.py"), "--checkpoint", str(checkpoint), "--benchmark",
         str(benchmark), "--directions", "ss", "ts", "--output", str(output), *extra],
        env=child_env(), capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


def test_auto_scores_a_curriculum_model_aligned_only_with_word_times(curriculum_checkpoint, tmp_path):
    items = items_with_word_times()
    write_items(tmp_path / "timed.jsonl", items)
    untimed = [replace(items[0], endings=(items[0].endings[0], replace(items[0].endings[1], segments=None))),
               items[1]]
    write_items(tmp_path / "untimed.jsonl", untimed)

    auto = evaluate(curriculum_checkpoint, tmp_path / "timed.jsonl", tmp_path / "auto.json", "--patching", "auto")
    assert auto.returncode == 0, auto.stderr[-3000:]
    assert "patching: aligned (auto: trained with curriculum patching" in auto.stdout
    saved = json.loads((tmp_path / "auto.json").read_text())
    assert saved["patching"]["used"] == "aligned" and saved["patching"]["requested"] == "auto"
    assert {entry["patching"] for entry in saved["results"].values()} == {"aligned"}

    static = evaluate(curriculum_checkpoint, tmp_path / "timed.jsonl", tmp_path / "static.json")  # the default
    assert static.returncode == 0, static.stderr[-3000:]
    static_saved = json.loads((tmp_path / "static.json").read_text())
    assert static_saved["patching"]["requested"] == "static"
    assert static_saved["results"]["S->S"]["patching"] == "static"
    # other patches, other numbers: the option reaches the model
    aligned_sums = saved["results"]["S->S"]["items"][0]["scores"]["sum"]
    static_sums = static_saved["results"]["S->S"]["items"][0]["scores"]["sum"]
    assert max(abs(a - s) for a, s in zip(aligned_sums, static_sums)) > 1e-4

    fallback = evaluate(curriculum_checkpoint, tmp_path / "untimed.jsonl", tmp_path / "fallback.json", "--patching",
                        "auto")
    assert fallback.returncode == 0, fallback.stderr[-3000:]
    assert "patching: static (auto: 1 of 6 speech parts have no word times (e.g. item i0: endings[1]))" in fallback.stdout

    refused = evaluate(curriculum_checkpoint, tmp_path / "untimed.jsonl", tmp_path / "refused.json",
                       "--patching", "aligned")
    assert refused.returncode == 2
    assert "--patching aligned needs word times ('segments') on every speech part" in refused.stderr
    assert "item i0: endings[1]" in refused.stderr


def test_malformed_word_times_are_refused_naming_item_and_field(curriculum_checkpoint, tmp_path):
    row = items_with_word_times()[1].to_dict()
    row["prompt"]["segments"][1] = [4, 7, "word"]  # a gap: the word before it ends at 3
    (tmp_path / "bad.jsonl").write_text(json.dumps(row) + "\n")
    result = evaluate(curriculum_checkpoint, tmp_path / "bad.jsonl", tmp_path / "bad.json")
    assert result.returncode == 2
    assert "error: " in result.stderr and "bad.jsonl:1: prompt.segments: segment 1 [4, 7) starts at 4" in result.stderr
