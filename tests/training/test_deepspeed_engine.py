"""--engine deepspeed: the same losses as megatron's DDP, ZeRO stages on CPU, checkpoints and resume."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from megatron_lst.training.arguments import parse_args
from tests.conftest import read_metrics, run_pretrain

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="deepspeed is not installed (pip install -e .[deepspeed])")

ACCUMULATING = ["--global-batch-size", "8", "--train-iters", "5"]  # 2 ranks x micro 2 x 2 micro-batches


def ds_args(stage: int) -> list[str]:
    return ["--engine", "deepspeed", "--deepspeed-config", f"examples/deepspeed/zero{stage}.json"]


@pytest.fixture(autouse=True)
def cpu_accelerator(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")


def test_flags_own_batch_clip_optimizer_and_schedule(tmp_path):
    from megatron_lst.training.deepspeed_engine import load_ds_config

    config = parse_args(["--global-batch-size", "16", "--micro-batch-size", "2", "--clip-grad", "0.5"])
    filled = load_ds_config(config, data_parallel_size=2)
    assert filled["train_batch_size"] == 16 and filled["gradient_accumulation_steps"] == 4
    assert filled["gradient_clipping"] == 0.5 and filled["zero_optimization"] == {"stage": 1}
    contradicting = tmp_path / "ds.json"
    contradicting.write_text(json.dumps({"train_batch_size": 32}))
    config.train.deepspeed_config = str(contradicting)
    with pytest.raises(ValueError, match="train_batch_size=32 contradicts the flags"):
        load_ds_config(config, 2)
    contradicting.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(ValueError, match="remove the 'optimizer' section"):
        load_ds_config(config, 2)


def test_weight_decay_groups_follow_megatron():
    from megatron_lst.training.deepspeed_engine import adamw_param_groups

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = adamw_param_groups(model)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])] and decay["wd_mult"] == 1.0
    assert len(no_decay["params"]) == 3 and no_decay["wd_mult"] == 0.0


def test_tensor_parallel_is_refused(base_args):
    result = run_pretrain([*base_args, *ds_args(1), "--tensor-model-parallel-size", "2", "--dry-run",
                           "--world-size", "2"], check=False)
    assert result.returncode == 2 and "--engine deepspeed is data parallel only" in result.stdout


@pytest.mark.slow
def test_zero1_matches_megatron_ddp_for_five_steps(base_args, tmp_path):
    """Acceptance: DeepSpeed ZeRO-1 on 2 CPU ranks = megatron DDP (DP=2), 5 steps, 1e-4 relative."""
    run_pretrain([*base_args, *ACCUMULATING, "--log-json", str(tmp_path / "megatron.jsonl")], nproc=2)
    run_pretrain([*base_args, *ACCUMULATING, *ds_args(1), "--log-json", str(tmp_path / "ds.jsonl")], nproc=2)
    megatron, deepspeed = read_metrics(tmp_path / "megatron.jsonl"), read_metrics(tmp_path / "ds.jsonl")
    assert sorted(megatron) == sorted(deepspeed) == [1, 2, 3, 4, 5]
    for step in megatron:
        assert deepspeed[step]["lm_loss"] == pytest.approx(megatron[step]["lm_loss"], rel=1e-4)
        assert deepspeed[step]["lr"] == pytest.approx(megatron[step]["lr"], rel=1e-9)
        assert deepspeed[step]["grad_norm"] == pytest.approx(megatron[step]["grad_norm"], rel=1e-4)
        assert deepspeed[step]["flops_so_far"] == megatron[step]["flops_so_far"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero2_and_zero3_train_on_cpu_like_zero1(base_args, tmp_path, stage):
    """ZeRO-2 (gradient partitioning) and ZeRO-3 (parameter partitioning) also run on gloo/CPU."""
    run_pretrain([*base_args, *ACCUMULATING, *ds_args(1), "--log-json", str(tmp_path / "zero1.jsonl")], nproc=2)
    run_pretrain([*base_args, *ACCUMULATING, *ds_args(stage), "--log-json", str(tmp_path / "zero.jsonl")], nproc=2)
    reference, sharded = read_metrics(tmp_path / "zero1.jsonl"), read_metrics(tmp_path / "zero.jsonl")
    for step in reference:
        assert sharded[step]["lm_loss"] == pytest.approx(reference[step]["lm_loss"], rel=1e-4)


@pytest.mark.slow
def test_checkpoint_is_atomic_and_resume_is_exact(base_args, tmp_path):
    ckpt = tmp_path / "ckpt"
    full = [*base_args, *ACCUMULATING, *ds_args(1)]
    run_pretrain([*full, "--log-json", str(tmp_path / "full.jsonl")], nproc=2)
    run_pretrain([*full, "--exit-interval", "3", "--save", str(ckpt)], nproc=2)
    assert (ckpt / "latest").read_text() == "iter_0000003"
    assert not [path for path in os.listdir(ckpt) if ".tmp-" in path]
    run_pretrain([*full, "--load", str(ckpt), "--save", str(ckpt), "--log-json", str(tmp_path / "resumed.jsonl")],
                 nproc=2)
    uninterrupted, resumed = read_metrics(tmp_path / "full.jsonl"), read_metrics(tmp_path / "resumed.jsonl")
    assert sorted(resumed) == [4, 5]
    for step in resumed:
        assert resumed[step]["lm_loss"] == pytest.approx(uninterrupted[step]["lm_loss"], rel=1e-6)
        assert resumed[step]["consumed_samples"] == uninterrupted[step]["consumed_samples"]
    assert (ckpt / "latest").read_text() == "iter_0000005"


@pytest.mark.slow
def test_lst_trains_under_deepspeed_in_one_process(base_args, tmp_path):
    """No torchrun (LOCAL_RANK unset), the LST task, validation and FLOPs per module."""
    log = tmp_path / "lst.jsonl"
    run_pretrain([*base_args, "--model", "lst", "--train-iters", "2", "--eval-interval", "2", *ds_args(1),
                  "--log-json", str(log)])
    steps = read_metrics(log)
    assert sorted(steps) == [1, 2] and all(row["lm_loss"] > 0 for row in steps.values())
    assert {"step_flops_encoder", "step_flops_global", "step_flops_decoder"} <= set(steps[2])
    assert read_metrics(log, "valid")[2]["lm_loss"] > 0
