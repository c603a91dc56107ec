"""The input file of ``tools/generate.py``, read and checked whole before anything is generated or written.

Each record's ``id`` names its wav (``WAV_DIR/ID.wav``), so an id is a file name the user did not
choose for this machine: ``../x`` or ``/etc/x`` would write outside ``--wav-dir``. Such ids are
refused, with the file, line and field, before any output is opened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_lst.data.jsonl_records import RecordError, load_json_object, text_field
from megatron_lst.validation import InputError

WAV_SUFFIX = ".wav"
NAME_MAX_BYTES = 255  # the longest file name common Linux file systems take


class PromptFileError(InputError):
    """A bad input file; the message is one line naming the file, the line and the field."""


@dataclass
class PromptRecord:
    record: dict
    id: Any  # the input's id, or its 0-based record number
    line: int  # 1-based line in the input file


def plain_file_name(value: Any, suffix: str = "") -> str:
    """``value`` as a file name that stays in the folder it is joined to: a non-empty string (or an
    integer) with no path separator, NUL, ``.`` or ``..``, short enough with ``suffix``."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RecordError(f"must be a string or an integer, got {type(value).__name__}")
    name = str(value)
    if not name:
        raise RecordError("is empty")
    if "\0" in name:
        raise RecordError("contains a NUL character")
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if any(separator in name for separator in separators) or "\\" in name:
        raise RecordError(f"{name!r} contains a path separator: it must be a plain file name")
    if name in (".", ".."):
        raise RecordError(f"{name!r} is not a file name")
    if len((name + suffix).encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES:
        raise RecordError(f"is longer than {NAME_MAX_BYTES - len(suffix)} bytes")
    return name


def _check_units(record: dict) -> None:
    units = record.get("units")
    if not isinstance(units, list) or not all(isinstance(u, int) and not isinstance(u, bool) and u >= 0
                                              for u in units):
        raise RecordError("field 'units' must be a list of non-negative integers")


def read_prompt_records(path: str | os.PathLike, task: str, names_wavs: bool) -> list[PromptRecord]:
    """Every record of ``path`` (blank lines skipped), checked for ``task`` ("continue", "tts",
    "asr"); with ``names_wavs`` the ids must be distinct plain file names; at least one record."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise PromptFileError(f"{path}: cannot read the input file ({error})") from None
    records: list[PromptRecord] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = load_json_object(line)
            if task == "tts" or (task == "continue" and "units" not in record):
                text_field(record, "text")
            else:
                _check_units(record)
            record_id = record.get("id", len(records))
            if names_wavs:
                try:
                    name = plain_file_name(record_id, WAV_SUFFIX)
                except RecordError as error:
                    raise RecordError(f"field 'id' {error} (it names the wav in --wav-dir)") from None
                if name in seen:
                    raise RecordError(f"field 'id' {name!r} is also the id on line {seen[name]}: "
                                      "each wav needs its own id")
                seen[name] = number
        except RecordError as error:
            raise PromptFileError(f"{path}:{number}: {error}") from None
        records.append(PromptRecord(record, record_id, number))
    if not records:  # an empty output would replace an earlier one
        raise PromptFileError(f"{path}: no prompts: the input file holds no record")
    return records
