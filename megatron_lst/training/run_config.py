"""The run config and vocabulary layout a checkpoint records, written as JSON and read back by one function.

A checkpoint's common state holds ``config`` (``Config.to_dict()``) and ``vocab_layout``
(``JointTokenizer.layout()``) as JSON text, so any tool (or a person with ``json.loads``) can
read them. Evaluation, generation and conversion rebuild the run's ``Config`` through
``config_from_saved``; settings a later version no longer has are dropped with a note, so a
checkpoint outlives the code that wrote it. Checkpoints written before the JSON format hold the
``repr`` of the dict and no manifest; ``tools/write_checkpoint_manifest.py``, which adopts them,
rewrites those records as JSON once, so reading never parses Python literals.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from megatron_lst.models.config import ModelConfig
from megatron_lst.training.arguments import SECTIONS, Config, config_from_values

# settings older versions kept in Config.extra, now flags of the data section
_LEGACY_EXTRA = ("num_workers", "bucket_window")


def encode_saved(value: dict) -> str:
    """JSON text of a mapping a checkpoint records (the run config, the vocabulary layout)."""
    return json.dumps(value, sort_keys=True)


def decode_saved(saved: str | dict, what: str = "config") -> dict:
    """A recorded mapping: JSON text, or an already parsed dict."""
    if isinstance(saved, dict):
        return saved
    try:
        decoded = json.loads(saved)
    except json.JSONDecodeError as error:
        raise ValueError(f"the checkpoint's {what} is not JSON ({error}); a checkpoint written by an older version "
                         "records a Python repr: adopt it with tools/write_checkpoint_manifest.py, which "
                         "rewrites it as JSON") from None
    if not isinstance(decoded, dict):
        raise ValueError(f"the checkpoint's {what} is a {type(decoded).__name__}, not a mapping")
    return decoded


def config_from_saved(saved: str | dict, **overrides: Any) -> Config:
    """The run's ``Config`` from its recorded form, with ``overrides`` (flat field names) applied.

    Settings this version does not know are dropped with a note on stderr.
    """
    saved = decode_saved(saved)
    values = dict(saved.get("model_config", {}))
    for section in SECTIONS:
        values.update(saved.get(section, {}))
    values.update({name: value for name, value in (saved.get("extra") or {}).items() if name in _LEGACY_EXTRA})
    if "no_load_optim" in values:  # renamed to its positive form (--load-optim / --no-load-optim)
        values["load_optim"] = not values.pop("no_load_optim")
    known = {f.name for cls in (ModelConfig, *SECTIONS.values()) for f in dataclasses.fields(cls)}
    dropped = sorted(set(values) - known)
    if dropped:  # a checkpoint from another version of the code: settings this one does not have
        print(f"note: ignoring settings this version does not know: {dropped}", file=sys.stderr)
    values = {name: value for name, value in values.items() if name in known}
    values.update(overrides)
    return config_from_values(values)
