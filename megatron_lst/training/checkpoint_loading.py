"""A trained model from its checkpoint, for one process: the run config, the task, the checked weights.

Evaluation, generation and checkpoint conversion share this path, so any checkpoint that scores
also generates and converts. The model is built at TP = PP = 1 as its run's training task builds
it (the model registry, training/registry.py) and ``load_checkpoint`` reads the weights through
``dist_checkpointing``, which reshards a checkpoint saved at any TP/PP to this layout. The run's
configuration comes from the checkpoint's common state (training/run_config.py), so a reader
needs no training flags; only the tokenizer files may be overridden when the checkpoint moved
machines. Before any weight is read, the tokenizer and every tensor shape are checked against
what the checkpoint records, so a mismatch is one line naming it instead of silently wrong output.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch
from megatron.core import dist_checkpointing

from megatron_lst.export.folder import is_export_folder, load_exported_weights, read_export_common
from megatron_lst.patching import PatchingConfig
from megatron_lst.tokenizer import JointTokenizer, text_model_difference
from megatron_lst.training.arguments import Config
from megatron_lst.training.checkpoint_manifest import CheckpointError
from megatron_lst.training.checkpointing import iteration_dir, load_checkpoint, resolve_iteration
from megatron_lst.training.initialize import initialize_distributed
from megatron_lst.training.registry import spec_of
from megatron_lst.training.run_config import config_from_saved, decode_saved
from megatron_lst.unit_bpe_tokenizer import UnitBPETokenizer, check_saved_layout
from megatron_lst.validation import InputError

# the layout a single evaluating / generating / converting process gives any run's config
SINGLE_PROCESS = {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1, "sequence_parallel": False,
                  "use_distributed_optimizer": False, "save": None, "engine": "megatron", "dry_run": False,
                  "world_size": None}


def checkpoint_iteration_dir(root: str | Path, iteration: Optional[int] = None) -> Path:
    """The latest (or given) checkpoint folder of ``root``, verified against its manifest before
    anything in it is read; a tool asked for one checkpoint does not fall back to another
    (``CheckpointError`` names the file that failed)."""
    iteration = resolve_iteration(root, iteration)
    if iteration is None:
        what = "holds no checkpoint (no 'latest' pointer)" if Path(root).is_dir() else "no such checkpoint folder"
        raise CheckpointError(what, file=root)
    return iteration_dir(root, iteration)


def read_common_state(root: str | Path, iteration: Optional[int] = None) -> dict:
    return dist_checkpointing.load_common_state_dict(str(checkpoint_iteration_dir(root, iteration)))


def check_vocabulary(common: dict, tokenizer: JointTokenizer) -> None:
    """Refuse a tokenizer whose id layout differs from the one the model was trained with."""
    if "vocab_layout" not in common:
        if isinstance(tokenizer, UnitBPETokenizer):
            raise InputError("the checkpoint records no vocab_layout, so its unit BPE cannot be checked")
        return
    saved = decode_saved(common["vocab_layout"], "vocab_layout")
    # the unit BPE first: another BPE also changes num_units, and its error names the BPE
    check_saved_layout(saved, tokenizer, "checkpoint")
    for name in ("text_vocab_size", "num_units", "spare_units"):
        if saved.get(name) != getattr(tokenizer.vocab, name):
            raise InputError(f"the tokenizer gives {name} = {getattr(tokenizer.vocab, name)} but the model "
                             f"was trained with {saved.get(name)}: pass the run's --tokenizer-model",
                             field="--tokenizer-model")
    check_text_model(saved.get("text_model", {}), tokenizer)


def check_text_model(saved: dict, tokenizer: JointTokenizer) -> None:
    """Same pieces, not just the same size: a tokenizer of equal size but other pieces would score
    (or generate) silently wrong. Checkpoints saved before the fingerprint existed get a warning."""
    current = tokenizer.text_model.describe()
    difference = text_model_difference(saved, current)
    if difference is not None:
        raise InputError(f"the text tokenizer differs from the one the model was trained with: {difference}; "
                         "pass the run's --tokenizer-model", field="--tokenizer-model")
    if "pieces_sha256" in current and "pieces_sha256" not in saved:
        print(f"warning: the checkpoint records no tokenizer fingerprint (saved by an older version): cannot check "
              f"that {current.get('path')} has the pieces the model was trained with", file=sys.stderr)


def check_checkpoint_shapes(checkpoint_dir: str | Path, model: torch.nn.Module) -> None:
    """Every tensor the model expects must be in the checkpoint with the same global shape; a run
    config that builds another model (edited, or another version's defaults) is named tensor by
    tensor instead of failing deep inside the loader."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    saved = dist_checkpointing.load_tensors_metadata(str(checkpoint_dir))
    for expected in nested_values(model.sharded_state_dict()):
        if not isinstance(expected, ShardedTensor):
            continue
        stored = saved.get(expected.key)
        if stored is None:
            raise CheckpointError(f"not in the checkpoint, but the model built from its run config has it "
                                  f"(shape {tuple(expected.global_shape)})", file=checkpoint_dir, field=expected.key)
        if tuple(stored.global_shape) != tuple(expected.global_shape):
            raise CheckpointError(f"checkpoint shape {tuple(stored.global_shape)}, model shape "
                                  f"{tuple(expected.global_shape)} (the run config builds another model)",
                                  file=checkpoint_dir, field=expected.key)


def config_from_checkpoint(root: str | Path, iteration: Optional[int] = None,
                           tokenizer_model: Optional[str] = None, unit_bpe: Optional[str] = None) -> Config:
    """The training run's Config, re-laid for single-process use (TP = PP = 1, fp32 without a GPU).
    ``root`` may also be an exported folder (tools/convert_checkpoint.py to-hf / to-safetensors)."""
    common = read_export_common(root) if is_export_folder(root) else read_common_state(root, iteration)
    if "config" not in common:
        raise KeyError(f"{root}: the checkpoint's common state has no 'config'; it was not written by pretrain_lst.py")
    overrides = {**SINGLE_PROCESS, "load": str(root)}
    if not torch.cuda.is_available():
        overrides["bf16"] = False
    if tokenizer_model is not None:
        overrides["tokenizer_model"] = tokenizer_model
    if unit_bpe is not None:  # a moved BPE file; its content hash is still checked (check_vocabulary)
        overrides["unit_bpe"] = unit_bpe
    return config_from_saved(common["config"], **overrides)


def initialize_single_process(seed: int, backend: Optional[str] = None) -> None:
    """TP = PP = 1 process groups (``backend``: by device unless given). Outside torchrun, rendezvous on a free port, and only for the
    moment of initialisation: a port inherited from a parent (a test runner, a training script), or
    one left in the environment for children, may still be held."""
    if torch.distributed.is_initialized() or "WORLD_SIZE" in os.environ:
        initialize_distributed(1, 1, backend=backend, seed=seed)
        return
    saved = {name: os.environ.get(name) for name in ("MASTER_ADDR", "MASTER_PORT")}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    try:
        initialize_distributed(1, 1, backend=backend, seed=seed)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_model(root: str | Path, iteration: Optional[int] = None, tokenizer_model: Optional[str] = None,
               unit_bpe: Optional[str] = None) -> tuple[torch.nn.Module, Config, JointTokenizer, torch.device]:
    """The trained model (eval mode, TP = PP = 1, on GPU when there is one), its run's config and
    tokenizer; shared by scoring and generation. For the BPE
    baseline the tokenizer holds the run's unit BPE, so speech items are scored as its pieces."""
    if is_export_folder(root):
        return load_exported_model(root, tokenizer_model, unit_bpe)
    config = config_from_checkpoint(root, iteration, tokenizer_model, unit_bpe)
    initialize_single_process(config.data.seed)
    task = spec_of(config).build_task(config)
    check_vocabulary(read_common_state(root, iteration), task.tokenizer)
    model = task.build_model(config, True, True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    check_checkpoint_shapes(checkpoint_iteration_dir(root, iteration), model)
    if load_checkpoint(root, model, optimizer=None, scheduler=None, iteration=iteration, load_rng=False) is None:
        raise CheckpointError("nothing to load", file=root)
    return model.eval(), config, task.tokenizer, device


def load_exported_model(folder: str | Path, tokenizer_model: Optional[str] = None, unit_bpe: Optional[str] = None
                        ) -> tuple[torch.nn.Module, Config, JointTokenizer, torch.device]:
    """``load_model`` for an exported folder: the model is built from the folder's JSON run config and
    loaded from its safetensors, with the folder's own tokenizer copy (unless one is given)."""
    config = config_from_checkpoint(folder, None, tokenizer_model, unit_bpe)
    initialize_single_process(config.data.seed)
    task = spec_of(config).build_task(config)
    check_vocabulary(read_export_common(folder), task.tokenizer)
    model = task.build_model(config, True, True)
    load_exported_weights(model, folder)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), config, task.tokenizer, device


def fixed_patching_config(config: Config, strategy: str = "static") -> PatchingConfig:
    """The run's PatchingConfig (patch size, silence mode, cap, marker folding, patch boundary) with
    the strategy fixed to ``static`` or ``aligned``: outside training no row is drawn at random."""
    if strategy not in ("static", "aligned"):
        raise ValueError(f"a trained model is patched 'static' or 'aligned', not {strategy!r}")
    run = config.patching.to_patching_config(config.train.train_iters, config.data.seed)
    return replace(run, strategy=strategy)
