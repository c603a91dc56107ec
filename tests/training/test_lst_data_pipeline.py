"""End-to-end: LST batches patched in the DataLoader, read once per TP group, bucketed by length.

pretrain_lst.py on a speech-text + text blend with mixed patching (a per-sample draw): the losses
of a TP = 2 run whose rank 0 alone reads (with two DataLoader workers) equal those of a TP = 1 run
reading in process, because the draw is keyed by (seed, step, sample) and the batch broadcast is
bitwise.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from tests.conftest import read_metrics, run_pretrain
from tests.models.test_lst_training import speech_text_prefix  # noqa: F401  (module fixture)


def losses(path: Path) -> dict[int, float]:
    return {it: row["lm_loss"] for it, row in read_metrics(path).items()}


@pytest.mark.slow
def test_lst_tp2_reading_on_rank_0_with_workers_matches_tp1(base_args, speech_text_prefix, tmp_path):  # noqa: F811
    text_prefix = base_args[base_args.index("--data-path") + 1]
    args = [*base_args, "--model", "lst", "--local-window-size", "16",
            "--data-path", "0.5", speech_text_prefix, "0.5", text_prefix,
            "--patching", "mixed", "--patch-size", "4", "--train-iters", "4", "--global-batch-size", "8",
            "--eval-interval", "4", "--eval-iters", "1"]
    workers = tmp_path / "workers.yaml"
    workers.write_text(yaml.safe_dump({"num_workers": 2, "bucket_window": 2}))
    in_process = tmp_path / "in_process.yaml"
    in_process.write_text(yaml.safe_dump({"num_workers": 0, "bucket_window": 2}))
    run_pretrain([*args, "--config", str(in_process), "--log-json", str(tmp_path / "tp1.jsonl")])
    run_pretrain([*args, "--config", str(workers), "--tensor-model-parallel-size", "2",
                  "--log-json", str(tmp_path / "tp2.jsonl")], nproc=2)
    reference, tp2 = losses(tmp_path / "tp1.jsonl"), losses(tmp_path / "tp2.jsonl")
    assert sorted(reference) == sorted(tp2) == [1, 2, 3, 4]
    for iteration in reference:
        assert math.isclose(reference[iteration], tp2[iteration], rel_tol=1e-5), (iteration, reference, tp2)
    rows = read_metrics(tmp_path / "tp1.jsonl")
    assert {"speech_loss", "text_loss"} <= set(rows[1])
    valid = [read_metrics(tmp_path / name, "valid")[4]["lm_loss"] for name in ("tp1.jsonl", "tp2.jsonl")]
    assert math.isclose(valid[0], valid[1], rel_tol=1e-5), valid
