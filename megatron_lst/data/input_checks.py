"""Checks of a training run's data against its flags, done once at start (pretrain_lst.py).

Each used to surface late, or never: a blend weight of 0, -1, NaN or inf (a bare AssertionError
inside megatron-core), a prefix with no files (an assertion plus ``__del__`` noise), speech data
preprocessed with another text tokenizer (trained with exit 0 on ids that mean other pieces), a
codebook larger than the run's (an IndexError mid-epoch). Every problem is an InputError naming the
flag or the dataset file and field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

from megatron_lst.data.speech_layout import METADATA_FORMAT, metadata_path
from megatron_lst.tokenizer import TextModel, text_model_difference
from megatron_lst.validation import InputError

DATA_PATH_FLAG = "--data-path"


def parse_blend(data_path: Sequence[str]) -> tuple[list[str], Optional[list[float]]]:
    """``['0.3', 'a', '0.7', 'b']`` -> (['a', 'b'], [0.3, 0.7]); ``['a']`` -> (['a'], None).

    Weights must be finite and > 0: megatron-core normalises them, so a zero, negative, NaN or
    infinite weight has no meaning as a share of the blend."""
    if not data_path:
        raise InputError("is empty: give one or more dataset prefixes", field=DATA_PATH_FLAG)
    if len(data_path) == 1:
        return [str(data_path[0])], None
    if len(data_path) % 2:
        raise InputError(f"must alternate weight and prefix, got {len(data_path)} values: {list(data_path)}",
                         field=DATA_PATH_FLAG)
    weights = []
    for position, (weight, prefix) in enumerate(zip(data_path[0::2], data_path[1::2])):
        try:
            value = float(weight)
        except (TypeError, ValueError):
            raise InputError(f"weight {weight!r} of {prefix!r} is not a number", field=DATA_PATH_FLAG) from None
        if not math.isfinite(value) or value <= 0:
            raise InputError(f"weight {weight!r} of {prefix!r} must be a positive finite number",
                             field=DATA_PATH_FLAG)
        weights.append(value)
    return [str(prefix) for prefix in data_path[1::2]], weights


def check_prefix_files(prefix: str) -> None:
    """Megatron's indexed dataset is ``{prefix}.bin`` plus ``{prefix}.idx``; both must exist."""
    missing = [suffix for suffix in (".bin", ".idx") if not Path(prefix + suffix).is_file()]
    if missing:
        raise InputError(f"dataset prefix {prefix!r} has no {' or '.join(prefix + s for s in missing)}"
                         " (give the prefix tools/preprocess_data.py wrote, without .bin/.idx)", field=DATA_PATH_FLAG)


def read_speech_metadata(prefix: str) -> Optional[dict]:
    """The ``.json`` sidecar of a speech-text dataset, or None for a text-only (GPT) dataset."""
    path = Path(metadata_path(prefix))
    if not path.is_file():
        return None
    try:
        metadata = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"not a valid dataset sidecar: {error}", file=path) from None
    if not isinstance(metadata, dict) or metadata.get("format") != METADATA_FORMAT:
        return None
    return metadata


def check_speech_metadata(prefix: str, metadata: dict, text_model: TextModel, num_units: int) -> None:
    """The dataset must have been written with the run's text tokenizer and a codebook that fits."""
    path = metadata_path(prefix)
    difference = text_model_difference(metadata.get("text_model"), text_model.describe())
    if difference is not None:
        raise InputError(f"preprocessed with another text tokenizer than this run's --tokenizer-model: {difference}; "
                         "preprocess again with the run's tokenizer", file=path, field="text_model")
    if metadata.get("unit_bpe"):
        unit_vocab = metadata.get("unit_vocab_size")
        if not isinstance(unit_vocab, int) or unit_vocab > num_units:
            raise InputError(f"{unit_vocab!r} unit-BPE pieces do not fit the run's --num-units {num_units}",
                             file=path, field="unit_vocab_size")
    elif metadata.get("num_units") != num_units:
        raise InputError(f"{metadata.get('num_units')!r} (the codebook the units were written with) but the run "
                         f"has --num-units {num_units}", file=path, field="num_units")


def check_training_data(data_path: Sequence[str], text_model: TextModel, num_units: int) -> None:
    """Every check above, for every dataset of the blend, before anything is built."""
    prefixes, _ = parse_blend(data_path)
    for prefix in prefixes:
        check_prefix_files(prefix)
        metadata = read_speech_metadata(prefix)
        if metadata is not None:
            check_speech_metadata(prefix, metadata, text_model, num_units)
