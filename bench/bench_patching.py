"""Patches per second of the C++ patch-boundary kernel vs the numpy reference, same run.

Builds a batch of realistic interleaved samples (about 1M tokens by default: text blocks of
5-30 words at ~1.3 tokens a word, speech blocks of words of ~6 units with ~4-unit silences,
two documents packed per row), patches it with each strategy through both implementations,
checks that they agree, and prints patches/s side by side. The last line is the headline ratio
over all strategies together (total patches / total time, C++ over numpy).

    .venv/bin/python bench/bench_patching.py [--tokens 1048576] [--seq-len 4096] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_lst.patching import PatchingConfig, compute_patches
from megatron_lst.patching.reference import reference_patch_batch
from megatron_lst.tokenizer import VocabLayout

LAYOUT = VocabLayout(text_vocab_size=32000)
FIELDS = ("tokens", "is_speech", "segment_ids", "is_silence", "document_ids")


def interleaved_row(rng: np.random.Generator, seq_len: int) -> list[np.ndarray]:
    """One packed row of seq_len tokens: two documents of alternating text and speech blocks."""
    tokens: list[int] = []
    speech: list[bool] = []
    segments: list[int] = []
    silence: list[bool] = []
    documents: list[int] = []
    segment = 0
    split = int(rng.integers(seq_len // 4, 3 * seq_len // 4))
    for document, end in ((0, split), (1, seq_len)):
        def push(token: int, is_unit: bool = False, segment_id: int = -1, silent: bool = False) -> None:
            tokens.append(token)
            speech.append(is_unit)
            segments.append(segment_id)
            silence.append(silent)
            documents.append(document)

        push(LAYOUT.bos_id)
        text_block = True
        while len(tokens) < end - 1:
            words = int(rng.integers(5, 31)) if text_block else int(rng.integers(2, 16))
            push(LAYOUT.text_marker_id if text_block else LAYOUT.speech_marker_id)
            for _ in range(words):
                if text_block:
                    for _ in range(1 + int(rng.random() < 0.3)):
                        push(int(rng.integers(0, LAYOUT.text_vocab_size)))
                    continue
                for silent, mean in ((False, 5.8), (True, 3.7)):
                    if silent and rng.random() > 0.4:
                        continue
                    for _ in range(1 + int(rng.poisson(mean - 1))):
                        push(LAYOUT.unit_offset + int(rng.integers(0, LAYOUT.num_units)), True, segment, silent)
                    segment += 1
            text_block = not text_block
        del tokens[end - 1 :], speech[end - 1 :], segments[end - 1 :], silence[end - 1 :], documents[end - 1 :]
        push(LAYOUT.eos_id)
    return [np.array(column) for column in (tokens, speech, segments, silence, documents)]


def make_batch(num_tokens: int, seq_len: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    rows = [interleaved_row(rng, seq_len) for _ in range(max(1, num_tokens // seq_len))]
    dtypes = (np.int64, bool, np.int32, bool, np.int32)
    return {field: np.stack([row[k] for row in rows]).astype(dtypes[k]) for k, field in enumerate(FIELDS)}


def time_call(function, repeats: int) -> tuple[float, object]:
    """Best wall time over repeats (the kernel) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1 << 20, help="tokens in the batch (default 1M)")
    parser.add_argument("--seq-len", type=int, default=4096, help="tokens per row (default 4096)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the C++ kernel; best is kept")
    args = parser.parse_args()

    batch = make_batch(args.tokens, args.seq_len)
    metadata = {field: batch[field] for field in FIELDS[2:]}
    num_rows, seq_len = batch["tokens"].shape
    speech_share = batch["is_speech"].mean()
    print(f"batch: {num_rows} x {seq_len} = {batch['tokens'].size:,} tokens, {speech_share:.0%} speech units")
    configs = {
        "static p=4": (PatchingConfig(), 0),
        "aligned sil_sep": (PatchingConfig(strategy="aligned"), 0),
        "aligned sil_merged cap 16": (
            PatchingConfig(strategy="aligned", silence_mode="sil_merged", max_patch_length=16),
            0,
        ),
        "curriculum (step in the middle)": (PatchingConfig(strategy="curriculum", tau1=100, tau2=200), 150),
    }
    totals = {"cpp": [0, 0.0], "numpy": [0, 0.0]}
    print(f"{'strategy':34s} {'patches':>10s} {'C++ patches/s':>15s} {'numpy patches/s':>16s} {'ratio':>8s}")
    for name, (config, step) in configs.items():
        cpp_time, result = time_call(
            lambda: compute_patches(batch["tokens"], batch["is_speech"], config, LAYOUT, **metadata, step=step),
            args.repeats,
        )
        numpy_time, reference = time_call(
            lambda: reference_patch_batch(batch["tokens"], batch["is_speech"], config, LAYOUT, **metadata, step=step),
            1,
        )
        if not np.array_equal(result.patch_lengths, reference[0]):
            raise SystemExit(f"{name}: the C++ kernel and the numpy reference disagree")
        patches = int(result.num_patches.sum())
        for key, seconds in (("cpp", cpp_time), ("numpy", numpy_time)):
            totals[key][0] += patches
            totals[key][1] += seconds
        print(
            f"{name:34s} {patches:>10,d} {patches / cpp_time:>15,.0f} {patches / numpy_time:>16,.0f}"
            f" {numpy_time / cpp_time:>7.1f}x"
        )
    cpp_rate = totals["cpp"][0] / totals["cpp"][1]
    numpy_rate = totals["numpy"][0] / totals["numpy"][1]
    print(f"patching C++/numpy patches/s: {cpp_rate / numpy_rate:.1f}x")


if __name__ == "__main__":
    main()
