"""What this machine can run: transformer-engine, apex fused kernels, CUDA; refusals with reasons.

megatron-core quietly falls back (or fails deep inside a layer) when a GPU feature is asked for
on a machine without it. These checks run before anything is built so that a flag that cannot
work here is refused in one line that names the flag and what it needs (docs/megatron_core.md: the
distributed optimizer, the bf16 optimizer and sequence parallel have no CPU path).
"""

from __future__ import annotations

import torch

from megatron_lst.models.specs import apex_kernels, transformer_engine_available
from megatron_lst.training.arguments import Config


def fused_norms_available() -> bool:
    """Sequence parallel needs norms that all-reduce their grads: TE's or apex's."""
    return transformer_engine_available() or apex_kernels()["fused_layer_norm_cuda"]


def hardware_problems(config: Config) -> list[str]:
    """Flags this machine cannot honour, each with what it needs."""
    problems = []
    cuda = torch.cuda.is_available()
    parallel, train = config.parallel, config.train
    if train.transformer_impl == "transformer_engine" and not transformer_engine_available():
        problems.append("--transformer-impl transformer_engine needs CUDA and an importable transformer_engine "
                        "(use --transformer-impl local or auto)")
    if parallel.sequence_parallel:
        if parallel.tensor_model_parallel_size < 2:
            problems.append("--sequence-parallel splits activations over tensor-parallel ranks: "
                            "it needs --tensor-model-parallel-size >= 2")
        if not fused_norms_available():
            problems.append("--sequence-parallel needs a GPU with transformer-engine or apex norms "
                            "(megatron-core has no CPU path for it)")
    if train.engine == "megatron" and not cuda:
        if parallel.use_distributed_optimizer:
            problems.append("--use-distributed-optimizer is GPU-only in megatron-core (it checks "
                            "torch.cuda tensor types); on CPU drop it or use --engine deepspeed")
        if train.bf16:
            problems.append("--bf16 uses megatron-core's mixed-precision optimizer, which is GPU-only")
        for flag, wanted in (("--overlap-grad-reduce", parallel.overlap_grad_reduce),
                             ("--overlap-param-gather", parallel.overlap_param_gather)):
            if wanted:
                problems.append(f"{flag} overlaps megatron-core's bucketed communication with compute on CUDA "
                                "streams, which needs a GPU; on CPU drop it")
    if train.local_attention_impl == "flex" and not cuda:
        problems.append("--local-attention-impl flex trains on CUDA only (FlexAttention has no CPU backward); "
                        "use auto or blocked")
    if train.recompute_granularity and not cuda:  # its choices are checked with the flags (arguments.py)
        problems.append("--recompute-granularity needs a GPU: megatron-core's activation checkpoint saves and "
                        "restores the CUDA RNG state")
    return problems


def check_hardware(config: Config) -> None:
    """Raise ``SystemExit`` with every problem when this machine cannot run ``config``."""
    problems = hardware_problems(config)
    if problems:
        raise SystemExit("error: " + "; ".join(problems))
