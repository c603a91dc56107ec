"""Packing plans of every epoch, cached on disk as plain .npy arrays and read back memory-mapped.

One folder per dataset, ``{unique_description_hash}-{class}-{split}-packing_plans`` under
``path_to_cache`` (megatron-core's ``{hash}-{class}-{split}-{affix}`` naming for its index caches),
holds the arrays of ``PlanArrays``, the dataset's ``description.txt`` and ``manifest.json``.

A folder is complete by construction: it is written under a temporary name and renamed into place
only once every array and the manifest are on disk, so a crash mid-write leaves no folder under the
final name. The manifest, written last, records each file's size and CRC-32 and a fingerprint of
the corpus (documents, sequences, tokens); a load checks all of them, so a truncated, edited or
stale cache (a corpus re-preprocessed under the same path) is reported instead of silently read.
Reopening in a DataLoader worker (``open_arrays``) skips the checksums: its process already
verified the folder when it built the dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import zlib
from dataclasses import dataclass, fields

import numpy as np

CACHE_VERSION = 1
MANIFEST = "manifest.json"
DESCRIPTION = "description.txt"
_CHUNK_BYTES = 1 << 24


class PlanCacheError(Exception):
    """The cache folder cannot be used as it is."""


class PlanCacheMissing(PlanCacheError):
    """No cache folder yet."""


class PlanCacheDamaged(PlanCacheError):
    """A cache folder exists but is incomplete, corrupt or built from other data."""


@dataclass
class PlanArrays:
    """Every epoch's plan, concatenated: sample ``i`` is pieces ``sample_offsets[i]:sample_offsets[i + 1]``.

    A piece names its document by its id in the low-level dataset (the epoch's order is applied at
    build time), so reading a sample needs no document order. Epoch ``e`` holds the samples
    ``epoch_sample_offsets[e]:epoch_sample_offsets[e + 1]``.
    """

    piece_documents: np.ndarray
    piece_starts: np.ndarray
    piece_ends: np.ndarray
    sample_offsets: np.ndarray
    sample_num_tokens: np.ndarray
    sample_num_positions: np.ndarray
    epoch_sample_offsets: np.ndarray
    epoch_positions_used: np.ndarray

    @classmethod
    def names(cls) -> list[str]:
        return [field.name for field in fields(cls)]

    @property
    def num_samples(self) -> int:
        return len(self.sample_offsets) - 1

    def check_consistent(self, where: str) -> None:
        """O(1) structural checks that catch arrays from different builds or cut short."""
        problems = []
        if len(self.sample_offsets) < 1 or int(self.sample_offsets[-1]) != len(self.piece_documents):
            problems.append("sample_offsets does not end at the number of pieces")
        if not len(self.piece_documents) == len(self.piece_starts) == len(self.piece_ends):
            problems.append("piece arrays differ in length")
        if not len(self.sample_num_tokens) == len(self.sample_num_positions) == self.num_samples:
            problems.append("per-sample arrays differ from the number of samples")
        if len(self.epoch_sample_offsets) != len(self.epoch_positions_used) + 1 or \
                int(self.epoch_sample_offsets[-1]) != self.num_samples:
            problems.append("epoch_sample_offsets does not end at the number of samples")
        if problems:
            raise PlanCacheDamaged(f"{where}: {'; '.join(problems)}")


def cache_folder(path_to_cache: str, dataset) -> str:
    """The folder of a ``MegatronDataset``'s plans (keyed by its ``unique_description_hash``)."""
    name = f"{dataset.unique_description_hash}-{type(dataset).__name__}-{dataset.index_split.name}-packing_plans"
    return os.path.join(path_to_cache, name)


def _file_crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
    return crc


def _write_file(path: str, write) -> None:
    with open(path, "wb") as stream:
        write(stream)
        stream.flush()
        os.fsync(stream.fileno())


