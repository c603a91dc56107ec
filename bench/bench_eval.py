"""Story-completion scoring speed: prompt-cached vs whole-sequence, LST and baseline, in one run.

Items have 4 endings (HellaSwag-like) and a StoryCloze-sized prompt: T->T with a ``--text-prompt``
token prompt and ``--text-ending`` token endings, S->S with ``--speech-prompt`` and
``--speech-ending`` units (25 Hz: a 4-sentence story is about 10 s, 250 units). Whole-sequence
scoring runs every ending's full sequence in batches of ``--batch-size`` (tools/evaluate.py
--no-prompt-cache); prompt-cached scoring reads each item's prompt once and its 4 endings in one
batched pass (evaluation/prompt_cache.py). Both go through ``score_direction``, so sequence
building and patching are timed too. Weights are random (speed does not depend on them) in the
``demo`` flavour's shape; the cached scores are checked against the whole-sequence ones.

The last line is the headline: items/s of prompt-cached over whole-sequence scoring, all four runs
(two models x two directions) together; each time is the fastest of ``--repeats`` runs.

    PYTHONPATH=. .venv/bin/python bench/bench_eval.py [--items 24] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_lst.evaluation.items import Item, Part
from megatron_lst.evaluation.model_scorer import (CheckpointScorer, baseline_logits,
                                                  patched_lst_logits)
from megatron_lst.evaluation.prompt_cache import prompt_cached_scorer
from megatron_lst.evaluation.scoring import DIRECTIONS, SequenceBuilder, score_direction
from megatron_lst.models.baseline import build_baseline_model, padded_vocab_size
from megatron_lst.models.config import model_flavour
from megatron_lst.models.lst import LSTModel, lst_transformer_configs
from megatron_lst.models.specs import transformer_config
from megatron_lst.patching import PatchingConfig
from megatron_lst.tokenizer import JointTokenizer, TextModel
from megatron_lst.training.checkpoint_loading import initialize_single_process
from megatron_lst.training.registry import model_spec


class WordIds(TextModel):
    """Text given as space-separated ids: the bench draws token ids, not words."""

    vocab_size = 1000

    def encode(self, text: str) -> list[int]:
        return [int(word) for word in text.split()]

    def decode(self, ids) -> str:
        return " ".join(str(i) for i in ids)

    def describe(self) -> dict:
        return {"type": "ids", "vocab_size": self.vocab_size}


def bench_items(count: int, args, seed: int = 0) -> list[Item]:
    rng = np.random.default_rng(seed)

    def part(words: int, units: int) -> Part:
        return Part(text=" ".join(str(w) for w in rng.integers(0, 1000, words)),
                    units=tuple(int(u) for u in rng.integers(0, 500, units)))

    def jitter(n: int) -> int:
        return max(1, int(n * rng.uniform(0.8, 1.2)))

    return [Item(f"i{n}", int(rng.integers(4)), part(jitter(args.text_prompt), jitter(args.speech_prompt)),
                 tuple(part(jitter(args.text_ending), jitter(args.speech_ending)) for _ in range(4)))
            for n in range(count)]


def build(family: str, tokenizer: JointTokenizer, patching: PatchingConfig):
    shape = model_flavour("demo")
    vocab = padded_vocab_size(tokenizer.vocab_size, 1)
    device = torch.device("cpu")
    patched = model_spec(family).patched
    if patched:
        model = LSTModel(shape, *lst_transformer_configs(shape), vocab_size=vocab).eval()
        whole = CheckpointScorer(patched_lst_logits(model, patching, tokenizer), model, tokenizer, device)
    else:
        model = build_baseline_model(shape, transformer_config(shape), vocab, max_sequence_length=8192,
                                     use_te=False).eval()
        whole = CheckpointScorer(baseline_logits(model), model, tokenizer, device)
    cached, why = prompt_cached_scorer(model, patched, tokenizer, device, patching if patched else None)
    if cached is None:
        raise SystemExit(f"{family}: {why}")
    return whole, cached


def timed(items, direction, builder, scorer, batch_size: int, repeats: int):
    """The fastest of ``repeats`` runs (the machine may be shared: the minimum is the least disturbed)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = score_direction(items, DIRECTIONS[direction], builder, scorer, batch_size)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=24, help="items per run (4 endings each)")
    parser.add_argument("--text-prompt", type=int, default=60, help="text prompt tokens (about 4 sentences)")
    parser.add_argument("--text-ending", type=int, default=14, help="text ending tokens")
    parser.add_argument("--speech-prompt", type=int, default=250, help="speech prompt units")
    parser.add_argument("--speech-ending", type=int, default=70, help="speech ending units")
    parser.add_argument("--batch-size", type=int, default=16, help="whole-sequence: sequences per forward pass")
    parser.add_argument("--patch-size", type=int, default=4, help="LST static patch size p")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the fastest counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    initialize_single_process(seed=0)
    tokenizer = JointTokenizer(WordIds(), num_units=500, spare_units=0)
    patching = PatchingConfig(strategy="static", patch_size=args.patch_size)
    builder = SequenceBuilder(tokenizer)
    items = bench_items(args.items, args)
    print(f"demo flavour, random weights, {args.items} items x 4 endings, {args.threads} thread(s), "
          f"p = {args.patch_size}, whole-sequence batch {args.batch_size}")
    print(f"{'model':9s} {'dir':5s} {'whole items/s':>14s} {'cached items/s':>15s} {'ratio':>6s} {'max |diff|':>11s}")
    totals = {"whole": 0.0, "cached": 0.0}
    runs = 0
    for family in ("lst", "baseline"):
        whole, cached = build(family, tokenizer, patching)
        for direction in ("tt", "ss"):
            for scorer in (whole, cached):  # warm-up
                score_direction(items[:4], DIRECTIONS[direction], builder, scorer, args.batch_size)
            whole_seconds, by_whole = timed(items, direction, builder, whole, args.batch_size, args.repeats)
            cached_seconds, by_cache = timed(items, direction, builder, cached, args.batch_size, args.repeats)
            difference = max(float(np.max(np.abs(np.subtract(a["scores"]["sum"], b["scores"]["sum"]))))
                             for a, b in zip(by_cache.per_item, by_whole.per_item))
            totals["whole"] += whole_seconds
            totals["cached"] += cached_seconds
            runs += 1
            print(f"{family:9s} {DIRECTIONS[direction].label:5s} {len(items) / whole_seconds:14.1f} "
                  f"{len(items) / cached_seconds:15.1f} {whole_seconds / cached_seconds:5.2f}x {difference:11.2e}")
    rate_whole = runs * len(items) / totals["whole"]
    rate_cached = runs * len(items) / totals["cached"]
    print(f"prompt-cached/whole-sequence items/s: {rate_cached / rate_whole:.2f} x")


if __name__ == "__main__":
    main()
