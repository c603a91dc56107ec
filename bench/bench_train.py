#!/usr/bin/env python
"""Training throughput of LST vs the baseline at equal global size, on the same data, in one run.

For each flavour (``debug`` and the larger CPU ``demo``) both models train for the same number of
steps on one synthetic 33:67 speech-text/text blend with the same positions per step (patches for
LST, tokens for the baseline: the paper's compute-controlled setting). Printed per model: raw
tokens/s (text tokens + speech units actually consumed), FLOPs per raw token, and tokens per global
position. Steady state only: the first logging interval (warm-up) is dropped.

    .venv/bin/python bench/bench_train.py --steps 12
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


def train(folder: Path, model: str, flavour: str, tokenizer: str, speech: str, text: str, args) -> dict:
    log = folder / f"{model}-{flavour}.jsonl"
    interval = max(args.steps // 3, 1)
    subprocess.run(
        [sys.executable, str(ROOT / "pretrain_lst.py"), "--model", model, "--model-flavour", flavour,
         "--tokenizer-model", tokenizer, "--data-path", "0.33", speech, "0.67", text, "--split", "1,0,0",
         "--seq-length", str(args.seq_length), "--micro-batch-size", "4", "--global-batch-size", "4",
         "--train-iters", str(args.steps), "--log-interval", str(interval), "--eval-iters", "0",
         "--lr-warmup-iters", "1", "--patching", "static", "--log-json", str(log),
         "--data-cache-path", str(folder / "cache")],
        check=True, capture_output=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    steady = [r for r in rows if r["kind"] == "throughput"][1:]
    last = [r for r in rows if r["kind"] == "train"][-1]
    return {
        "tokens_per_s": sum(r["tokens_per_s"] for r in steady) / len(steady),
        "tokens_per_position": steady[-1]["tokens_per_position"],
        "flops_per_token": last["flops_so_far"] / last["tokens_so_far"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="training steps per run (3 logging intervals)")
    parser.add_argument("--seq-length", type=int, default=256, help="global positions per sample")
    parser.add_argument("--flavours", nargs="+", default=["debug", "demo"])
    parser.add_argument("--documents", type=int, default=400)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        tokenizer, speech, text = build_corpora(Path(folder), args.documents)
        for flavour in args.flavours:
            for model in ("baseline", "lst"):
                results[(flavour, model)] = train(Path(folder), model, flavour, tokenizer, speech, text, args)
    print(f"{'flavour':8} {'model':9} {'raw tokens/s':>13} {'FLOPs/token':>12} {'tokens/position':>16}")
    for (flavour, model), r in results.items():
        print(f"{flavour:8} {model:9} {r['tokens_per_s']:13.0f} {r['flops_per_token']:12.3e} {r['tokens_per_position']:16.2f}")
    for flavour in args.flavours:
        lst, base = results[(flavour, "lst")], results[(flavour, "baseline")]
        print(f"{flavour}: LST/baseline FLOPs per raw token {lst['flops_per_token'] / base['flops_per_token']:.2f}x")
    headline = args.flavours[-1]
    ratio = results[(headline, "lst")]["tokens_per_s"] / results[(headline, "baseline")]["tokens_per_s"]
    print(f"lst/baseline raw tokens/s ({headline}): {ratio:.2f}x")


if __name__ == "__main__":
    main()
