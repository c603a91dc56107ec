"""Convert checkpoints between engines and a single consolidated file.

  to-safetensors      megatron dist checkpoint (any TP/PP)  -> DIR/model.safetensors + DIR/config.json
  from-safetensors    DIR/model.safetensors + config.json   -> megatron dist checkpoint (weights only)
  deepspeed-to-safetensors  DeepSpeed (ZeRO 0-3) checkpoint -> DIR/model.safetensors + DIR/config.json
  to-hf               megatron dist checkpoint -> an export folder with the tokenizer: baseline and
                      bpe-baseline as a transformers LlamaForCausalLM; LST in our own safetensors +
                      JSON layout (not a transformers architecture). tools/evaluate.py and
                      tools/generate.py take either folder as --checkpoint.

The consolidated file holds the TP=1 state dict of the run's model (any ``--model``; the model
registry builds it), fp32 or bf16 as trained; ``config.json`` holds the run's configuration, so the
model can be rebuilt without the original flags. Weights round-trip exactly: megatron ->
safetensors -> megatron gives identical logits (tested). A converted-back checkpoint has no
optimizer state: continue from it with ``--finetune`` or ``--no-load-optim``.

Conversion runs in one process on CPU; dist_checkpointing reshards any TP/PP layout to TP=1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_lst.training.arguments import Config  # noqa: E402
from megatron_lst.training.checkpoint_loading import SINGLE_PROCESS, initialize_single_process  # noqa: E402
from megatron_lst.training.checkpoint_manifest import CheckpointError  # noqa: E402
from megatron_lst.training.registry import spec_of  # noqa: E402
from megatron_lst.training.run_config import config_from_saved, encode_saved  # noqa: E402
from megatron_lst.utils.atomic import atomic_folder  # noqa: E402
from megatron_lst.validation import ArgumentParser, InputError, exit_on_input_error, input_errors_from  # noqa: E402

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def single_process_config(saved: str | dict, tokenizer_model: Optional[str] = None) -> Config:
    """The run's Config (as the checkpoint or config.json recorded it) set up for one CPU process."""
    overrides = {**SINGLE_PROCESS, "load": None}
    if tokenizer_model:
        overrides["tokenizer_model"] = tokenizer_model
    return config_from_saved(saved, **overrides)


def build_model(config: Config) -> torch.nn.Module:
    """The whole model (one stage) of ``config``'s family, on CPU."""
    return spec_of(config).build_task(config).build_model(config, True, True).cpu()


def tensor_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers; megatron's ``_extra_state`` entries (TE metadata) are skipped."""
    return {name: value.detach().contiguous() for name, value in model.state_dict().items()
            if isinstance(value, torch.Tensor) and not name.endswith("_extra_state")}


def load_tensor_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a consolidated state; every model tensor must be present and no extra one."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [name for name in missing if not name.endswith("_extra_state")]
    if missing or unexpected:
        raise KeyError(f"state dict does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def write_consolidated(model: torch.nn.Module, config: Config, output: Path, progress: dict, source: str) -> Path:
    from safetensors.torch import save_file

    with atomic_folder(output) as folder:  # both files appear together, replacing an earlier export whole
        save_file(tensor_state(model), str(folder / WEIGHTS_FILE), metadata={"format": "pt", "source": source})
        meta = {"config": config.to_dict(), "progress": progress, "source": source, "format_version": 1}
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=1, default=str))
    return output / WEIGHTS_FILE


def check_export_folder(output: str | os.PathLike) -> None:
    """Refuse an --output that holds anything but an earlier export: the export replaces the folder whole."""
    output = Path(output)
    if not output.exists():
        return
    if not output.is_dir():
        raise InputError(f"{output} exists and is not a folder", field="--output")
    others = sorted(entry.name for entry in output.iterdir() if entry.name not in (WEIGHTS_FILE, CONFIG_FILE))
    if others:
        raise InputError(f"{output} holds other files ({', '.join(others[:3])}): the export replaces the "
                         "folder whole, so give a new or an earlier export's folder", field="--output")


