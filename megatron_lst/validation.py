"""One way to reject bad input: ``InputError`` (file, line, field, message) and the jsonl reader.

Every reader of user files (preprocessing jsonl, benchmark items, held-out documents, blend
arguments, dataset sidecars) raises :class:`InputError`, which prints as one line,
``file:line: field: message``, and every command line turns it into exit status 2 in one place
(:func:`exit_on_input_error`). It sits at the bottom of the package (it imports nothing of the
project) so data, evaluation, training and tools can all use it without importing upwards.

Reading is strict on purpose: a byte that is not UTF-8 is an error naming its field, not a silent
U+FFFD; ``NaN``/``Infinity`` literals are errors; a value of the wrong JSON type is never coerced
(``"123"`` is not a list of units, ``1.7`` or ``true`` is not a label).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Optional

EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """Bad user input; ``str()`` is the one line a CLI prints: ``file:line: field: message``.

    Any of ``file``, ``line`` and ``field`` may be unknown where the error is raised; readers add
    them on the way out (:meth:`located`, :func:`at_line`) so the parser of one record need not know
    which file it came from.
    """

    def __init__(self, message: str, *, file: Optional[str | Path] = None, line: Optional[int] = None,
                 field: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.file = None if file is None else str(file)
        self.line = line
        self.field = field

    def located(self, file: Optional[str | Path] = None, line: Optional[int] = None,
                field_prefix: Optional[str] = None) -> "InputError":
        """A copy with the location filled in where it was unknown; ``field_prefix`` nests the field
        (``endings[1]`` + ``units[3]`` -> ``endings[1].units[3]``)."""
        field = self.field
        if field_prefix:
            field = field_prefix if not field else f"{field_prefix}{'' if field.startswith('[') else '.'}{field}"
        error = type(self)(self.message, file=self.file or file, line=self.line or line, field=field)
        return error

    def __str__(self) -> str:
        location = ""
        if self.file is not None:
            location = self.file if self.line is None else f"{self.file}:{self.line}"
        parts = [part for part in (location, self.field, self.message) if part]
        return ": ".join(parts)


@contextmanager
def at_line(file: Optional[str | Path], line: Optional[int] = None, field_prefix: Optional[str] = None) -> Iterator[None]:
    """Give every InputError raised inside the block this file and line (and field prefix)."""
    try:
        yield
    except InputError as error:
        raise error.located(file, line, field_prefix) from None


def _reject_constant(name: str) -> Any:
    raise InputError(f"{name} is not a valid JSON number")


def _bad_text_path(value: Any, path: str = "") -> Optional[str]:
    """The JSON path of the first string holding a lone surrogate (an undecodable byte or escape)."""
    if isinstance(value, str):
        return path if any("\ud800" <= ch <= "\udfff" for ch in value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if _bad_text_path(key, path) is not None:
                return path or "(key)"
            found = _bad_text_path(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _bad_text_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def parse_json_object(raw: bytes | str) -> dict:
    """One jsonl line -> a dict, strictly: UTF-8, no NaN/Infinity, an object, valid text everywhere.

    An undecodable byte is reported with the field whose string holds it: the line is decoded with
    ``surrogateescape`` (each bad byte becomes a lone surrogate) only to find that field.
    """
    bad_byte = None
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            bad_byte = (raw[error.start], error.start + 1)
            text = raw.decode("utf-8", errors="surrogateescape")
    else:
        text = raw
    try:
        record = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        if bad_byte is not None:
            raise InputError(f"invalid UTF-8 byte 0x{bad_byte[0]:02x} at byte {bad_byte[1]}") from None
        raise InputError(f"malformed JSON: {error.msg} at column {error.colno}") from None
    except RecursionError:
        raise InputError("malformed JSON: nested too deeply") from None
    if not isinstance(record, dict):
        raise InputError(f"expected a JSON object, got {json_type(record)}")
    field = _bad_text_path(record)
    if field is not None:
        what = (f"invalid UTF-8 byte 0x{bad_byte[0]:02x} at byte {bad_byte[1]} of the line" if bad_byte
                else "a lone surrogate escape, not valid text")
        raise InputError(f"{what}: text must be valid UTF-8", field=field)
    return record


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(1-based line number, object)`` for every non-blank line; any problem is an InputError
    naming the file and line. A missing or unreadable file is an InputError too."""
    try:
        handle = Path(path).open("rb")
    except OSError as error:
        raise InputError(f"cannot read: {error.strerror or error}", file=path) from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            with at_line(path, number):
                record = parse_json_object(raw)
            yield number, record


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 20 else "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def is_int(value: Any) -> bool:
    """A JSON integer: ``True`` and ``1.0`` are not."""
    return isinstance(value, int) and not isinstance(value, bool)


def require_field(record: dict, key: str) -> Any:
    if key not in record:
        raise InputError("missing field", field=key)
    return record[key]


def require_int(value: Any, field: str, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """An integer in ``[low, high)`` (either bound optional)."""
    if not is_int(value):
        raise InputError(f"must be an integer, got {json_type(value)}", field=field)
    if (low is not None and value < low) or (high is not None and value >= high):
        raise InputError(f"{value} is outside [{'' if low is None else low}, {'' if high is None else high})",
                         field=field)
    return value


def require_str(value: Any, field: str, non_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InputError(f"must be a string, got {json_type(value)}", field=field)
    if non_empty and not value.strip():
        raise InputError("is empty", field=field)
    return value


def require_int_list(value: Any, field: str, low: Optional[int] = None, high: Optional[int] = None) -> list[int]:
    """A JSON list of integers in ``[low, high)``; a string of digits is not one."""
    if not isinstance(value, list):
        raise InputError(f"must be a list of integers, got {json_type(value)}", field=field)
    for index, item in enumerate(value):
        require_int(item, f"{field}[{index}]", low, high)
    return value


def require_positive_finite(value: float, name: str) -> float:
    """A command-line number that must be > 0 and finite (``nan``, ``inf``, ``0``, ``-25`` are not)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise InputError(f"must be a positive finite number, got {value!r}", field=name)
    return float(value)


@contextmanager
def input_errors_from(*kinds: type[BaseException], file: Optional[str | Path] = None,
                      field: Optional[str] = None) -> Iterator[None]:
    """Treat the listed exceptions raised inside the block as bad input (InputError, one line).

    For code that cannot know an error is the user's: a loader deep inside raises
    ``FileNotFoundError`` for a tokenizer path the user gave (or the checkpoint recorded), which a
    tool, knowing where the path came from, reports as bad input instead of a traceback.
    """
    try:
        yield
    except InputError:
        raise
    except kinds as error:
        raise InputError(str(error), file=file, field=field) from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too, ``error: PROG: message``, with exit status 2.

    argparse prints the whole usage before the reason (77 lines for pretrain_lst.py), which buries
    it; the usage stays one ``--help`` away. Subparsers are of the same class.
    """

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (--help lists the flags)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def report(error: BaseException) -> None:
    """Print the one line a CLI shows for bad input."""
    print(f"error: {error}", file=sys.stderr)


def exit_on_input_error(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a CLI ``main``: an InputError becomes one ``error:`` line and exit status 2."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs)
        except InputError as error:
            report(error)
            return EXIT_BAD_INPUT

    return wrapped
