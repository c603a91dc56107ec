#!/usr/bin/env python
"""Packing-plan build time and per-sample read time of the input pipeline at 1k and 100k documents.

Preprocesses a synthetic aligned-speech corpus and a text corpus of ``--documents`` documents each,
builds the 100x larger corpora by writing their documents 100 times over (``--scale``; preprocessing
100k documents would take minutes, and repeating keeps the length distribution, so only the corpus
size differs), and for each size blends speech 33 : text 67 as in the paper and measures

- plan building: the first construction on an empty ``path_to_cache`` (cold: every epoch's packing
  plans and the blend index are built and written), and its share spent in the packing plans;
- loading: a second construction (warm: the plans are memory-mapped from the cache);
- reading: ms per sample through a torch DataLoader (worker start-up included), same samples count.

It ends with ``per-sample time 100k/1k documents: R x`` (the data pipeline's time per sample must
not grow with the corpus). ``--compare-training`` also trains the ``debug`` LST on the small blend
with pretrain_lst.py and compares its samples/s with the pipeline's.

    .venv/bin/python bench/bench_dataloader.py --documents 1000 --scale 100 --samples 400
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from megatron.core.datasets.indexed_dataset import IndexedDataset  # noqa: E402

from megatron_lst.data.blending import blend_from_data_path, build_lst_datasets  # noqa: E402
from megatron_lst.data.datasets import LSTDatasetConfig, PackedLSTDataset  # noqa: E402
from megatron_lst.data.indexed_writer import IndexedWriter  # noqa: E402
from megatron_lst.data.sampler import collate_packed  # noqa: E402
from megatron_lst.data.speech_layout import metadata_path  # noqa: E402
from megatron_lst.data.synthetic import random_aligned_records, random_sentence  # noqa: E402
from megatron_lst.tokenizer import JointTokenizer, train_sentencepiece  # noqa: E402


def build_corpora(folder: Path, documents: int, max_words: int = 200) -> tuple[str, str, str]:
    """Tokenizer model, speech-text prefix and text prefix of ``documents`` preprocessed documents each.

    Other benches and tests build their corpora here too (with the default ``max_words``).
    """
    spec = importlib.util.spec_from_file_location("preprocess_data", ROOT / "tools" / "preprocess_data.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rng = random.Random(0)
    sentences = [random_sentence(rng, rng.randint(5, 200)) for _ in range(documents)]
    model = str(train_sentencepiece(sentences, folder / "spm", vocab_size=120))
    (folder / "text.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences))
    records = random_aligned_records(documents, seed=1, max_words=max_words)
    (folder / "speech.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for name, prefix in (("speech", "sp"), ("text", "tx")):
        tool.main(["--input", str(folder / f"{name}.jsonl"), "--output-prefix", str(folder / prefix),
                   "--tokenizer-model", model, "--quiet"])
    return model, str(folder / "sp_speech_document"), str(folder / "tx_text_document")


def repeat_corpus(prefix: str, output: str, times: int, vocab_size: int) -> str:
    """``prefix``'s documents ``times`` times over, as one indexed dataset (metadata copied)."""
    multimodal = os.path.exists(metadata_path(prefix))
    source = IndexedDataset(prefix, multimodal=multimodal)
    ids = np.memmap(prefix + ".bin", dtype=source.index.dtype, mode="r")
    lengths = np.asarray(source.sequence_lengths, dtype=np.int64)
    per_document = np.diff(np.asarray(source.document_indices, dtype=np.int64))
    modes = np.asarray(source.index.sequence_modes, dtype=np.int8) if multimodal else None
    writer = IndexedWriter(output, vocab_size, multimodal=multimodal)
    for _ in range(times):
        writer.add_documents(np.asarray(ids, dtype=np.int64), lengths, per_document, modes)
    writer.finalize()
    writer.commit()
    if multimodal:
        shutil.copyfile(metadata_path(prefix), metadata_path(output))
    if IndexedDataset(output, multimodal=multimodal).index.dtype != source.index.dtype:
        raise RuntimeError(f"{output}: written with another dtype than {prefix}")
    return output


def blend_config(speech: str, text: str, args, vocab, cache: Path) -> LSTDatasetConfig:
    return LSTDatasetConfig(random_seed=1, sequence_length=args.seq_length, split="1,0,0",
                            blend=blend_from_data_path(["0.33", speech, "0.67", text]),
                            vocab=vocab, path_to_cache=str(cache), plan_workers=args.plan_workers)


def plan_seconds(dataset) -> list[float]:
    """Seconds each of the blend's ``PackedLSTDataset``s spent building its packing plans (0: loaded)."""
    members = dataset.datasets if hasattr(dataset, "datasets") else [dataset]
    return [member.plan_build_seconds or 0.0 for member in members if isinstance(member, PackedLSTDataset)]


