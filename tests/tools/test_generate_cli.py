"""tools/generate.py end to end on tiny trained checkpoints (LST and baseline): continue text and
speech prompts, TTS with the demo vocoder's wav output, ASR; cached and uncached agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import child_env, run_pretrain

REPO = Path(__file__).resolve().parents[2]


def generate(task: str, checkpoint: Path, records: list[dict], tmp_path: Path, *extra: str) -> list[dict]:
    source, target = tmp_path / f"{task}_in.jsonl", tmp_path / f"{task}_out.jsonl"
    source.write_text("".join(json.dumps(record) + "\n" for record in records))
    subprocess.run([sys.executable, str(REPO / "tools/generate.py"), task, "--checkpoint", str(checkpoint),
                    "--input", str(source), "--output", str(target), *extra],
                   check=True, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    return [json.loads(line) for line in target.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lst", "baseline"])
def test_generate_cli(base_args, tmp_path, model):
    checkpoint = tmp_path / "ckpt"
    args = [a if a != "baseline" else model for a in base_args]
    run_pretrain([*args, "--train-iters", "2", "--save", str(checkpoint), "--save-interval", "2"])
    prompts = [{"id": "t", "text": "The cat"}, {"id": "s", "units": [3, 3, 7, 9, 9]}]
    outputs = generate("continue", checkpoint, prompts, tmp_path, "--max-units", "9", "--max-new-tokens", "5")
    assert [o["id"] for o in outputs] == ["t", "s"]
    assert "text" in outputs[0] and len(outputs[1]["units"]) <= 9
    uncached = generate("continue", checkpoint, prompts, tmp_path, "--max-units", "9", "--max-new-tokens", "5",
                        "--no-cache")
    assert uncached == [dict(o, seconds=u["seconds"]) for o, u in zip(outputs, uncached)]
    tts = generate("tts", checkpoint, [{"text": "hello there"}], tmp_path, "--max-units", "12", "--top-k", "5",
                   "--temperature", "1.0")
    assert 0 < len(tts[0]["units"]) <= 12
    patch_size = 4 if model == "lst" else 1
    if tts[0]["stop_reason"] == "max_units":
        assert tts[0]["global_steps"] == -(-len(tts[0]["units"]) // patch_size)
    asr = generate("asr", checkpoint, [{"units": [u % 7 for u in range(20)]}], tmp_path, "--max-new-tokens", "6")
    assert isinstance(asr[0]["text"], str)
