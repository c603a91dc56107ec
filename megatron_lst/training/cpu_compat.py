"""Let megatron-core 0.16 train on machines without CUDA (CI, laptops, gloo).

megatron-core has no CPU path; a handful of its calls assume a GPU. Rather than a parallel
home-made loop, this module patches exactly those calls so that the real megatron-core DDP,
optimizer, schedules and checkpoint writer run on CPU. Each patch names the call it replaces.
``apply_cpu_patches()`` does nothing when CUDA is available, and is idempotent.

Patches (see docs/megatron_core.md, "Works on CPU only with small patches"):
  (a) ``torch.cuda.current_device()`` returns ``"cpu"`` (megatron passes it as ``device=``
      in DDP buffers, p2p shape exchange, ``GlobalMemoryBuffer``) and
      ``torch.cuda.synchronize()`` is a no-op (p2p communication, timers).
  (b) in the megatron-core modules listed in ``CUDA_LITERAL_MODULES`` the name ``torch`` is
      rebound to a proxy whose tensor factories turn ``device="cuda"`` into ``device="cpu"``
      (``torch.zeros([], device="cuda")`` in schedules, ``torch.tensor(..., device='cuda')`` in
      clip_grads / optimizer / the checkpoint saver, the causal mask in transformer.utils,
      the fallback multi-tensor L2 norm in core.utils).
  (c) ``clip_grad_by_total_norm_fp32`` asserts ``param.grad.type() == 'torch.cuda.FloatTensor'``;
      the optimizer module gets a copy of that function without the device-type assertion.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable

import torch

CUDA_LITERAL_MODULES = (
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.dist_checkpointing.exchange_utils",
    "megatron.core.transformer.utils",
    "megatron.core.utils",
)

TENSOR_FACTORIES = ("tensor", "zeros", "ones", "empty", "full", "arange", "empty_like", "zeros_like")

_applied = False


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.startswith("cuda")


def _on_cpu(factory: Callable) -> Callable:
    @functools.wraps(factory)
    def cpu_factory(*args, **kwargs):
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return factory(*args, **kwargs)

    return cpu_factory


class CpuDeviceTorch:
    """Stands in for the ``torch`` module inside one megatron-core module (patch b)."""

    def __init__(self) -> None:
        self._factories = {name: _on_cpu(getattr(torch, name)) for name in TENSOR_FACTORIES}

    def __getattr__(self, name: str) -> Any:
        factory = self.__dict__.get("_factories", {}).get(name)
        return factory if factory is not None else getattr(torch, name)


def _cpu_current_device() -> str:
    return "cpu"


def _cpu_synchronize(device: Any = None) -> None:
    return None


def clip_grad_by_total_norm_fp32_cpu(
    parameters, max_norm: float, total_norm: float, use_decoupled_grad: bool = False
) -> None:
    """megatron.core.optimizer.clip_grads.clip_grad_by_total_norm_fp32 without its CUDA type check."""
    from megatron.core.utils import to_local_if_dtensor

    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = []
    for param in parameters:
        grad = getattr(param, "decoupled_grad", None) if use_decoupled_grad else param.grad
        if grad is not None:
            assert grad.dtype == torch.float32, f"expected fp32 grads on CPU, got {grad.dtype}"
            grads.append(to_local_if_dtensor(grad).detach())
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def apply_cpu_patches() -> bool:
    """Apply patches (a)-(c) when CUDA is absent. Returns True when patches are active."""
    global _applied
    if cuda_available():
        return False
    if _applied:
        return True
    torch.cuda.current_device = _cpu_current_device  # (a)
    torch.cuda.synchronize = _cpu_synchronize  # (a)
    proxy = CpuDeviceTorch()
    for module_name in CUDA_LITERAL_MODULES:  # (b)
        module = importlib.import_module(module_name)
        module.torch = proxy
    optimizer_module = importlib.import_module("megatron.core.optimizer.optimizer")  # (c)
    optimizer_module.clip_grad_by_total_norm_fp32 = clip_grad_by_total_norm_fp32_cpu
    _applied = True
    return True
