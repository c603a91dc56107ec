"""tools/evaluate.py on CUDA: an LST checkpoint trained over NCCL scores a speech + text benchmark with
the prompt cache and as whole sequences, and both agree, as they do on the CPU (test_prompt_cache.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from megatron_lst.evaluation.items import Item, Part, write_items
from tests.conftest import REPO_ROOT, child_env, run_pretrain
from tests.gpu.test_gpu_paths import blend_args, corpus, gpu_args  # noqa: F401 (fixtures)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def random_items(count: int, seed: int) -> list[Item]:
    """Items with speech and text prompts and two endings each; an empty-prompt half is scored as
    whole sequences by the tool itself, the rest through the prompt cache."""
    rng = np.random.default_rng(seed)

    def units(low: int, high: int) -> tuple[int, ...]:
        return tuple(int(u) for u in rng.integers(0, 500, rng.integers(low, high)))

    return [Item(f"i{i}", i % 2, Part(text="the cat sat on the mat", units=units(20, 60)),
                 (Part(text="it purred", units=units(4, 20)), Part(text="markets fell", units=units(4, 20))))
            for i in range(count)]


def test_evaluate_on_cuda_prompt_cache_equals_whole_sequences(blend_args, tmp_path):  # noqa: F811
    run_pretrain([*blend_args, "--model", "lst", "--train-iters", "4", "--save", str(tmp_path / "ckpt"),
                  "--save-interval", "4"])
    write_items(tmp_path / "bench.jsonl", random_items(6, seed=1))
    scores = {}
    for flags in ([], ["--no-prompt-cache"]):
        output = tmp_path / f"r{len(flags)}.json"
        result = subprocess.run(
            [sys.executable, str(REPO_ROOT / "tools" / "evaluate.py"), "--checkpoint", str(tmp_path / "ckpt"),
             "--benchmark", str(tmp_path / "bench.jsonl"), "--directions", "ss", "tt", "st", "ts",
             "--output", str(output), *flags],
            env=child_env(), capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        saved = json.loads(output.read_text())["results"]
        assert set(saved) == {"S->S", "T->T", "S->T", "T->S"}
        scores[len(flags)] = {direction: [s for item in saved[direction]["items"] for s in item["scores"]["sum"]]
                              for direction in saved}
    for direction, cached in scores[0].items():
        assert all(math.isfinite(value) for value in cached)
        np.testing.assert_allclose(cached, scores[1][direction], rtol=1e-3, atol=1e-3, err_msg=direction)
