"""``--use-checkpoint-args``: the model a ``--load`` checkpoint holds, taken from its saved run config.

Fine-tuning or continuing a run must build exactly the model the checkpoint holds; repeating its
shape on the command line is error-prone (a forgotten ``--model-flavour`` builds another model that
the loader then refuses). As with Megatron-LM's flag, the shape comes from the checkpoint: every
model-shape field, ``--model``, ``--num-units`` and the patch shape replace what the command line
or YAML said (each replaced value is named in a note). The tokenizer files and ``--tokenizer-type``
are filled in only where not given, since a checkpoint that moved machines needs new paths; the
vocabulary is still checked against the checkpoint's when the run loads. Training settings
(schedule, data, batch, ``--seq-length``, the patching strategy) stay the command line's: they are
what a fine-tuning run changes.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from megatron_lst.models.config import ModelConfig

# replaced by the checkpoint's values: they decide which tensors the model has and what its ids mean
FORCED = (*(f.name for f in dataclasses.fields(ModelConfig)), "model", "num_units",
          "patch_size", "silence_mode", "max_patch_length", "fold_speech_marker", "patch_boundary")
# taken from the checkpoint only when not given: paths that may have moved, and how to read them
FILLED = ("tokenizer_model", "tokenizer_type", "unit_bpe")


def read_saved_config(load: str, engine: str) -> dict:
    """The run config recorded in the newest verified checkpoint of ``load`` (either engine's layout)."""
    import torch
    from megatron.core import dist_checkpointing

    from megatron_lst.training.checkpointing import iteration_dir, resolve_iteration
    from megatron_lst.training.run_config import decode_saved

    if engine == "deepspeed":
        from megatron_lst.training.deepspeed_engine import MODEL_STATES_FILE, read_latest_tag

        iteration = resolve_iteration(load, fallback=True, read_latest=read_latest_tag, log=_note)
    else:
        iteration = resolve_iteration(load, fallback=True, log=_note)
    if iteration is None:
        raise FileNotFoundError(f"--use-checkpoint-args: --load {load} holds no checkpoint to take the model from")
    folder = iteration_dir(load, iteration)
    if engine == "deepspeed":
        common = torch.load(folder / MODEL_STATES_FILE, map_location="cpu", weights_only=False, mmap=True)
    else:
        common = dist_checkpointing.load_common_state_dict(str(folder))
    if "config" not in common:
        raise ValueError(f"--use-checkpoint-args: {folder} records no run config (not written by pretrain_lst.py)")
    return decode_saved(common["config"])


def with_checkpoint_args(values: dict) -> dict:
    """``values`` (flat flag values from YAML and the command line) with the checkpoint's model settings."""
    if not values.get("load"):
        raise ValueError("--use-checkpoint-args reads the run config of the --load checkpoint: give --load")
    saved = read_saved_config(values["load"], values.get("engine", "megatron"))
    recorded = {**saved.get("model_config", {}), **saved.get("train", {}), **saved.get("data", {}),
                **saved.get("patching", {})}
    values = dict(values)
    if values.pop("model_flavour", None) is not None:
        _note("--use-checkpoint-args: --model-flavour is ignored, the model shape comes from the checkpoint")
    replaced = []
    for name in FORCED:
        if name not in recorded:
            continue  # a checkpoint from a version without this field: the default stays
        if name in values and values[name] != recorded[name]:
            replaced.append(f"--{name.replace('_', '-')} {values[name]} -> {recorded[name]}")
        values[name] = recorded[name]
    for name in FILLED:
        if values.get(name) is None and recorded.get(name) is not None:
            values[name] = recorded[name]
    if replaced:
        _note("--use-checkpoint-args: the checkpoint's values replace " + ", ".join(replaced))
    return values


def _note(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"note: {message}", file=sys.stderr, flush=True)
