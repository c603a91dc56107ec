"""Initialisation that does not depend on how the model is split (TP or PP).

megatron-core's CPU initialisation draws each weight from the global RNG in construction order,
so a pipeline stage that builds only layers 3-4 draws different numbers than PP=1 does. Here each
parameter gets its own generator seeded by (seed, its *global* name), the full (unsharded) tensor
is drawn and this rank keeps its tensor-parallel shard, split the way megatron-core splits
(``partition_dim``, ``partition_stride``). The same seed therefore gives the same function at any
TP/PP layout, which is what the TP/PP equivalence tests and reproducible experiments need.

Rules (megatron-core's): weights ~ N(0, std); the output projections of attention and MLP
(``linear_proj``, ``linear_fc2``) ~ N(0, std / sqrt(2 * num_layers)); norm weights 1; biases 0.
"""

from __future__ import annotations

import math
import re
import zlib

import torch
from megatron.core import parallel_state
from megatron.core.transformer.transformer_layer import TransformerLayer

SCALED_OUTPUT_LAYERS = ("linear_proj.weight", "linear_fc2.weight")


def global_parameter_names(module: torch.nn.Module) -> dict[str, str]:
    """Local parameter name -> name with each transformer layer's *global* index."""
    prefixes = {}
    for name, sub in module.named_modules():
        if isinstance(sub, TransformerLayer):
            prefixes[name + "."] = re.sub(r"\d+$", str(sub.layer_number - 1), name) + "."
    mapping = {}
    for name, _ in module.named_parameters():
        global_name = name
        for local, glob in prefixes.items():
            if name.startswith(local):
                global_name = glob + name[len(local):]
                break
        mapping[name] = global_name
    return mapping


def _full_shape(param: torch.nn.Parameter, tp_size: int) -> list[int]:
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= tp_size
    return shape


def _my_shard(full: torch.Tensor, param: torch.nn.Parameter, tp_rank: int, tp_size: int) -> torch.Tensor:
    if not getattr(param, "tensor_model_parallel", False) or tp_size == 1:
        return full
    dim, stride = param.partition_dim, getattr(param, "partition_stride", 1)
    pieces = torch.split(full, param.shape[dim] // stride, dim=dim)
    return torch.cat(pieces[tp_rank::tp_size], dim=dim)


@torch.no_grad()
def initialize_by_global_name(module: torch.nn.Module, seed: int, std: float, num_layers: int) -> None:
    """Re-draw every parameter of ``module`` from (seed, global name); see the module docstring."""
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    names = global_parameter_names(module)
    for name, param in module.named_parameters():
        global_name = names[name]
        if name.endswith("bias"):
            param.zero_()
            continue
        if param.dim() == 1:  # norm scales
            param.fill_(1.0)
            continue
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(global_name.encode()))
        scale = std / math.sqrt(2.0 * num_layers) if global_name.endswith(SCALED_OUTPUT_LAYERS) else std
        full = torch.empty(_full_shape(param, tp_size), dtype=torch.float32).normal_(0.0, scale, generator=generator)
        param.copy_(_my_shard(full, param, tp_rank, tp_size).to(param.dtype))
