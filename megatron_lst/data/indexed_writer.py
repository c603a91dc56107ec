"""Atomic writing of Megatron indexed datasets through the C++ builder.

Output files are written under temporary names next to their final ones and renamed only when
every file of the dataset is complete, so a failed or interrupted run leaves nothing behind that
megatron-core's reader could mistake for a finished dataset.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from megatron_lst._indexed_builder import IndexedDatasetWriter

INT32_CODE = 4
UINT16_CODE = 8
# megatron-core's DType.optimal_dtype switches to int32 at this vocabulary size.
UINT16_VOCAB_LIMIT = 65500


def dtype_code_for_vocab(vocab_size: int) -> int:
    """The on-disk dtype megatron would choose for ids below ``vocab_size``."""
    return UINT16_CODE if vocab_size < UINT16_VOCAB_LIMIT else INT32_CODE


class OutputWriteError(OSError):
    """Writing an output failed; the message names the final file, and says "disk full" when it was."""

    def __str__(self) -> str:
        return str(self.strerror)


@contextmanager
def writing(final_path: str | os.PathLike) -> Iterator[None]:
    """Turn a failed write into one ``OutputWriteError`` naming ``final_path`` (not its temp name).

    An ``OSError`` says why (ENOSPC: "disk full"). The C++ builder reports a failed ``fwrite`` as a
    bare ``RuntimeError``/``ValueError`` ("error writing ..."), without errno; then a full file system
    is told apart by its free space.
    """
    try:
        yield
    except OSError as error:
        if isinstance(error, OutputWriteError):
            raise
        if error.errno == errno.ENOSPC:
            raise OutputWriteError(errno.ENOSPC, f"disk full writing {final_path}") from None
        raise OutputWriteError(error.errno, f"cannot write {final_path}: {error.strerror or error}") from None
    except (RuntimeError, ValueError) as error:
        if not str(error).startswith(("error writing", "error closing", "cannot open for writing")):
            raise
        if _free_bytes(Path(final_path).parent) == 0:
            raise OutputWriteError(errno.ENOSPC, f"disk full writing {final_path}") from None
        raise OutputWriteError(errno.EIO, f"cannot write {final_path}: {error}") from None


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return -1


class AtomicFiles:
    """Temporary paths that become their final names together, or disappear together."""

    def __init__(self, final_paths: Sequence[str | os.PathLike]):
        self.final_paths = [Path(path) for path in final_paths]
        self.temp_paths = [
            path.with_name(f".{path.name}.tmp-{os.getpid()}") for path in self.final_paths
        ]
        for path in self.final_paths:
            path.parent.mkdir(parents=True, exist_ok=True)

    def temp(self, final_path: str | os.PathLike) -> str:
        return str(self.temp_paths[self.final_paths.index(Path(final_path))])

    def commit(self) -> None:
        for temp_path, final_path in zip(self.temp_paths, self.final_paths):
            os.replace(temp_path, final_path)

    def abort(self) -> None:
        for temp_path in self.temp_paths:
            temp_path.unlink(missing_ok=True)


class IndexedWriter:
    """One ``{prefix}.bin``/``{prefix}.idx`` pair, written atomically by the C++ builder."""

    def __init__(self, prefix: str | os.PathLike, vocab_size: int, multimodal: bool = False):
        self.prefix = str(prefix)
        self.multimodal = multimodal
        self.files = AtomicFiles([self.prefix + ".bin", self.prefix + ".idx"])
        with writing(self.prefix + ".bin"):
            self.writer = IndexedDatasetWriter(
                self.files.temp(self.prefix + ".bin"), dtype_code_for_vocab(vocab_size), multimodal
            )

    def add_documents(
        self,
        ids: np.ndarray,
        lengths: np.ndarray,
        sequences_per_document: np.ndarray,
        modes: np.ndarray | None = None,
    ) -> None:
        with writing(self.prefix + ".bin"):
            self.writer.add_documents(ids, lengths, modes, sequences_per_document)

    def finalize(self) -> None:
        """Write the index under its temporary name; ``commit`` publishes both files."""
        with writing(self.prefix + ".idx"):
            self.writer.finalize(self.files.temp(self.prefix + ".idx"))

    def commit(self) -> None:
        self.files.commit()

    def abort(self) -> None:
        self.files.abort()
