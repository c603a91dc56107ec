#!/usr/bin/env python
"""Samples per second of the speech-text input pipeline (interleave + pack + collate).

Builds a synthetic aligned corpus, blends it 33:67 with a text corpus as in the paper, times a
torch DataLoader over the packed dataset, then trains the ``debug`` LST on the same data with
pretrain_lst.py and compares the two rates: the loader must never be the bottleneck.

    .venv/bin/python bench/bench_dataloader.py --samples 400 --num-workers 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_lst.data.blending import blend_from_data_path, build_lst_datasets  # noqa: E402
from megatron_lst.data.datasets import LSTDatasetConfig  # noqa: E402
from megatron_lst.data.sampler import ResumableBatchSampler, collate_packed  # noqa: E402
from megatron_lst.data.synthetic import random_aligned_records, random_sentence  # noqa: E402
from megatron_lst.tokenizer import JointTokenizer, train_sentencepiece  # noqa: E402


def build_corpora(folder: Path, documents: int) -> tuple[str, str, str]:
    spec = importlib.util.spec_from_file_location("preprocess_data", ROOT / "tools" / "preprocess_data.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rng = random.Random(0)
    sentences = [random_sentence(rng, rng.randint(5, 200)) for _ in range(documents)]
    model = str(train_sentencepiece(sentences, folder / "spm", vocab_size=120))
    (folder / "text.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences))
    records = random_aligned_records(documents, seed=1, max_words=200)
    (folder / "speech.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for name, prefix in (("speech", "sp"), ("text", "tx")):
        tool.main(["--input", str(folder / f"{name}.jsonl"), "--output-prefix", str(folder / prefix),
                   "--tokenizer-model", model, "--quiet"])
    return model, str(folder / "sp_speech_document"), str(folder / "tx_text_document")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--seq-length", type=int, default=1024, help="global positions per sample")
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=6, help="debug-model steps timed for the comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model, speech, text = build_corpora(Path(folder), args.documents)
        tokenizer = JointTokenizer.from_file(model)
        config = LSTDatasetConfig(random_seed=1, sequence_length=args.seq_length, split="1,0,0",
                                  blend=blend_from_data_path(["0.33", speech, "0.67", text]),
                                  vocab=tokenizer.vocab)
        start = time.perf_counter()
        train, _, _ = build_lst_datasets(config, [args.samples, 0, 0])
        build_seconds = time.perf_counter() - start
        loader = torch.utils.data.DataLoader(
            train, batch_sampler=ResumableBatchSampler(len(train), args.micro_batch_size),
            num_workers=args.num_workers,
            collate_fn=partial(collate_packed, pad_id=tokenizer.pad_id, pad_to=config.packing.max_tokens),
        )
        start = time.perf_counter()
        samples = tokens = 0
        for batch in loader:
            samples += batch["tokens"].shape[0]
            tokens += int(batch["num_tokens"].sum())
        seconds = time.perf_counter() - start
        training_samples_per_s = debug_training_rate(Path(folder), model, speech, text, args)
    loader_samples_per_s = samples / seconds
    print(f"dataset build (plans, blend index): {build_seconds:.2f} s")
    print(f"{samples} samples, {tokens} tokens in {seconds:.2f} s with {args.num_workers} workers")
    print(f"per-sample: {seconds / samples * 1e3:.2f} ms; tokens/s: {tokens / seconds:,.0f}")
    print(f"data pipeline: {loader_samples_per_s:.1f} samples/s; debug LST training consumes "
          f"{training_samples_per_s:.1f} samples/s")
    print(f"data pipeline / debug LST training samples/s: {loader_samples_per_s / training_samples_per_s:.1f}x")


def debug_training_rate(folder: Path, model: str, speech: str, text: str, args) -> float:
    """Samples/s that the debug LST consumes in training on the same blend (steady-state steps)."""
    log = folder / "train.jsonl"
    batch = args.micro_batch_size
    subprocess.run(
        [sys.executable, str(ROOT / "pretrain_lst.py"), "--model", "lst", "--model-flavour", "debug",
         "--tokenizer-model", model, "--data-path", "0.33", speech, "0.67", text, "--split", "1,0,0",
         "--seq-length", str(args.seq_length), "--micro-batch-size", str(batch), "--global-batch-size", str(batch),
         "--train-iters", str(args.train_steps), "--log-interval", str(args.train_steps // 2), "--eval-iters", "0",
         "--lr-warmup-iters", "1", "--log-json", str(log), "--data-cache-path", str(folder / "cache")],
        check=True, capture_output=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    last_interval = [r for r in rows if r["kind"] == "throughput"][-1]  # the first interval includes warm-up
    return batch / (last_interval["ms_per_step"] / 1000)


if __name__ == "__main__":
    main()
