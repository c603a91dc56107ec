"""GPU paths: TE layer spec, bf16, the distributed optimizer, recompute, PP, sequence parallel, DeepSpeed.

Skipped without CUDA (CPU CI); run on a GPU machine with ``pytest -m gpu tests/gpu``. The
multi-GPU cases also skip when fewer than two GPUs are visible.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from tests.conftest import free_port, read_metrics, run_pretrain

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
STEPS = ["--train-iters", "4"]


def losses(path) -> list[float]:
    return [row["lm_loss"] for _, row in sorted(read_metrics(path).items())]


def run_losses(args: list[str], tmp_path, name: str, nproc: int = 1) -> list[float]:
    log = tmp_path / f"{name}.jsonl"
    run_pretrain([*args, *STEPS, "--log-json", str(log)], nproc=nproc)
    values = losses(log)
    assert len(values) == 4 and all(math.isfinite(v) for v in values), values
    return values


@pytest.mark.skipif(importlib.util.find_spec("transformer_engine") is None, reason="needs transformer-engine")
def test_te_spec_forward_backward(monkeypatch):
    from megatron_lst.models.baseline import build_baseline_model
    from megatron_lst.models.config import model_flavour
    from megatron_lst.models.specs import transformer_config
    from megatron_lst.training.initialize import destroy_distributed, initialize_distributed

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    initialize_distributed(1, 1, seed=3)
    try:
        shape = model_flavour("debug")
        model = build_baseline_model(shape, transformer_config(shape), vocab_size=256, max_sequence_length=32,
                                     use_te=True).cuda()
        assert any("layer_norm_weight" in name for name, _ in model.named_parameters())  # TE's fused norm+linear
        tokens = torch.randint(0, 256, (2, 32), device="cuda")
        positions = torch.arange(32, device="cuda").expand(2, -1)
        loss = model(tokens, positions, None, labels=tokens).mean()
        loss.backward()
        assert math.isfinite(loss.item())
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    finally:
        destroy_distributed()


def test_bf16_training_runs_and_tracks_fp32(base_args, tmp_path):
    fp32 = run_losses(base_args, tmp_path, "fp32")
    bf16 = run_losses([*base_args, "--bf16"], tmp_path, "bf16")
    for reference, value in zip(fp32, bf16):
        assert value == pytest.approx(reference, rel=2e-2)


def test_distributed_optimizer_matches_the_plain_one(base_args, tmp_path):
    plain = run_losses(base_args, tmp_path, "plain")
    sharded = run_losses([*base_args, "--use-distributed-optimizer"], tmp_path, "distributed")
    assert sharded == pytest.approx(plain, rel=1e-5)


@pytest.mark.parametrize("granularity", ["full", "selective"])
def test_activation_recompute_leaves_the_losses(base_args, tmp_path, granularity):
    plain = run_losses(base_args, tmp_path, "plain")
    recomputed = run_losses([*base_args, "--recompute-granularity", granularity], tmp_path, granularity)
    assert recomputed == pytest.approx(plain, rel=1e-5)


@two_gpus
def test_pipeline_schedule_matches_one_stage(base_args, tmp_path):
    one = run_losses(base_args, tmp_path, "pp1")
    two = run_losses([*base_args, "--pipeline-model-parallel-size", "2"], tmp_path, "pp2", nproc=2)
    assert two == pytest.approx(one, rel=1e-4)


@two_gpus
def test_sequence_parallel_with_tensor_parallel(base_args, tmp_path):
    tp = run_losses([*base_args, "--tensor-model-parallel-size", "2"], tmp_path, "tp2", nproc=2)
    sp = run_losses([*base_args, "--tensor-model-parallel-size", "2", "--sequence-parallel"], tmp_path, "sp", nproc=2)
    assert sp == pytest.approx(tp, rel=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")
def test_deepspeed_zero2_bf16_on_gpu(base_args, tmp_path, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    run_losses([*base_args, "--engine", "deepspeed", "--deepspeed-config", "examples/deepspeed/zero2.json", "--bf16"],
               tmp_path, "deepspeed")