def build(speech: str, text: str, args, tokenizer: JointTokenizer, cache: Path) -> dict:
    """A cold construction (plans and blend index built and written), then a warm one (loaded)."""
    config = blend_config(speech, text, args, tokenizer.vocab, cache)
    start = time.perf_counter()
    cold, _, _ = build_lst_datasets(config, [args.samples, 0, 0])
    cold_seconds = time.perf_counter() - start
    start = time.perf_counter()
    warm, _, _ = build_lst_datasets(config, [args.samples, 0, 0])
    warm_seconds = time.perf_counter() - start
    if any(plan_seconds(warm)):
        raise RuntimeError("the second construction rebuilt its plans instead of loading them")
    return {"cold": cold_seconds, "plans": plan_seconds(cold), "warm": warm_seconds, "dataset": warm,
            "epochs": [len(member.epoch_sizes) for member in cold.datasets], "pad_to": config.packing.max_tokens,
            "reads": []}


def read(dataset, args, tokenizer: JointTokenizer, pad_to: int) -> tuple[float, int, int]:
    """Seconds to read every sample through a fresh DataLoader (worker start-up included)."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=torch.utils.data.BatchSampler(range(len(dataset)), args.micro_batch_size, drop_last=True),
        num_workers=args.num_workers, collate_fn=partial(collate_packed, pad_id=tokenizer.pad_id, pad_to=pad_to),
    )
    start = time.perf_counter()
    samples = tokens = 0
    for batch in loader:
        samples += batch["tokens"].shape[0]
        tokens += int(batch["num_tokens"].sum())
    return time.perf_counter() - start, samples, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=1000, help="documents per corpus (speech and text)")
    parser.add_argument("--scale", type=int, default=100, help="the large corpora repeat the small ones this often")
    parser.add_argument("--max-words", type=int, default=60, help="words per speech document at most")
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--seq-length", type=int, default=1024, help="global positions per sample")
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=1, help="DataLoader workers")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the samples per size (median)")
    parser.add_argument("--plan-workers", type=int, default=0,
                        help="processes drawing interleaving spans for a large corpus (0: the CPUs available)")
    parser.add_argument("--compare-training", action="store_true",
                        help="also time the debug LST training on the small blend (slow)")
    parser.add_argument("--train-steps", type=int, default=6, help="debug-model steps timed for the comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        start = time.perf_counter()
        model, speech, text = build_corpora(folder, args.documents, args.max_words)
        preprocess_seconds = time.perf_counter() - start
        tokenizer = JointTokenizer.from_file(model)
        # megatron-core's BlendedDataset writes its index cache on rank 0: one process, as training runs
        torch.distributed.init_process_group("gloo", init_method=f"file://{folder / 'process_group'}",
                                             rank=0, world_size=1)
        start = time.perf_counter()
        large = args.documents * args.scale
        vocab_size = tokenizer.vocab.vocab_size
        big_speech = repeat_corpus(speech, str(folder / "big_speech_document"), args.scale, vocab_size)
        big_text = repeat_corpus(text, str(folder / "big_text_document"), args.scale, vocab_size)
        repeat_seconds = time.perf_counter() - start
        print(f"corpora: {args.documents:,} speech-text (up to {args.max_words} words) + {args.documents:,} text "
              f"documents preprocessed in {preprocess_seconds:.1f} s; the {large:,}-document corpora repeat them "
              f"{args.scale} times ({repeat_seconds:.1f} s): same length distribution, while order and "
              f"interleaving are drawn per document id", flush=True)
        results = {args.documents: build(speech, text, args, tokenizer, folder / "cache_small"),
                   large: build(big_speech, big_text, args, tokenizer, folder / "cache_large")}
        for _ in range(args.repeats):  # alternate the sizes, so that load on the machine hits both alike
            for result in results.values():
                result["reads"].append(read(result["dataset"], args, tokenizer, result["pad_to"]))
        for documents, result in results.items():
            seconds = sorted(run[0] for run in result["reads"])
            _, samples, tokens = result["reads"][0]
            result["per_sample"] = seconds[len(seconds) // 2] / samples
            (speech_plans, text_plans), (speech_epochs, text_epochs) = result["plans"], result["epochs"]
            print(f"{documents:,} documents: plan build (cold) {result['cold']:.2f} s, of which packing plans "
                  f"speech {speech_plans:.2f} s (epochs: {speech_epochs}), text {text_plans:.2f} s (epochs: {text_epochs}); "
                  f"load (warm) {result['warm']:.3f} s; {samples} samples ({tokens:,} tokens) through a DataLoader "
                  f"with {args.num_workers} worker(s): {result['per_sample'] * 1e3:.2f} ms per sample (median of "
                  f"{len(seconds)}: {', '.join(f'{s / samples * 1e3:.2f}' for s in seconds)})", flush=True)
        if args.compare_training:
            training_samples_per_s = debug_training_rate(folder, model, speech, text, args)
            loader_samples_per_s = 1.0 / results[args.documents]["per_sample"]
            print(f"data pipeline / debug LST training samples/s: "
                  f"{loader_samples_per_s:.1f} / {training_samples_per_s:.1f} = "
                  f"{loader_samples_per_s / training_samples_per_s:.1f}x")
        torch.distributed.destroy_process_group()
    ratio = results[large]["per_sample"] / results[args.documents]["per_sample"]
    print(f"per-sample time {_short(large)}/{_short(args.documents)} documents: {ratio:.2f} x")


def _short(count: int) -> str:
    return f"{count // 1000}k" if count % 1000 == 0 else str(count)


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