def check_import_folder(save: str | os.PathLike) -> None:
    """Refuse a --save folder that already holds checkpoints: the import would overwrite one of them
    or move 'latest' back (as pretrain_lst.py refuses without --overwrite-save)."""
    from megatron_lst.training.checkpoint_folder import complete_iterations
    from megatron_lst.training.checkpointing import LATEST_FILE

    held = complete_iterations(save)
    if held or (Path(save) / LATEST_FILE).exists():
        listed = f"checkpoint(s) {', '.join(map(str, held))}" if held else LATEST_FILE
        raise InputError(f"{save} already holds {listed}: give an empty or new folder", field="--save")


def megatron_to_safetensors(load: str, output: str, iteration: Optional[int], tokenizer_model: Optional[str]) -> Path:
    model, config, _, progress, source = read_megatron(load, iteration, tokenizer_model)
    return write_consolidated(model, config, Path(output), progress, source)


def read_megatron(load: str, iteration: Optional[int], tokenizer_model: Optional[str]
                  ) -> tuple[torch.nn.Module, Config, dict, dict, str]:
    """A megatron checkpoint's model (TP = 1, CPU), run config, common state, progress and source name."""
    from megatron_lst.training.checkpointing import iteration_dir, load_checkpoint, load_common_state, resolve_iteration

    iteration = resolve_iteration(load, iteration)  # verified against its manifest before anything is read
    if iteration is None:
        what = "no completed checkpoint (no latest_checkpointed_iteration.txt)" if Path(load).is_dir() else \
            "no such checkpoint folder"
        raise CheckpointError(what, file=load)
    common = load_common_state(load, iteration)
    config = single_process_config(common["config"], tokenizer_model)
    initialize_single_process(config.data.seed, backend="gloo")  # conversion runs on CPU
    model = build_model(config)
    loaded = load_checkpoint(load, model, iteration=iteration, load_rng=False)
    progress = {key: loaded.get(key) for key in ("iteration", "consumed_samples", "flops_so_far", "tokens_so_far")}
    return model, config, common, progress, f"megatron:{iteration_dir(load, iteration)}"


def megatron_to_hf(load: str, output: str, iteration: Optional[int], tokenizer_model: Optional[str]) -> Path:
    """``to-hf``: the checkpoint with its tokenizer as an export folder (megatron_lst/export/folder.py)."""
    from megatron_lst.export.folder import write_export
    from megatron_lst.training.checkpoint_loading import check_vocabulary
    from megatron_lst.training.registry import spec_of

    model, config, common, progress, source = read_megatron(load, iteration, tokenizer_model)
    tokenizer = spec_of(config).build_task(config).tokenizer
    check_vocabulary(common, tokenizer)  # the exported tokenizer is the one the model was trained with
    written = write_export(model, tensor_state(model), config, tokenizer, output, progress, source)
    if spec_of(config).patched:
        print("note: LST is not a transformers architecture: the folder holds our own safetensors + "
              "megatron_lst.json, which tools/evaluate.py and tools/generate.py load (transformers cannot)")
    return written


def safetensors_to_megatron(input_dir: str, save: str, tokenizer_model: Optional[str]) -> Path:
    from safetensors.torch import load_file

    from megatron_lst.training.checkpointing import save_checkpoint

    meta = json.loads((Path(input_dir) / CONFIG_FILE).read_text())
    config = single_process_config(meta["config"], tokenizer_model)
    initialize_single_process(config.data.seed, backend="gloo")  # conversion runs on CPU
    model = build_model(config)
    load_tensor_state(model, load_file(str(Path(input_dir) / WEIGHTS_FILE)))
    progress = {key: value for key, value in meta.get("progress", {}).items() if value is not None}
    common = {**progress, "config": encode_saved(config.to_dict()), "converted_from": meta.get("source", input_dir)}
    return save_checkpoint(save, int(progress.get("iteration", 0)), model, None, None, common)


