"""End-to-end LST runs of pretrain_lst.py --model lst: tensor- and pipeline-parallel equivalence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.conftest import read_metrics, run_pretrain


def lst_args(base_args: list[str]) -> list[str]:
    args = [*base_args, "--model", "lst", "--local-window-size", "16"]
    return args


def losses(path: Path) -> dict[int, float]:
    return {it: row["lm_loss"] for it, row in read_metrics(path).items()}


def assert_close(reference: dict, other: dict, iterations, rel: float) -> None:
    for it in iterations:
        assert math.isclose(reference[it], other[it], rel_tol=rel), (it, reference[it], other[it])


@pytest.mark.slow
def test_lst_tensor_parallel_matches_single_rank(base_args, tmp_path):
    args = [*lst_args(base_args), "--train-iters", "3"]
    run_pretrain([*args, "--log-json", str(tmp_path / "tp1.jsonl")])
    run_pretrain([*args, "--tensor-model-parallel-size", "2", "--log-json", str(tmp_path / "tp2.jsonl")], nproc=2)
    reference = losses(tmp_path / "tp1.jsonl")
    assert all(math.isfinite(value) for value in reference.values())
    assert_close(reference, losses(tmp_path / "tp2.jsonl"), range(1, 4), 1e-5)


@pytest.mark.slow
def test_lst_pipeline_parallel_1f1b_matches_single_rank(base_args, tmp_path):
    args = [*lst_args(base_args), "--train-iters", "3", "--global-batch-size", "8"]  # 4 micro-batches
    run_pretrain([*args, "--log-json", str(tmp_path / "pp1.jsonl")])
    run_pretrain([*args, "--pipeline-model-parallel-size", "2", "--log-json", str(tmp_path / "pp2.jsonl")], nproc=2)
    assert_close(losses(tmp_path / "pp1.jsonl"), losses(tmp_path / "pp2.jsonl"), range(1, 4), 1e-5)
