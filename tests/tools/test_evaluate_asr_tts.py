"""tools/evaluate_asr_tts.py: held-out segments cut like the training data, and the prompt-swap NLL."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from megatron_lst.validation import InputError

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("evaluate_asr_tts", REPO / "tools" / "evaluate_asr_tts.py")
evaluate_asr_tts = importlib.util.module_from_spec(spec)
spec.loader.exec_module(evaluate_asr_tts)


def record(doc_id: str, words: int) -> dict:
    # word k spans frames [3k, 3k + 2); frame 3k + 2 is a pause
    return {"id": doc_id, "units": list(range(3 * words)),
            "words": [{"text": f"w{k}", "start": 3 * k, "end": 3 * k + 2} for k in range(words)]}


def test_segments_are_word_groups_of_each_utterance(tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(json.dumps(record("a", 5)) + "\n\n" + json.dumps(record("b", 2)) + "\n")
    items = evaluate_asr_tts.segments(str(heldout), words_per_segment=2, limit=10)
    # a: [w0 w1] [w2 w3], remainder w4 kept (>= 1 word); b: [w0 w1]
    assert [item["text"] for item in items] == ["w0 w1", "w2 w3", "w4", "w0 w1"]
    assert items[1]["units"] == [6, 7, 8, 9, 10]  # w2 starts at 6, w3 ends at 11 (the pause between stays)
    assert len(evaluate_asr_tts.segments(str(heldout), words_per_segment=2, limit=3)) == 3


def test_bad_heldout_line_names_file_and_line(tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    broken = record("b", 2)
    broken["words"][1]["end"] = 99
    heldout.write_text(json.dumps(record("a", 2)) + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(InputError, match=r"heldout.jsonl:2: words\[1\]: span"):
        evaluate_asr_tts.segments(str(heldout), words_per_segment=2, limit=10)


def test_conditioning_gain_swaps_each_answer_to_the_next_prompt(monkeypatch):
    # a fake scorer whose NLL is the mean distance between each prompt and its answer
    def fake_nll(generator, prompts, answers):
        return sum(abs(p[0] - a[0]) for p, a in zip(prompts, answers)) / len(prompts)

    monkeypatch.setattr(evaluate_asr_tts, "answer_nll", fake_nll)
    result = evaluate_asr_tts.conditioning_nll(None, [[1], [2], [4]], [[1], [2], [4]])
    assert result["answer_nll"] == 0
    assert result["answer_nll_mismatched"] == pytest.approx((1 + 2 + 3) / 3)  # 2 vs 1, 4 vs 2, 1 vs 4
    assert result["conditioning_gain"] == pytest.approx(2.0)
    assert evaluate_asr_tts.conditioning_nll(None, [[1]], [[1]]) == {"answer_nll": 0}