def deepspeed_to_safetensors(load: str, output: str, tag: Optional[str], tokenizer_model: Optional[str]) -> Path:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from megatron_lst.training.checkpoint_manifest import verify_checkpoint

    tag = tag or (Path(load) / "latest").read_text().strip()
    # DeepSpeed's own files are pickles (its zero_to_fp32 reads them unrestricted too): verify them first
    verify_checkpoint(Path(load) / tag)
    client_state = torch.load(Path(load) / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    config = single_process_config(client_state["config"], tokenizer_model)
    state = get_fp32_state_dict_from_zero_checkpoint(load, tag=tag)
    initialize_single_process(config.data.seed, backend="gloo")  # conversion runs on CPU
    model = build_model(config)
    dtype = next(model.parameters()).dtype
    load_tensor_state(model, {name: value.to(dtype) for name, value in state.items()})
    progress = {key: client_state.get(key) for key in ("iteration", "consumed_samples", "flops_so_far", "tokens_so_far")}
    return write_consolidated(model, config, Path(output), progress, f"deepspeed:{Path(load) / tag}")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    to_st = commands.add_parser("to-safetensors", help="megatron dist checkpoint -> consolidated safetensors")
    to_st.add_argument("--load", required=True, help="checkpoint root (holds latest_checkpointed_iteration.txt)")
    to_st.add_argument("--iteration", type=int, default=None, help="which iter_NNNNNNN (default: latest)")
    to_st.add_argument("--output", required=True, help="folder for model.safetensors and config.json")
    from_st = commands.add_parser("from-safetensors", help="consolidated safetensors -> megatron dist checkpoint")
    from_st.add_argument("--input", required=True, help="folder with model.safetensors and config.json")
    from_st.add_argument("--save", required=True, help="checkpoint root to write iter_NNNNNNN/ into")
    from_ds = commands.add_parser("deepspeed-to-safetensors", help="DeepSpeed checkpoint -> consolidated safetensors")
    from_ds.add_argument("--load", required=True, help="DeepSpeed checkpoint root (holds 'latest')")
    from_ds.add_argument("--tag", default=None, help="checkpoint tag, e.g. iter_0000100 (default: latest)")
    from_ds.add_argument("--output", required=True, help="folder for model.safetensors and config.json")
    to_hf = commands.add_parser("to-hf", help="megatron dist checkpoint -> transformers Llama folder (baselines) "
                                              "or our own export folder (LST), with the tokenizer")
    to_hf.add_argument("--load", required=True, help="checkpoint root (holds latest_checkpointed_iteration.txt)")
    to_hf.add_argument("--iteration", type=int, default=None, help="which iter_NNNNNNN (default: latest)")
    to_hf.add_argument("--output", required=True, help="folder to write (replaced whole if it is an earlier export)")
    for sub in (to_st, from_st, from_ds, to_hf):
        sub.add_argument("--tokenizer-model", default=None,
                         help="tokenizer file, when the run's path no longer exists (fixes the vocabulary size)")
    return parser


@exit_on_input_error  # a refused checkpoint or output, a missing file: one line, exit 2
def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from megatron_lst.training.initialize import destroy_distributed

    if args.command == "from-safetensors":
        check_import_folder(args.save)
    elif args.command == "to-hf":
        from megatron_lst.export.folder import check_output_folder

        with input_errors_from(ValueError, field="--output"):
            check_output_folder(args.output)
    else:
        check_export_folder(args.output)
    try:
        # a missing checkpoint file, export file or tokenizer (checkpoints are verified before any read)
        with input_errors_from(FileNotFoundError):
            if args.command == "to-safetensors":
                written = megatron_to_safetensors(args.load, args.output, args.iteration, args.tokenizer_model)
            elif args.command == "from-safetensors":
                written = safetensors_to_megatron(args.input, args.save, args.tokenizer_model)
            elif args.command == "to-hf":
                with input_errors_from(ValueError):  # not Llama-shaped, or a tokenizer other than the run's
                    written = megatron_to_hf(args.load, args.output, args.iteration, args.tokenizer_model)
            else:
                written = deepspeed_to_safetensors(args.load, args.output, args.tag, args.tokenizer_model)
    finally:
        destroy_distributed()
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":  # dist_checkpointing's writer uses multiprocessing: keep this guard
    sys.exit(main())
