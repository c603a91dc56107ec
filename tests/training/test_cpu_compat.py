"""The CPU patches of megatron-core: each one still needed, and each one doing its job."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

from megatron_lst.training import cpu_compat

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only patches")


@pytest.mark.parametrize("module_name", cpu_compat.CUDA_LITERAL_MODULES)
def test_every_patched_module_still_creates_cuda_tensors(module_name):
    """If an upgrade drops the CUDA literal, the patch is dead weight: this test says so."""
    source = inspect.getsource(importlib.import_module(module_name))
    assert "'cuda'" in source or '"cuda"' in source, f"{module_name} no longer needs the device patch"


def test_clip_grads_still_asserts_cuda_tensor_type():
    from megatron.core.optimizer import clip_grads

    assert "torch.cuda.FloatTensor" in inspect.getsource(clip_grads.clip_grad_by_total_norm_fp32)


def test_patches_make_megatron_cuda_literals_cpu_tensors():
    assert cpu_compat.apply_cpu_patches() is True
    assert cpu_compat.apply_cpu_patches() is True  # idempotent
    schedules = importlib.import_module("megatron.core.pipeline_parallel.schedules")
    created = schedules.torch.zeros([], dtype=torch.int, device="cuda")
    assert created.device.type == "cpu"
    assert torch.cuda.current_device() == "cpu"
    assert schedules.torch.distributed is torch.distributed  # everything else passes through


def test_cpu_clip_scales_like_megatron():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    params[0].grad = torch.tensor([3.0, 0.0, 0.0])
    params[1].grad = torch.tensor([0.0, 4.0])
    cpu_compat.clip_grad_by_total_norm_fp32_cpu(params, max_norm=1.0, total_norm=5.0)
    assert torch.allclose(params[0].grad, torch.tensor([0.6, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(params[1].grad, torch.tensor([0.0, 0.8]), atol=1e-6)
    cpu_compat.clip_grad_by_total_norm_fp32_cpu(params, max_norm=10.0, total_norm=1.0)  # no clip
    assert torch.allclose(params[1].grad, torch.tensor([0.0, 0.8]), atol=1e-6)
