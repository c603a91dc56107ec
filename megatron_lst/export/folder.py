"""Write and read exported model folders (``tools/convert_checkpoint.py to-hf``).

An export is one folder, written atomically (it appears whole or not at all):

* ``model.safetensors``: the TP = 1 weights, as trained (fp32 or bf16). The baseline and the BPE
  baseline use Hugging Face Llama names (``hf_llama.py``); LST, which is not a transformers
  architecture, keeps megatron-core's names.
* ``config.json`` + ``generation_config.json`` (baselines only): ``LlamaForCausalLM``'s configuration,
  so ``transformers.AutoModelForCausalLM.from_pretrained(folder)`` loads the model.
* ``megatron_lst.json``: this project's run configuration (``Config.to_dict()``), the vocabulary
  layout, the training progress and the weights' naming; from it ``tools/evaluate.py`` and
  ``tools/generate.py`` rebuild the model, so they take the folder as ``--checkpoint``.
* the joint tokenizer (``tokenizer_files.py``).

A ``to-safetensors`` folder (``model.safetensors`` + a ``config.json`` holding our run configuration)
is read too; it carries no tokenizer, so the run's tokenizer path must still exist (or be given).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from megatron_lst.export.hf_llama import (TE_FUSED_NORMS, check_llama_shaped, from_llama_state, llama_config,
                                          rename_norms, to_llama_state)
from megatron_lst.export.tokenizer_files import tokenizer_paths, write_tokenizer_files
from megatron_lst.tokenizer import JointTokenizer
from megatron_lst.utils.atomic import atomic_folder

META_FILE = "megatron_lst.json"
WEIGHTS_FILE = "model.safetensors"
HF_CONFIG_FILE = "config.json"
LLAMA_FAMILIES = ("baseline", "bpe-baseline")
FORMAT_VERSION = 1


def check_output_folder(output: str | Path) -> None:
    """Refuse an ``--output`` holding anything but an earlier export: the export replaces the folder whole."""
    output = Path(output)
    if not output.exists():
        return
    if not output.is_dir():
        raise ValueError(f"--output {output} exists and is not a folder")
    if any(output.iterdir()) and not (output / META_FILE).is_file():
        raise ValueError(f"--output {output} is not empty and holds no earlier export ({META_FILE}): the export "
                         "replaces the folder whole, so give a new or an earlier export's folder")


def special_ids(tokenizer: JointTokenizer) -> dict:
    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}


def write_export(model: torch.nn.Module, state: dict[str, torch.Tensor], config: Any, tokenizer: JointTokenizer,
                 output: str | Path, progress: dict, source: str) -> Path:
    """Export ``model`` (its consolidated ``state``) with ``config``'s settings and ``tokenizer`` into ``output``."""
    from safetensors.torch import save_file

    family = config.train.model
    llama = family in LLAMA_FAMILIES
    if llama:
        check_llama_shaped(model)  # before anything is written
    with atomic_folder(output) as folder:
        weights = to_llama_state(state, model.config) if llama else state
        save_file(weights, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "source": source})
        if llama:
            hf = llama_config(model, config.model_config.rotary_base, config.data.seq_length,
                              special_ids(tokenizer), tokenizer.vocab_size)
            (folder / HF_CONFIG_FILE).write_text(json.dumps(hf, indent=1))
            padding_ids = list(range(tokenizer.vocab_size, int(model.vocab_size)))
            (folder / "generation_config.json").write_text(json.dumps(
                {**special_ids(tokenizer), "suppress_tokens": padding_ids}, indent=1))
        files = write_tokenizer_files(tokenizer, folder, config.data.seq_length)
        meta = {"format_version": FORMAT_VERSION, "model": family, "weights": "llama" if llama else "megatron",
                "config": config.to_dict(), "vocab_layout": tokenizer.layout(), "tokenizer_files": files,
                "progress": progress, "source": source}
        (folder / META_FILE).write_text(json.dumps(meta, indent=1, default=str))
    return Path(output)


def _consolidated_meta(folder: Path) -> Optional[dict]:
    """A to-safetensors folder's config.json (our run configuration), else None."""
    path = folder / HF_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return meta if isinstance(meta, dict) and "config" in meta and "format_version" in meta else None


def is_export_folder(path: str | Path) -> bool:
    """An exported folder (to-hf, or to-safetensors), as opposed to a training run's checkpoint root."""
    folder = Path(path)
    return folder.is_dir() and (folder / WEIGHTS_FILE).is_file() and (
        (folder / META_FILE).is_file() or _consolidated_meta(folder) is not None)


def read_export_meta(folder: str | Path) -> dict:
    folder = Path(folder)
    meta_file = folder / META_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else _consolidated_meta(folder)
    if meta is None or "config" not in meta:
        raise ValueError(f"{folder}: not an exported model folder (no {META_FILE} or run config.json)")
    return meta


def read_export_common(folder: str | Path) -> dict:
    """The folder's metadata in the shape of a checkpoint's common state (``config`` and ``vocab_layout``
    as JSON text), with the tokenizer paths pointing at the folder's own copies."""
    meta = read_export_meta(folder)
    config = json.loads(json.dumps(meta["config"]))  # a copy
    text_model, unit_bpe = tokenizer_paths(Path(folder))
    data = config.setdefault("data", {})
    if text_model is not None:
        data["tokenizer_model"] = str(text_model.resolve())
    if unit_bpe is not None:
        data["unit_bpe"] = str(unit_bpe.resolve())
    common = {"config": json.dumps(config)}
    if "vocab_layout" in meta:
        common["vocab_layout"] = json.dumps(meta["vocab_layout"])
    return common


def load_exported_weights(model: torch.nn.Module, folder: str | Path) -> None:
    """Load the folder's safetensors into our ``model`` (Llama names mapped back); every tensor must fit."""
    from safetensors.torch import load_file

    folder = Path(folder)
    state = load_file(str(folder / WEIGHTS_FILE))
    if read_export_meta(folder).get("weights") == "llama":
        state = from_llama_state(state, model.config)
        if any(name.endswith("." + fused) for name in model.state_dict() for fused in TE_FUSED_NORMS):
            state = rename_norms(state, to_te=True)  # a GPU model built with transformer-engine's spec
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [name for name in missing if not name.endswith("_extra_state")]
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS_FILE}: the weights do not fit the model its config builds: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")
