"""Collectives whose tensors live on the device their process group's backend needs.

NCCL takes CUDA tensors only and gloo CPU tensors only: a metric or flag all-reduced as a CPU
tensor works in CPU CI and fails at the first GPU step. Every collective this project issues
itself (metrics, stop signals, batch broadcasts) goes through this module, which creates its
tensors with ``group_device(group)`` and refuses a tensor on the wrong device with an error that
names the group's backend, on CPU as on GPU.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist

# backends whose collectives take CUDA tensors (NCCL; "cpu:gloo,cuda:nccl" mixes read the CUDA part)
_CUDA_BACKENDS = ("nccl",)


def group_backend(group: Optional[dist.ProcessGroup] = None) -> str:
    """The backend name of ``group`` (the default group when None), lower-case."""
    return str(dist.get_backend(group)).lower()


def group_device(group: Optional[dist.ProcessGroup] = None) -> torch.device:
    """The device a tensor must be on to take part in a collective over ``group``."""
    if any(name in group_backend(group) for name in _CUDA_BACKENDS):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_device(tensor: torch.Tensor, group: Optional[dist.ProcessGroup] = None, what: str = "tensor") -> None:
    """Raise if ``tensor`` is not on the device ``group``'s backend takes."""
    expected = group_device(group)
    if tensor.device.type != expected.type:
        raise RuntimeError(
            f"{what} is on {tensor.device} but the process group's backend is {group_backend(group)!r}, "
            f"which takes {expected.type} tensors"
        )


def new_tensor(values: Sequence | torch.Tensor, group: Optional[dist.ProcessGroup] = None,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``values`` as a tensor on ``group``'s collective device."""
    return torch.as_tensor(values, dtype=dtype).to(group_device(group))


def all_reduce(tensor: torch.Tensor, group: Optional[dist.ProcessGroup] = None,
               op: dist.ReduceOp = dist.ReduceOp.SUM, what: str = "tensor") -> torch.Tensor:
    """In-place all-reduce of ``tensor`` (checked for its device) over ``group``; returns it."""
    check_device(tensor, group, what)
    dist.all_reduce(tensor, op=op, group=group)
    return tensor


def broadcast(tensor: torch.Tensor, src: int, group: Optional[dist.ProcessGroup] = None,
              what: str = "tensor") -> torch.Tensor:
    """In-place broadcast of ``tensor`` (checked for its device) from global rank ``src``; returns it."""
    check_device(tensor, group, what)
    dist.broadcast(tensor, src=src, group=group)
    return tensor
