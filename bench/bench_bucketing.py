#!/usr/bin/env python
"""Padding of LST micro-batches on a demo-like blend, without and with length bucketing.

Builds the synthetic speech and text corpora of ``bench_dataloader.py``, blends them as the demo
does (``--data-path 0.33 SPEECH 0.67 TEXT``, ``--seq-length 256``, micro-batch 4, global batch 8),
reads the training batches through the real sampler and LST collate (patching included) and
reports PAD tokens / all tokens for each bucketing window (0 = samples in index order).

    .venv/bin/python bench/bench_bucketing.py --steps 100 --windows 0 1 4 16
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_lst.data.blending import blend_from_data_path, build_lst_datasets  # noqa: E402
from megatron_lst.data.datasets import LSTDatasetConfig  # noqa: E402
from megatron_lst.data.interleave import InterleaveConfig  # noqa: E402
from megatron_lst.patching import PatchingConfig  # noqa: E402
from megatron_lst.tokenizer import JointTokenizer  # noqa: E402
from megatron_lst.training.arguments import DEFAULT_BUCKET_WINDOW  # noqa: E402
from megatron_lst.training.lst_task import collate_lst_samples  # noqa: E402
from megatron_lst.training.sampler import SamplingOptions, build_data_iterator  # noqa: E402


def build_corpora(folder: Path, documents: int) -> tuple[str, str, str]:
    spec = importlib.util.spec_from_file_location("bench_dataloader", ROOT / "bench" / "bench_dataloader.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_corpora(folder, documents)


def batch_padding(iterator, num_batches: int, pad_id: int) -> tuple[int, int]:
    """(PAD tokens, all tokens) over ``num_batches`` micro-batches of ``iterator``."""
    pads = total = 0
    for _ in range(num_batches):
        tokens = next(iterator)["tokens"]
        pads += int((tokens == pad_id).sum())
        total += tokens.numel()
    return pads, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100, help="training steps read per setting")
    parser.add_argument("--seq-length", type=int, default=256, help="global positions per sample (the demo's)")
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--global-batch-size", type=int, default=8)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--windows", type=int, nargs="+", default=[0, 1, 4, 16],
                        help="bucketing windows in global batches (0: index order, no bucketing)")
    args = parser.parse_args()
    positions = args.seq_length + 1
    samples = args.steps * args.global_batch_size
    with tempfile.TemporaryDirectory() as folder:
        model, speech, text = build_corpora(Path(folder), args.documents)
        tokenizer = JointTokenizer.from_file(model)
        config = LSTDatasetConfig(random_seed=1, sequence_length=positions, split="1,0,0",
                                  blend=blend_from_data_path(["0.33", speech, "0.67", text]), vocab=tokenizer.vocab,
                                  interleave=InterleaveConfig(seed=1), patch_size=args.patch_size,
                                  max_tokens=positions * args.patch_size)
        train, _, _ = build_lst_datasets(config, [samples, 0, 0])
        patching = PatchingConfig(strategy="curriculum", patch_size=args.patch_size, tau1=args.steps / 3,
                                  tau2=2 * args.steps / 3, seed=1)
        collate = partial(collate_lst_samples, bos_id=tokenizer.bos_id, pad_id=tokenizer.pad_id, patching=patching,
                          vocab=tokenizer.vocab)
        num_batches = samples // args.micro_batch_size
        results = {}
        for window in args.windows:
            start = time.perf_counter()
            iterator = build_data_iterator(train, 0, args.micro_batch_size, 0, 1, args.global_batch_size,
                                           collate_fn=collate,
                                           sampling=SamplingOptions(attach_keys=True, bucket_window=window, seed=1))
            pads, total = batch_padding(iterator, num_batches, tokenizer.pad_id)
            results[window] = pads / total
            print(f"window {window:3d} global batches: padding {pads / total:6.1%} of {total:,} tokens "
                  f"({num_batches} micro-batches, {time.perf_counter() - start:.1f} s)")
    window = DEFAULT_BUCKET_WINDOW if DEFAULT_BUCKET_WINDOW in results else max(args.windows)
    print(f"LST padding fraction (demo blend): {results.get(0, float('nan')):.1%} in index order -> "
          f"{results[window]:.1%} bucketed (window {window})")


if __name__ == "__main__":
    main()
