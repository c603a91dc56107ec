"""Speech units generated per second: LST vs the baseline at the same global size, with and
without KV caches, in one run.

Both models share the global transformer's shape (a flavour name fixes it); the LST steps its
global model once per ``--patch-size`` units, the baseline once per unit. Each generation starts
from ``BOS <s>`` in ``--batch`` rows and produces exactly ``--units`` speech units per row
(greedy, no early stop; weights are random: speed does not depend on them). Uncached runs
re-run the full forward pass on the prefix at every step (what BLT's generation does).

Flavours: ``debug`` (models/config.py) and ``cpu-large``, a CPU-sized model whose global
transformer dominates the local modules, as at real scale (1b: 25 x 2048 global vs 10 x 1024 local).
The last line is the headline: LST over baseline units/s with caches on the largest flavour.

    PYTHONPATH=. .venv/bin/python bench/bench_generate.py [--units 512] [--batch 4] [--patch-size 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_lst.inference.baseline_stepper import BaselineStepper
from megatron_lst.inference.generate import GenerationConfig, generate
from megatron_lst.inference.lst_stepper import LSTStepper
from megatron_lst.inference.uncached import UncachedBaselineStepper, UncachedLSTStepper
from megatron_lst.models.baseline import build_baseline_model, padded_vocab_size
from megatron_lst.models.config import ModelConfig, model_flavour
from megatron_lst.models.lst import LSTModel, lst_transformer_configs
from megatron_lst.models.specs import transformer_config
from megatron_lst.training.checkpoint_loading import initialize_single_process
from megatron_lst.training.registry import model_spec
from megatron_lst.tokenizer import VocabLayout

LAYOUT = VocabLayout(text_vocab_size=1000)
FLAVOURS = {
    "debug": model_flavour("debug"),
    "cpu-large": ModelConfig(
        num_layers=12, hidden_size=768, num_attention_heads=12,
        encoder_num_layers=1, encoder_hidden_size=256, encoder_num_attention_heads=4,
        decoder_num_layers=1, decoder_hidden_size=256, decoder_num_attention_heads=4,
        local_window_size=512,
    ),
}


def build_models(shape: ModelConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    vocab = padded_vocab_size(LAYOUT.vocab_size, 1)
    lst = LSTModel(shape, *lst_transformer_configs(shape), vocab_size=vocab)
    baseline = build_baseline_model(shape, transformer_config(shape), vocab, max_sequence_length=8192, use_te=False)
    return lst.eval(), baseline.eval()


def units_per_second(stepper, batch: int, units: int, patch_size: int) -> tuple[float, int]:
    config = GenerationConfig(max_units=units, stop_on_eos=False, stop_on_modality_switch=False)
    prompts = [[LAYOUT.bos_id, LAYOUT.speech_marker_id]] * batch
    result = generate(stepper, prompts, LAYOUT, patch_size, config)
    assert all(len(row) == units for row in result.tokens)
    return batch * units / result.seconds, result.generated_global_positions[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=512, help="speech units generated per row")
    parser.add_argument("--batch", type=int, default=4, help="rows generated together")
    parser.add_argument("--patch-size", type=int, default=4, help="LST static patch size p")
    parser.add_argument("--flavours", default="debug,cpu-large", help="comma-separated model shapes")
    parser.add_argument("--uncached-flavours", default="debug",
                        help="flavours also timed without caches (slow: quadratic in --units)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (decoding multiplies small matrices: 1 is fastest on a busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    initialize_single_process(seed=0)
    flavours = args.flavours.split(",")
    print(f"{args.units} units x {args.batch} rows, p = {args.patch_size}, {args.threads} thread(s)")
    print(f"{'flavour':10s} {'model':9s} {'cache':6s} {'units/s':>9s} {'global steps/row':>17s}")
    headline = {}
    for name in flavours:
        lst, baseline = build_models(FLAVOURS[name])
        runs = [("lst", "yes", LSTStepper(lst)), ("baseline", "yes", BaselineStepper(baseline))]
        if name in args.uncached_flavours.split(","):
            runs += [("lst", "no", UncachedLSTStepper(lst)), ("baseline", "no", UncachedBaselineStepper(baseline))]
        rates = {}
        for model, cache, stepper in runs:
            patch_size = model_spec(model).units_per_step(args.patch_size)
            rate, global_steps = units_per_second(stepper, args.batch, args.units, patch_size)
            rates[model, cache] = rate
            print(f"{name:10s} {model:9s} {cache:6s} {rate:9.1f} {global_steps:17d}")
        print(f"{name:10s} LST/baseline (cached): {rates['lst', 'yes'] / rates['baseline', 'yes']:.2f}x")
        for model in ("lst", "baseline"):
            if (model, "no") in rates:
                print(f"{name:10s} {model} cached/uncached: {rates[model, 'yes'] / rates[model, 'no']:.2f}x")
        headline = (name, rates["lst", "yes"] / rates["baseline", "yes"])
    print(f"LST/baseline speech units/s with KV caches ({headline[0]}, {args.units} units, p = {args.patch_size}): "
          f"{headline[1]:.2f}x")


if __name__ == "__main__":
    main()
