"""Both engines run the one loop (training/loop.py): the same NaN policy, logs, validation and saves.

A NaN loss is injected at step 2 (``--debug-inject-nan-iter``, which the loop's review of the step
applies before the engine's update). Under each engine the step must be skipped and counted, the
schedule must not advance, and the later steps must be those of a run whose step 2 changed nothing:
DeepSpeed ZeRO-1 discards the update through its overflow path, megatron-core by not stepping, and
the two give the same losses after it. Logs, validations and checkpoints fall on the same steps.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from megatron_lst.training.train_state import StepResult, TrainState
from tests.conftest import read_metrics, run_pretrain

ENGINES = {
    "megatron": [],
    "deepspeed": ["--engine", "deepspeed", "--deepspeed-config", "examples/deepspeed/zero1.json"],
}
CADENCE = ["--train-iters", "4", "--debug-inject-nan-iter", "2", "--log-interval", "2", "--eval-interval", "2",
           "--eval-iters", "1", "--save-interval", "2"]


def run_engine(base_args: list[str], tmp_path, engine: str) -> dict:
    folder = tmp_path / engine
    log = folder / "log.jsonl"
    result = run_pretrain([*base_args, *CADENCE, *ENGINES[engine], "--save", str(folder / "ckpt"),
                           "--log-json", str(log)])
    return {
        "stdout": result.stdout,
        "train": read_metrics(log),
        "valid": read_metrics(log, "valid"),
        "log_lines": [int(n) for n in re.findall(r"^\[[-0-9 :]+\] iteration +(\d+) \|", result.stdout, flags=re.MULTILINE)],
        "saved": sorted(path.name for path in (folder / "ckpt").glob("iter_*")),
    }


@pytest.mark.slow  # two training runs, about 35 s
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_both_engines_skip_a_nan_step_and_share_the_cadence(base_args, tmp_path, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    runs = {engine: run_engine(base_args, tmp_path, engine) for engine in ENGINES}
    for engine, run in runs.items():
        rows = run["train"]
        assert "iteration 2: loss is nan (NaN/Inf); skipping this step" in run["stdout"], engine
        assert [rows[it]["skipped"] for it in (1, 2, 3, 4)] == [0, 1, 0, 0], engine
        assert rows[2]["grad_norm"] is None and rows[2]["lr"] == rows[1]["lr"], engine  # no update, no schedule step
        assert sorted(run["valid"]) == [2, 4], engine
        assert run["log_lines"] == [2, 4], engine
        assert run["saved"] == ["iter_0000002", "iter_0000004"], engine
    megatron, deepspeed = runs["megatron"]["train"], runs["deepspeed"]["train"]
    for step in (1, 3, 4):  # had DeepSpeed applied step 2, steps 3 and 4 would differ
        assert deepspeed[step]["lm_loss"] == pytest.approx(megatron[step]["lm_loss"], rel=1e-4), step
        assert deepspeed[step]["lr"] == pytest.approx(megatron[step]["lr"], rel=1e-9), step


def test_train_state_round_trips_through_its_state_dict():
    state = TrainState()
    state.advance(StepResult(metrics={"lm loss": 2.0, "share web": 0.25}, tokens=400.0, flops=1e9, skipped=True), 8)
    saved = state.state_dict()
    restored = TrainState()
    restored.load_state_dict(saved)
    assert restored == state and restored.skipped_iterations == 1 and restored.tokens_by_dataset == {"web": 100.0}
    saved["tokens_by_dataset"]["web"] = 0.0  # a copy: saving does not alias the live counts
    assert state.tokens_by_dataset == {"web": 100.0}
    older = TrainState()
    older.load_state_dict({"iteration": 3})  # a checkpoint from before a field existed
    assert older.iteration == 3 and older.tokens_by_dataset == {} and older.flops_so_far == 0.0


def test_the_loop_and_engines_call_tasks_only_through_the_protocol():
    """Every task method the loop or an engine calls is declared on ``TrainingTask`` (with a default
    where a family may have nothing to add), so none of them asks a task what it has."""
    training = Path(__file__).resolve().parents[2] / "megatron_lst" / "training"
    for name in ("loop.py", "engine.py", "megatron_engine.py", "deepspeed_engine.py"):
        source = (training / name).read_text()
        assert not re.search(r"(hasattr|getattr)\((self\.)?task\b", source), name
