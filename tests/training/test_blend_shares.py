"""Training runs log the realised token share of each blended dataset (log line, --log-json),
per step and since the start of the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import read_metrics, run_pretrain
from tests.models.test_lst_training import speech_text_prefix  # noqa: F401  (module fixture)


@pytest.mark.parametrize("model", ["lst", "baseline"])
def test_each_step_logs_the_token_share_of_every_blended_dataset(model, base_args, speech_text_prefix,  # noqa: F811
                                                                 tmp_path):
    text_prefix = base_args[base_args.index("--data-path") + 1]
    args = [*base_args, "--model", model, "--data-path", "0.33", speech_text_prefix, "0.67", text_prefix,
            "--train-iters", "3", "--global-batch-size", "8", "--log-json", str(tmp_path / "metrics.jsonl")]
    if model == "lst":
        args += ["--local-window-size", "16"]
    result = run_pretrain(args)
    names = Path(speech_text_prefix).name, Path(text_prefix).name
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert sorted(rows) == [1, 2, 3]
    for row in rows.values():
        # a step's own shares (LST's bucketed steps may come from one dataset only) and the running ones
        assert sum(row[f"share_{name}"] for name in names) == pytest.approx(1.0, abs=1e-6)
        assert sum(row[f"share_so_far_{name}"] for name in names) == pytest.approx(1.0, abs=1e-6)
    last = rows[3]
    assert all(0.0 < last[f"share_so_far_{name}"] < 1.0 for name in names)
    shown = f"tokens so far {min(names)} {100 * last[f'share_so_far_{min(names)}']:.1f}%, {max(names)} "
    assert shown in result.stdout  # the log line shows them too
