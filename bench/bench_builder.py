#!/usr/bin/env python
"""Speed of the C++ indexed builder against megatron-core's IndexedDatasetBuilder, same input.

Both write the same speech-text layout (multimodal, one sequence per transcript/segment stream)
from the same pre-tokenised documents; the headline is the ratio of their wall times.

    .venv/bin/python bench/bench_builder.py --documents 2000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder  # noqa: E402

from megatron_lst._indexed_builder import IndexedDatasetWriter  # noqa: E402


def synthetic_documents(count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(ids, lengths, modes) per document: ~60 segments of a few text ids and ~6 units each."""
    rng = np.random.default_rng(seed)
    documents = []
    for _ in range(count):
        segments = int(rng.integers(20, 100))
        lengths = np.empty(2 * segments + 1, dtype=np.int64)
        lengths[0] = int(rng.integers(20, 200))
        lengths[1::2] = rng.integers(0, 3, segments)
        lengths[2::2] = rng.integers(0, 15, segments)
        modes = np.empty(len(lengths), dtype=np.int8)
        modes[0], modes[1::2], modes[2::2] = 3, 0, 1
        documents.append((rng.integers(0, 32000, int(lengths.sum())), lengths, modes))
    return documents


def run_megatron(documents, prefix: str) -> float:
    start = time.perf_counter()
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16, multimodal=True)
    for ids, lengths, modes in documents:
        builder.add_document(torch.from_numpy(ids), lengths.tolist(), modes.tolist())
    builder.finalize(prefix + ".idx")
    return time.perf_counter() - start


def run_cpp(documents, prefix: str) -> float:
    start = time.perf_counter()
    writer = IndexedDatasetWriter(prefix + ".bin", 8, True)
    for ids, lengths, modes in documents:
        writer.add_document(ids, lengths, modes)
    writer.finalize(prefix + ".idx")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    documents = synthetic_documents(args.documents)
    sequences = sum(len(lengths) for _, lengths, _ in documents)
    with tempfile.TemporaryDirectory() as folder:
        megatron = min(run_megatron(documents, f"{folder}/mcore") for _ in range(args.repeats))
        cpp = min(run_cpp(documents, f"{folder}/cpp") for _ in range(args.repeats))
        for suffix in (".bin", ".idx"):
            assert Path(f"{folder}/mcore{suffix}").read_bytes() == Path(f"{folder}/cpp{suffix}").read_bytes()
    print(f"{args.documents} documents, {sequences} sequences; identical files")
    print(f"megatron-core IndexedDatasetBuilder: {megatron * 1e3:.1f} ms")
    print(f"megatron_lst._indexed_builder:       {cpp * 1e3:.1f} ms")
    print(f"C++ builder vs megatron-core builder: {megatron / cpp:.1f}x")


if __name__ == "__main__":
    main()
