"""Collectives whose tensors live on the device their process group's backend needs.

NCCL takes CUDA tensors only (on the rank's own device) and gloo CPU tensors only: a metric or
flag all-reduced as a CPU tensor works in CPU CI and fails at the first GPU step. Every collective
this project issues itself (metrics, stop signals, batch broadcasts, checkpoint rendezvous) goes
through this module, which creates its tensors with ``group_device(group)`` and refuses a tensor
on the wrong device with an error that names the group's backend, on CPU as on GPU.
``tests/training/test_collectives.py`` fails when project code calls one of
``TORCH_COLLECTIVES`` on ``torch.distributed`` anywhere else.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

# backends whose collectives take CUDA tensors (NCCL; "cpu:gloo,cuda:nccl" mixes read the CUDA part)
_CUDA_BACKENDS = ("nccl",)

# the torch.distributed functions that move data between ranks or synchronise them: project code
# calls them only through this module (megatron-core and torch issue their own)
TORCH_COLLECTIVES = (
    "all_reduce", "all_reduce_coalesced", "broadcast", "all_gather", "all_gather_into_tensor",
    "all_gather_coalesced", "reduce", "reduce_scatter", "reduce_scatter_tensor", "gather", "scatter",
    "all_to_all", "all_to_all_single", "barrier", "monitored_barrier", "broadcast_object_list",
    "all_gather_object", "gather_object", "scatter_object_list", "send", "recv", "isend", "irecv",
    "batch_isend_irecv", "send_object_list", "recv_object_list",
)


def group_backend(group: Optional[dist.ProcessGroup] = None) -> str:
    """The backend name of ``group`` (the default group when None), lower-case."""
    return str(dist.get_backend(group)).lower()


def uses_cuda(group: Optional[dist.ProcessGroup] = None) -> bool:
    """True when ``group``'s collectives run on NCCL, i.e. take CUDA tensors."""
    backend = group_backend(group)
    return any(name in backend for name in _CUDA_BACKENDS)


def group_device(group: Optional[dist.ProcessGroup] = None) -> torch.device:
    """The device a tensor must be on to take part in a collective over ``group``.

    NCCL: this rank's current CUDA device (``initialize_distributed`` sets it from LOCAL_RANK), since
    NCCL communicators are bound to one device per rank. Anything else (gloo): the CPU.
    """
    if uses_cuda(group):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_device(tensor: torch.Tensor, group: Optional[dist.ProcessGroup] = None, what: str = "tensor") -> None:
    """Raise if ``tensor`` is not on the device ``group``'s backend takes (for CUDA: this rank's device)."""
    expected = group_device(group)
    wrong_type = tensor.device.type != expected.type
    wrong_index = expected.type == "cuda" and tensor.device.index != expected.index
    if wrong_type or wrong_index:
        raise RuntimeError(
            f"{what} is on {tensor.device} but the process group's backend is {group_backend(group)!r}, "
            f"which takes tensors on {expected}: create it with megatron_lst.training.collectives.new_tensor "
            "or move it with .to(group_device(group))"
        )


def new_tensor(values: Sequence | torch.Tensor, group: Optional[dist.ProcessGroup] = None,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``values`` as a tensor on ``group``'s collective device."""
    return torch.as_tensor(values, dtype=dtype).to(group_device(group))


def zeros(shape: Sequence[int], group: Optional[dist.ProcessGroup] = None,
          dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A zero tensor of ``shape`` on ``group``'s collective device (an accumulator to reduce later)."""
    return torch.zeros(tuple(shape), dtype=dtype, device=group_device(group))


def all_reduce(tensor: torch.Tensor, group: Optional[dist.ProcessGroup] = None,
               op: dist.ReduceOp = dist.ReduceOp.SUM, what: str = "tensor") -> torch.Tensor:
    """In-place all-reduce of ``tensor`` (checked for its device) over ``group``; returns it."""
    check_device(tensor, group, what)
    dist.all_reduce(tensor, op=op, group=group)
    return tensor


def all_reduce_values(values: Sequence[float] | Sequence[int], group: Optional[dist.ProcessGroup] = None,
                      op: dist.ReduceOp = dist.ReduceOp.SUM, dtype: torch.dtype = torch.float64,
                      what: str = "values") -> list:
    """All-reduce host numbers over ``group``; returns them reduced, as Python numbers.

    For counters kept in Python (tokens, FLOPs, a stop flag): the tensor is made on the group's
    device here, so callers never choose a device, and read back with one synchronisation.
    """
    return all_reduce(new_tensor(list(values), group, dtype), group, op, what).tolist()


def broadcast(tensor: torch.Tensor, src: int, group: Optional[dist.ProcessGroup] = None,
              what: str = "tensor") -> torch.Tensor:
    """In-place broadcast of ``tensor`` (checked for its device) from global rank ``src``; returns it."""
    check_device(tensor, group, what)
    dist.broadcast(tensor, src=src, group=group)
    return tensor


def broadcast_object(obj: Any, src: int, group: Optional[dist.ProcessGroup] = None) -> Any:
    """``obj`` (picklable) as global rank ``src`` holds it, on every rank of ``group``.

    torch pickles the object into a byte tensor; it is placed on ``group_device(group)`` explicitly
    (torch's own guess depends on its version and on whether ``set_device`` was called).
    """
    holder = [obj]
    dist.broadcast_object_list(holder, src=src, group=group, device=group_device(group))
    return holder[0]


def all_gather_object(obj: Any, group: Optional[dist.ProcessGroup] = None) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank of ``group``. Under NCCL torch
    stages the pickles on the current CUDA device, which ``initialize_distributed`` set from LOCAL_RANK."""
    parts: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, obj, group=group)
    return parts


def barrier(group: Optional[dist.ProcessGroup] = None) -> None:
    """Wait until every rank of ``group`` gets here.

    On NCCL the barrier is an all-reduce on a CUDA tensor; naming this rank's device keeps torch from
    guessing one (the guess warns, and can hang when ranks do not map to devices one to one).
    """
    if uses_cuda(group):
        dist.barrier(group=group, device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier(group=group)