def save(folder: str, arrays: PlanArrays, description: str, fingerprint: dict) -> None:
    """Write ``arrays`` to ``folder`` atomically (temporary folder, then one rename).

    If another process has meanwhile put a valid folder in place, it is kept and ours dropped;
    a damaged one is moved aside and replaced.
    """
    parent = os.path.dirname(folder) or "."
    os.makedirs(parent, exist_ok=True)
    temporary = f"{folder}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.makedirs(temporary)
    try:
        manifest = {"version": CACHE_VERSION, "fingerprint": fingerprint, "arrays": {}}
        for name in PlanArrays.names():
            array = np.ascontiguousarray(getattr(arrays, name))
            path = os.path.join(temporary, f"{name}.npy")
            _write_file(path, lambda stream, array=array: np.save(stream, array, allow_pickle=False))
            manifest["arrays"][name] = {"dtype": array.dtype.str, "shape": list(array.shape),
                                        "bytes": os.path.getsize(path), "crc32": _file_crc32(path)}
        _write_file(os.path.join(temporary, DESCRIPTION), lambda stream: stream.write(description.encode("utf-8")))
        _write_file(os.path.join(temporary, MANIFEST),
                    lambda stream: stream.write(json.dumps(manifest, indent=1).encode("utf-8")))
        _publish(temporary, folder, fingerprint)
    finally:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)


def _publish(temporary: str, folder: str, fingerprint: dict) -> None:
    try:
        os.rename(temporary, folder)
        return
    except OSError:
        if not os.path.isdir(folder):
            raise
    try:  # another writer won the race: keep its folder if it is sound
        load(folder, fingerprint)
        return
    except PlanCacheError:
        pass
    damaged = f"{folder}.damaged-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(folder, damaged)
    os.rename(temporary, folder)
    shutil.rmtree(damaged, ignore_errors=True)


def _read_manifest(folder: str) -> dict:
    if not os.path.isdir(folder):
        raise PlanCacheMissing(f"{folder}: no packing-plan cache")
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise PlanCacheDamaged(f"{path}: missing, so the cache was never completed")
    try:
        with open(path, encoding="utf-8") as stream:
            manifest = json.loads(stream.read())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PlanCacheDamaged(f"{path}: unreadable ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("version") != CACHE_VERSION:
        raise PlanCacheDamaged(f"{path}: not a version {CACHE_VERSION} packing-plan manifest")
    if set(manifest.get("arrays", {})) != set(PlanArrays.names()):
        raise PlanCacheDamaged(f"{path}: lists arrays {sorted(manifest.get('arrays', {}))}, "
                               f"expected {PlanArrays.names()}")
    return manifest


def load(folder: str, fingerprint: dict, verify_checksums: bool = True) -> PlanArrays:
    """The cached plans, memory-mapped; raises ``PlanCacheMissing`` / ``PlanCacheDamaged``."""
    manifest = _read_manifest(folder)
    if manifest.get("fingerprint") != fingerprint:
        raise PlanCacheDamaged(f"{os.path.join(folder, MANIFEST)}: built from a corpus with "
                               f"{manifest.get('fingerprint')}, this one has {fingerprint}")
    arrays = {}
    for name, expected in manifest["arrays"].items():
        path = os.path.join(folder, f"{name}.npy")
        if not os.path.isfile(path):
            raise PlanCacheDamaged(f"{path}: missing")
        size = os.path.getsize(path)
        if size != expected["bytes"]:
            raise PlanCacheDamaged(f"{path}: {size} bytes, the manifest says {expected['bytes']}")
        if verify_checksums and _file_crc32(path) != expected["crc32"]:
            raise PlanCacheDamaged(f"{path}: contents differ from what was written (CRC-32 mismatch)")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise PlanCacheDamaged(f"{path}: not a readable .npy file ({error})") from error
        if array.dtype.str != expected["dtype"] or list(array.shape) != expected["shape"]:
            raise PlanCacheDamaged(f"{path}: {array.dtype.str} {list(array.shape)}, the manifest says "
                                   f"{expected['dtype']} {expected['shape']}")
        arrays[name] = array
    plans = PlanArrays(**arrays)
    plans.check_consistent(folder)
    return plans


def open_arrays(folder: str) -> PlanArrays:
    """Reopen a folder this process family already verified (sizes and shapes only)."""
    manifest = _read_manifest(folder)
    return load(folder, manifest["fingerprint"], verify_checksums=False)
