"""Every checkpoint folder carries ``manifest.json``: the size and SHA-256 of each file in it.

Why: loading a checkpoint runs torch's unpickler on the distributed checkpoint's ``.metadata``
(and megatron's ``common.pt``, DeepSpeed's ``*_states.pt``), so a checkpoint is code. The
manifest is written last, inside the temporary folder, just before the atomic rename that
publishes the checkpoint; it is verified before anything in the folder is opened by torch.
A flipped byte, a truncated file, a missing or an added file is then refused with the file
named, instead of loading garbage weights (the loss of a bit-flipped shard was 3.9e27) or
running a pickle payload placed there after the write.

What it does not prove: who wrote the checkpoint. A manifest written by someone else for their
own files verifies; trust a checkpoint only as far as you trust its source.

A checkpoint without a manifest (written before this check existed) is refused; if you trust it,
``tools/write_checkpoint_manifest.py FOLDER`` adds one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from megatron_lst.validation import InputError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20


class CheckpointError(InputError):
    """A checkpoint (folder) that must not be loaded; the message names the folder or file and why.
    It is bad input like any other, so every command line wrapped in
    ``validation.exit_on_input_error`` prints it as one line and exits with status 2."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    """Every file under ``folder`` except the manifest, as sorted relative paths."""
    return sorted(p.relative_to(folder) for p in folder.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.relative_to(folder).as_posix() != MANIFEST_NAME)


def write_manifest(folder: str | os.PathLike) -> Path:
    """Hash every file of a finished checkpoint folder into its ``manifest.json`` (temp file, renamed)."""
    folder = Path(folder)
    files = {}
    for relative in _files(folder):
        path = folder / relative
        files[relative.as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    manifest = folder / MANIFEST_NAME
    temp = folder / f".{MANIFEST_NAME}.tmp"
    temp.write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1, sort_keys=True))
    os.replace(temp, manifest)
    return manifest


def _read_manifest(folder: Path) -> dict:
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        raise CheckpointError(
            f"{folder}: no {MANIFEST_NAME}, so nothing proves it is the checkpoint that was written (it predates "
            f"verified checkpoints, or another tool wrote it); if you trust it, add one with "
            f"`python tools/write_checkpoint_manifest.py {folder}`")
    try:
        files = json.loads(manifest.read_text())["files"]
        entries = {str(name): (int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{manifest}: not a readable checkpoint manifest ({type(error).__name__}: {error})") from None
    return entries


def _signature(folder: Path) -> tuple:
    """Cheap identity of a folder's current files (name, size, mtime): a verified folder that still
    has the same signature need not be hashed again (evaluation opens a checkpoint several times)."""
    return tuple((p.as_posix(), (folder / p).stat().st_size, (folder / p).stat().st_mtime_ns)
                 for p in [*_files(folder), Path(MANIFEST_NAME)] if (folder / p).exists())


_verified: dict[str, tuple] = {}


def verify_checkpoint(folder: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` naming the first file that does not match the manifest.

    Checks, before any file is unpickled: the manifest exists and parses; no listed file is missing;
    no file is present that the manifest does not list; each file's size, then its SHA-256, matches.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    signature = _signature(folder)
    if _verified.get(str(folder.resolve())) == signature:
        return
    expected = _read_manifest(folder)
    present = {p.as_posix() for p in _files(folder)}
    for name in sorted(expected):
        if name not in present:
            raise CheckpointError(f"{folder / name}: listed in {MANIFEST_NAME} but missing")
    for name in sorted(present - set(expected)):
        raise CheckpointError(f"{folder / name}: not listed in {MANIFEST_NAME} (added after the checkpoint was written)")
    for name, (size, digest) in sorted(expected.items()):
        path = folder / name
        actual = path.stat().st_size
        if actual != size:
            raise CheckpointError(f"{path}: {actual} bytes, but {MANIFEST_NAME} says {size} "
                                  f"({'truncated' if actual < size else 'grown'} after the write)")
        if _sha256(path) != digest:
            raise CheckpointError(f"{path}: its SHA-256 does not match {MANIFEST_NAME} (corrupted or altered "
                                  "after the write)")
    _verified[str(folder.resolve())] = signature
