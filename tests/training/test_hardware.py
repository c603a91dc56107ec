"""GPU-only flags are refused up front on machines without the hardware, each with the reason."""

from __future__ import annotations

import pytest
import torch

from megatron_lst.models.specs import fused_kernel_options, transformer_config
from megatron_lst.models.config import model_flavour
from megatron_lst.training.arguments import parse_args
from megatron_lst.training.hardware import hardware_problems

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusals")


@cpu_only
@pytest.mark.parametrize(
    "flags, reason",
    [
        (["--sequence-parallel", "--tensor-model-parallel-size", "2"], "needs a GPU with transformer-engine or apex norms"),
        (["--sequence-parallel"], "needs --tensor-model-parallel-size >= 2"),
        (["--use-distributed-optimizer"], "--use-distributed-optimizer is GPU-only"),
        (["--bf16"], "--bf16 uses megatron-core's mixed-precision optimizer"),
        (["--transformer-impl", "transformer_engine"], "needs CUDA and an importable transformer_engine"),
        (["--recompute-granularity", "full"], "saves and restores the CUDA RNG state"),
        (["--local-attention-impl", "flex"], "FlexAttention has no CPU backward"),
    ],
)
def test_gpu_only_flags_are_refused_on_cpu(flags, reason):
    problems = hardware_problems(parse_args(flags))
    assert any(reason in problem for problem in problems), problems


@cpu_only
def test_deepspeed_engine_may_use_bf16_and_its_own_sharding_on_cpu():
    assert hardware_problems(parse_args(["--engine", "deepspeed", "--bf16"])) == []


@cpu_only
def test_pretrain_exits_with_the_reason_before_building_anything():
    from pretrain_lst import main

    with pytest.raises(SystemExit, match="--use-distributed-optimizer is GPU-only"):
        main(["--use-distributed-optimizer"])


@cpu_only
def test_no_fused_kernels_on_cpu():
    assert fused_kernel_options() == {}
    config = transformer_config(model_flavour("debug"))
    assert not config.gradient_accumulation_fusion and not config.bias_dropout_fusion


def test_recompute_settings_reach_the_transformer_config():
    full = transformer_config(model_flavour("debug"), recompute="full")
    assert (full.recompute_granularity, full.recompute_method, full.recompute_num_layers) == ("full", "uniform", 1)
    selective = transformer_config(model_flavour("debug"), recompute="selective")
    assert selective.recompute_granularity == "selective" and selective.recompute_method is None
    assert "core_attn" in selective.recompute_modules
