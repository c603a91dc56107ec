"""Outputs that appear whole or not at all.

A tool that fails (bad input found half-way, an exception, Ctrl-C, ``kill -9``) must not leave a
truncated file under the name a later step reads, nor destroy the output of an earlier run. So every
output is written under a hidden temporary name in the same folder (the same file system, so the
final rename is atomic), flushed to disk, and ``os.replace``d onto its final name only when the
writing finished; on an error the temporary is removed and whatever held the final name is untouched.
A ``kill -9`` can leave a ``.NAME.tmp-*`` sibling behind, never a partial ``NAME``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Optional


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A fresh hidden name next to ``path`` (same folder, so renaming it onto ``path`` is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", encoding: Optional[str] = None) -> Iterator[IO]:
    """``open(path, mode)`` whose content replaces ``path`` only when the block ends without an error.

    ``mode`` is ``"w"`` or ``"wb"``; text defaults to UTF-8. The parent folder is created."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        with open(temporary, mode, encoding=encoding or ("utf-8" if mode == "w" else None)) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """``Path(path).write_text(text)``, atomically."""
    with atomic_file(path, "w") as handle:
        handle.write(text)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh folder to fill, which becomes ``path`` when the block ends without an error.

    An existing ``path`` is replaced only then: it is renamed aside, the new folder renamed in, and
    the old one deleted (a crash between the two renames leaves the old one under a ``.tmp-`` name,
    not a mixture). On an error the new folder is deleted and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    temporary.mkdir()
    try:
        yield temporary
        for file in temporary.rglob("*"):
            if file.is_file():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        previous = None
        if path.exists():
            previous = temporary_sibling(path)
            os.replace(path, previous)
        try:
            os.replace(temporary, path)
        except BaseException:
            if previous is not None:
                os.replace(previous, path)  # put the old output back
            raise
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    _fsync_folder(path.parent)
