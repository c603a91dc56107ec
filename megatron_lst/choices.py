"""The closed sets of values a setting can take, as ``Literal`` types, and the check that enforces them.

One definition per choice, read by every layer that validates it: the patching kernel's config,
the interleaver, the blend builder and the command line (whose ``choices`` come from these
types, training/arguments.py). The module imports nothing heavy, so parsing flags stays fast.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, Optional

PatchingStrategy = Literal["static", "aligned", "mixed", "curriculum"]
SilenceMode = Literal["sil_sep", "sil_merged"]
PatchBoundary = Literal["paper", "causal"]
FoldSpeechMarker = Literal["never", "static", "always"]
DataMode = Literal["interleaved", "speech", "text", "asr", "tts"]
BlendWeighting = Literal["tokens", "samples"]
TransformerImpl = Literal["auto", "local", "transformer_engine"]
LocalAttentionImpl = Literal["auto", "flex", "blocked"]
RecomputeGranularity = Literal["full", "selective"]
NanPolicy = Literal["skip", "stop"]
Engine = Literal["megatron", "deepspeed"]
LrDecayStyle = Literal["cosine", "linear", "constant"]
DistributedBackend = Literal["nccl", "gloo"]
TokenizerType = Literal["auto", "sentencepiece", "tiktoken", "huggingface"]


def literal_choices(annotation: Any) -> Optional[tuple]:
    """The values of a ``Literal`` (or ``Optional[Literal]``) annotation; None for any other type."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(inner) == 1:
        return literal_choices(inner[0])
    return None


def check_choices(instance: Any, flag_names: bool = True) -> None:
    """Raise ValueError when a ``Literal``-typed field of the dataclass ``instance`` holds another value.

    ``None`` passes where the field is Optional. The message names the field as its flag
    (``--data-mode``) when ``flag_names``, else as ``Class.field``.
    """
    hints = typing.get_type_hints(type(instance))
    for field in dataclasses.fields(instance):
        choices = literal_choices(hints[field.name])
        value = getattr(instance, field.name)
        if choices is None or value in choices or (value is None and type(None) in typing.get_args(hints[field.name])):
            continue
        name = "--" + field.name.replace("_", "-") if flag_names else f"{type(instance).__name__}.{field.name}"
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
