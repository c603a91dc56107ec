#!/usr/bin/env python
"""Training throughput of LST vs the baseline at equal global size, on the same data, in one run.

For each flavour and data setting both models train with ``pretrain_lst.py`` for the same number
of steps at the same positions per step (patches for LST, tokens for the baseline: the paper's
compute-controlled setting), on synthetic aligned speech and text corpora:

- ``speech``: speech-only documents (``--data-mode speech``: every position of the baseline is a
  unit; LST packs about ``p`` units per position);
- ``mix``: the paper's mix, 33% interleaved speech-text and 67% text *by tokens*: the blend's
  sample weights are corrected for each dataset's measured tokens per sample and model.

Printed per run: raw tokens/s (text tokens + speech units consumed), training FLOPs per raw token
(what ``models/flops.py`` counts, the kernels' own work) and the achieved FLOP/s; per setting the
measured LST/baseline speed, the speed its FLOPs predict, and their quotient (1.0 = LST runs as
efficiently per FLOP as the baseline). Steady state only: the first logging interval (warm-up)
is dropped. ``1b-mini`` has the 1b's layer counts and 2:1 global:local widths at CPU scale.

    .venv/bin/python bench/bench_train.py                       # 1b-mini, speech and mix
    .venv/bin/python bench/bench_train.py --flavours demo --seq-length 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_dataloader import build_corpora  # noqa: E402

INTERLEAVED_TOKEN_SHARE = 0.33  # the paper's mix: 33% interleaved speech-text tokens, 67% text


def mean_tokens_per_sample(prefix: str, tokenizer: str, model: str, seq_length: int, data_mode: str,
                           samples: int = 48) -> float:
    """Raw tokens a packed sample of ``prefix`` holds for ``model`` (LST packs up to p per position)."""
    from megatron_lst.data.blending import build_lst_datasets
    from megatron_lst.data.datasets import LSTDatasetConfig
    from megatron_lst.data.speech_documents import is_speech_text_dataset
    from megatron_lst.tokenizer import JointTokenizer
    from megatron_lst.training.data_modes import interleave_config
    from megatron_lst.training.registry import model_spec

    if not model_spec(model).patched or not is_speech_text_dataset(prefix):
        return float(seq_length + 1)  # one token per position (GPTDataset rows, baseline packing)
    vocab = JointTokenizer.from_file(tokenizer).vocab
    config = LSTDatasetConfig(random_seed=1, sequence_length=seq_length + 1, blend=([prefix], None), split="1,0,0",
                              vocab=vocab, interleave=interleave_config(data_mode, 1), patch_size=4,
                              max_tokens=4 * (seq_length + 1))
    dataset = build_lst_datasets(config, [samples, 0, 0])[0]
    return sum(len(dataset[i]["tokens"]) for i in range(samples)) / samples


def blend(model: str, setting: str, speech: str, text: str, tokenizer: str, seq_length: int) -> list[str]:
    """``--data-mode``/``--data-path`` arguments of one data setting for one model."""
    if setting == "speech":
        return ["--data-mode", "speech", "--data-path", speech]
    per_sample = [mean_tokens_per_sample(prefix, tokenizer, model, seq_length, "interleaved") for prefix in (speech, text)]
    weights = [INTERLEAVED_TOKEN_SHARE / per_sample[0], (1 - INTERLEAVED_TOKEN_SHARE) / per_sample[1]]
    weights = [w / sum(weights) for w in weights]
    return ["--data-mode", "interleaved", "--data-path", f"{weights[0]:.6f}", speech, f"{weights[1]:.6f}", text]


def train(folder: Path, model: str, flavour: str, tokenizer: str, data_args: list[str], name: str, args) -> dict:
    log = folder / f"{name}.jsonl"
    interval = max(args.steps // 3, 1)
    subprocess.run(
        [sys.executable, str(ROOT / "pretrain_lst.py"), "--model", model, "--model-flavour", flavour,
         "--tokenizer-model", tokenizer, *data_args, "--split", "1,0,0",
         "--seq-length", str(args.seq_length), "--micro-batch-size", str(args.micro_batch_size),
         "--global-batch-size", str(args.micro_batch_size),
         "--train-iters", str(args.steps), "--log-interval", str(interval), "--eval-iters", "0",
         "--lr-warmup-iters", "1", "--patching", "static", "--log-json", str(log),
         "--data-cache-path", str(folder / "cache")],
        check=True, capture_output=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    steady = [r for r in rows if r["kind"] == "throughput"][1:]
    last = [r for r in rows if r["kind"] == "train"][-1]
    tokens_per_s = sum(r["tokens_per_s"] for r in steady) / len(steady)
    flops_per_token = last["flops_so_far"] / last["tokens_so_far"]
    return {"tokens_per_s": tokens_per_s, "tokens_per_position": steady[-1]["tokens_per_position"],
            "flops_per_token": flops_per_token, "gflops_per_s": tokens_per_s * flops_per_token / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="training steps per run (3 logging intervals)")
    parser.add_argument("--seq-length", type=int, default=2048,
                        help="global positions per sample (the paper trains on 4,096)")
    parser.add_argument("--micro-batch-size", type=int, default=1)
    parser.add_argument("--flavours", nargs="+", default=["1b-mini"])
    parser.add_argument("--settings", nargs="+", default=["mix", "speech"], choices=["speech", "mix"])
    parser.add_argument("--documents", type=int, default=400)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        tokenizer, speech, text = build_corpora(Path(folder), args.documents)
        for flavour in args.flavours:
            for setting in args.settings:
                for model in ("baseline", "lst"):
                    data_args = blend(model, setting, speech, text, tokenizer, args.seq_length)
                    results[(flavour, setting, model)] = train(
                        Path(folder), model, flavour, tokenizer, data_args, f"{model}-{flavour}-{setting}", args)
    print(f"{'flavour':8} {'setting':7} {'model':9} {'raw tokens/s':>13} {'FLOPs/token':>12} {'GFLOP/s':>8} "
          f"{'tokens/position':>16}")
    for (flavour, setting, model), r in results.items():
        print(f"{flavour:8} {setting:7} {model:9} {r['tokens_per_s']:13.0f} {r['flops_per_token']:12.3e} "
              f"{r['gflops_per_s']:8.1f} {r['tokens_per_position']:16.2f}")
    lines = []
    for flavour in args.flavours:
        for setting in args.settings:
            lst, base = results[(flavour, setting, "lst")], results[(flavour, setting, "baseline")]
            measured = lst["tokens_per_s"] / base["tokens_per_s"]
            predicted = base["flops_per_token"] / lst["flops_per_token"]
            print(f"{flavour}, {setting}: LST/baseline FLOPs per raw token {1 / predicted:.2f}x; tokens/s predicted by "
                  f"FLOPs {predicted:.2f}x, measured {measured:.2f}x; measured/predicted {measured / predicted:.2f} "
                  f"(achieved FLOP/s LST {lst['gflops_per_s']:.1f} G, baseline {base['gflops_per_s']:.1f} G)")
            lines.append(f"lst/baseline raw tokens/s ({flavour}, {setting}): {measured:.2f}x")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
