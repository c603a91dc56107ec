#!/usr/bin/env python
"""Tokens/s, TFLOP/s and MFU of the 1b flavour on one GPU: the global model alone vs the whole LST.

Both models are trained by this project's own ``Trainer`` (megatron-core DDP, the megatron
optimizer, ``train_step``: forward + backward + optimizer), bf16, with the transformer-engine spec
when it imports. Data is synthetic, so no corpus is needed: random token ids on rows whose layout
(BOS, then ``<s>``-led speech spans and ``<t>``-led text spans) is patched once with the static
strategy (p = 4) by ``megatron_lst.patching.compute_patches``. Every row holds ``--seq-length``
global positions: tokens for the global model (the baseline ``GPTModel`` of the same global shape),
patches for the LST (about p times as many tokens on speech).

FLOPs are the ones training logs (``megatron_lst/models/flops.py`` through the tasks), so MFU here
and in training logs agree; peak bf16 dense FLOP/s comes from a small table by GPU name
(``--peak-tflops`` overrides). The micro-batch is sized to fit: one step at 1 and 2 samples measures
the memory per sample, the largest micro-batch under ``--memory-fraction`` of the GPU is used
(halved on an out-of-memory error). A few warm-up steps, then timed steps.

GPU only: on a machine without CUDA it exits with status 2 and says why.

    python bench/bench_mfu.py [--flavour 1b] [--seq-length 4096] [--steps 10] [--peak-tflops 989.4]

Flags it does not know are passed to the training configuration (``pretrain_lst.py --help``), e.g.
``--recompute-granularity selective``. The last line is the headline: ``lst/global-model MFU: R x``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")  # megatron-core's rule; read at CUDA start-up

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from megatron_lst.patching import PatchingConfig, compute_patches  # noqa: E402
from megatron_lst.tokenizer import DEFAULT_NUM_UNITS, JointTokenizer, VocabLayout  # noqa: E402
from megatron_lst.training.registry import model_spec  # noqa: E402

# bf16 dense tensor-core peak per GPU, from NVIDIA's data sheets (first match of the device name wins)
PEAK_BF16_FLOPS = (
    ("H200", 989.4e12),
    ("H100 PCIE", 756.0e12),
    ("H100 NVL", 835.0e12),
    ("H100", 989.4e12),  # SXM (the device name is e.g. "NVIDIA H100 80GB HBM3")
    ("GH200", 989.4e12),
    ("A100", 312.0e12),
)
MODELS = ("baseline", "lst")
LABELS = {"baseline": "global model", "lst": "lst"}


def peak_flops(device_name: str, override_tflops: Optional[float]) -> tuple[Optional[float], str]:
    """(peak bf16 FLOP/s, where it came from) for ``device_name``; None when unknown and not given."""
    if override_tflops is not None:
        return override_tflops * 1e12, "--peak-tflops"
    upper = device_name.upper()
    for key, value in PEAK_BF16_FLOPS:
        if key in upper:
            return value, f"table ({key})"
    return None, "unknown GPU: pass --peak-tflops for MFU"


class SizeOnlyTextModel:
    """A text vocabulary of a given size whose ids are drawn at random: the benchmark never tokenizes."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        raise RuntimeError("bench_mfu draws token ids at random; it has no text tokenizer")


# ------------------------------------------------------------------------------------ synthetic rows
def row_layout(rng: np.random.Generator, layout: VocabLayout, length: int, speech_share: float) -> tuple:
    """(tokens, is_speech) of one row: BOS, then alternating ``<t>`` text and ``<s>`` speech spans.

    ``speech_share`` is the fraction of span tokens that are speech units (1.0: one speech span).
    """
    tokens, speech = [layout.bos_id], [False]
    text_turn = speech_share == 0.0 or (speech_share < 1.0 and rng.random() < 0.5)
    while len(tokens) < length:
        if text_turn:
            run = int(rng.integers(10, 61))
            tokens += [layout.text_marker_id, *rng.integers(0, layout.text_vocab_size, run).tolist()]
            speech += [False] * (run + 1)
        else:
            if speech_share >= 1.0:
                run = length
            else:
                run = max(1, int(round(rng.integers(10, 61) * speech_share / max(1.0 - speech_share, 1e-6))))
            units = layout.unit_offset + rng.integers(0, layout.num_units, run)
            tokens += [layout.speech_marker_id, *units.tolist()]
            speech += [False] + [True] * run
        if speech_share > 0.0:
            text_turn = not text_turn
    return np.asarray(tokens[:length], dtype=np.int64), np.asarray(speech[:length], dtype=bool)


def lst_rows(layout: VocabLayout, batch_size: int, positions: int, patch_size: int, speech_share: float,
             seed: int = 0) -> dict:
    """A micro-batch of ``batch_size`` rows patched into exactly ``positions`` patches each.

    All rows share one speech/text layout (so static patches agree and no row is padded) and draw
    their own token ids. ``tokens`` holds the N + 1 tokens of a training sample (inputs plus the last
    target); ``patch_lengths`` patches them, as the LST task expects.
    """
    rng = np.random.default_rng(seed)
    config = PatchingConfig(strategy="static", patch_size=patch_size)
    tokens, speech = row_layout(rng, layout, positions * patch_size + 2 * patch_size + 8, speech_share)
    lengths = compute_patches(tokens, speech, config, layout).patch_lengths
    if len(lengths) < positions:
        raise ValueError(f"a row of {len(tokens)} tokens gives only {len(lengths)} patches (< {positions})")
    length = int(np.sum(lengths[:positions]))  # cut at a patch boundary: the first `positions` patches stay
    speech = speech[:length]
    rows = np.repeat(tokens[None, :length], batch_size, axis=0)
    rows[:, 1:] = np.where(speech[1:], layout.unit_offset + rng.integers(0, layout.num_units, (batch_size, length - 1)),
                           rows[:, 1:])
    text = ~speech & (tokens[:length] < layout.text_vocab_size)
    rows[:, text] = rng.integers(0, layout.text_vocab_size, (batch_size, int(text.sum())))
    is_speech = np.repeat(speech[None], batch_size, axis=0)
    patch_lengths = compute_patches(rows, is_speech, config, layout).patch_lengths
    if patch_lengths.shape[1] != positions or not (patch_lengths == patch_lengths[:1]).all():
        raise AssertionError(f"expected {positions} equal static patches per row, got {patch_lengths.shape}")
    return {"tokens": torch.from_numpy(rows), "is_speech": torch.from_numpy(is_speech),
            "patch_lengths": torch.from_numpy(np.ascontiguousarray(patch_lengths)).long()}


def baseline_rows(layout: VocabLayout, batch_size: int, positions: int, seed: int = 0) -> dict:
    """A micro-batch for the baseline task: ``positions`` random tokens per row, one document each."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, layout.vocab_size, (batch_size, positions + 1), generator=generator)
    return {
        "tokens": tokens[:, :-1].contiguous(),
        "labels": tokens[:, 1:].contiguous(),
        "loss_mask": torch.ones(batch_size, positions),
        "position_ids": torch.arange(positions).expand(batch_size, -1).contiguous(),
    }


# ------------------------------------------------------------------------------------ the trainer
def training_config(model: str, args: argparse.Namespace, bf16: bool, use_te: bool, extra: list[str]):
    """The Config a ``pretrain_lst.py`` run of this benchmark would parse."""
    from megatron_lst.training.arguments import parse_args

    flags = ["--model", model, "--model-flavour", args.flavour, "--seq-length", str(args.seq_length),
             "--micro-batch-size", "1", "--global-batch-size", str(args.micro_batches),
             "--train-iters", "1000000", "--lr-warmup-iters", "100", "--eval-iters", "0",
             "--log-interval", "1000000", "--patching", "static", "--patch-size", str(args.patch_size),
             "--num-units", str(DEFAULT_NUM_UNITS),
             "--transformer-impl", "transformer_engine" if use_te else "local"]
    if bf16:
        flags.append("--bf16")
    return parse_args([*flags, *extra])


def build_trainer(model: str, config, tokenizer: JointTokenizer):
    """The project's Trainer for ``model`` (DDP, megatron optimizer, scheduler), fed by ``feed``."""
    from megatron_lst.training.loop import Trainer
    from megatron_lst.training.task import TaskData

    class SyntheticTrainer(Trainer):
        """``Trainer`` with its data replaced by one synthetic micro-batch repeated."""

        def _build_data(self) -> None:
            self.data = TaskData(train=None, valid=None)
            self.train_iterator = iter(())

        def feed(self, batch: dict, micro_batch_size: int) -> None:
            self.config.data.micro_batch_size = micro_batch_size
            self.config.data.global_batch_size = micro_batch_size * self.num_microbatches
            self.train_iterator = itertools.repeat(batch)

    return SyntheticTrainer(config, lambda cfg: model_spec(model).build_task(cfg, tokenizer))


@dataclass
class Measurement:
    model: str
    micro_batch_size: int = 0
    step_seconds: float = 0.0
    tokens: float = 0.0  # raw tokens per step (targets)
    positions: float = 0.0  # global positions per step
    flops: float = 0.0  # training FLOPs per step, as training counts them
    flops_by_module: dict = field(default_factory=dict)
    peak_memory_gib: float = 0.0
    skipped_steps: int = 0
    error: Optional[str] = None

    @property
    def tflops(self) -> float:
        return self.flops / self.step_seconds / 1e12 if self.step_seconds else 0.0


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def release(trainer) -> None:
    """Drop what a failed (out-of-memory) step left: gradients, cached blocks."""
    trainer.optimizer.zero_grad()
    trainer.model.zero_grad_buffer()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_after_step(trainer, make_batch: Callable[[int], dict], micro_batch_size: int) -> float:
    """Peak bytes allocated during one step at ``micro_batch_size``."""
    trainer.feed(make_batch(micro_batch_size), micro_batch_size)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    trainer.train_step()
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated())


def peak_or_none(trainer, make_batch: Callable[[int], dict], micro_batch_size: int,
                 warm_up: bool = False) -> Optional[float]:
    """``peak_after_step`` at ``micro_batch_size``, or None (the trainer's memory released) when it
    runs out of memory; ``warm_up`` first takes one step at one sample (optimizer state, workspaces)."""
    try:
        if warm_up:
            trainer.feed(make_batch(1), 1)
            trainer.train_step()
        return peak_after_step(trainer, make_batch, micro_batch_size)
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        release(trainer)
        return None


def fit_micro_batch(trainer, make_batch: Callable[[int], dict], limit: int, fraction: float) -> int:
    """The largest micro-batch (<= limit) whose step stays under ``fraction`` of the GPU's memory.

    Step 1 at one sample allocates the optimizer's state; steps at one and two samples then give the
    memory per sample. Returns 0 when one sample does not fit.
    """
    one = peak_or_none(trainer, make_batch, 1, warm_up=True)
    if one is None:
        return 0
    if limit < 2:
        return 1
    two = peak_or_none(trainer, make_batch, 2)
    if two is None:
        return 1
    budget = fraction * torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    per_sample = max(two - one, 1.0)
    return int(max(1, min(limit, 1 + (budget - one) // per_sample)))


def measure(model: str, args: argparse.Namespace, tokenizer: JointTokenizer, use_te: bool, extra: list[str],
            bf16: bool = True) -> Measurement:
    """Build ``model``, size its micro-batch, then time ``args.steps`` training steps after warm-up."""
    config = training_config(model, args, bf16, use_te, extra)
    from megatron_lst.training.hardware import check_hardware

    check_hardware(config)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

    def make_batch(micro_batch_size: int) -> dict:
        # built on the GPU: the step then times the model, not host-to-device copies
        if not model_spec(model).patched:
            batch = baseline_rows(tokenizer.vocab, micro_batch_size, args.seq_length)
        else:
            batch = lst_rows(tokenizer.vocab, micro_batch_size, args.seq_length, args.patch_size, args.speech_share)
        return {name: value.to(device) for name, value in batch.items()}

    trainer = build_trainer(model, config, tokenizer)
    result = Measurement(model)
    try:
        size = args.micro_batch_size
        if size is None:
            size = fit_micro_batch(trainer, make_batch, args.max_micro_batch_size, args.memory_fraction)
            if size == 0:
                result.error = "one sample does not fit in GPU memory"
                return result
        while True:
            try:
                trainer.feed(make_batch(size), size)
                for _ in range(args.warmup):
                    trainer.train_step()
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                steps = [trainer.train_step() for _ in range(args.steps)]
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
                break
            except RuntimeError as error:
                if not is_out_of_memory(error) or size == 1 or args.micro_batch_size is not None:
                    raise
                release(trainer)
                size //= 2
        result.micro_batch_size = size
        result.step_seconds = elapsed / args.steps
        result.tokens = sum(step.tokens for step in steps) / args.steps
        result.positions = sum(step.positions for step in steps) / args.steps
        result.flops = sum(step.flops for step in steps) / args.steps
        result.flops_by_module = dict(steps[-1].flops_by_module)  # every step sees the same batch
        result.skipped_steps = sum(int(step.skipped) for step in steps)
        if torch.cuda.is_available():
            result.peak_memory_gib = torch.cuda.max_memory_allocated() / 2**30
        return result
    finally:
        trainer.metrics.close()
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------ report
def report(results: dict[str, Measurement], peak: Optional[float], args: argparse.Namespace) -> int:
    """Print the table and the headline; returns the exit status (1 when a model was not measured)."""
    print(f"{'model':13} {'micro-batch':>11} {'step ms':>9} {'raw tokens/s':>13} {'positions/s':>12} "
          f"{'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>9}")
    for model, r in results.items():
        if r.error:
            print(f"{LABELS[model]:13} not measured: {r.error}")
            continue
        mfu = f"{r.tflops * 1e12 / peak:6.1%}" if peak else f"{'n/a':>6}"
        print(f"{LABELS[model]:13} {r.micro_batch_size:11d} {r.step_seconds * 1e3:9.1f} "
              f"{r.tokens / r.step_seconds:13,.0f} {r.positions / r.step_seconds:12,.0f} {r.tflops:8.1f} {mfu} "
              f"{r.peak_memory_gib:9.1f}")
        if r.skipped_steps:
            print(f"  warning: {r.skipped_steps} of {args.steps} timed steps skipped the optimizer "
                  "(NaN/Inf loss or gradient overflow): their time has no optimizer step")
    lst, base = results.get("lst"), results.get("baseline")
    if lst and not lst.error and lst.flops_by_module.get("total"):
        shares = ", ".join(f"{name} {lst.flops_by_module[name] / lst.flops_by_module['total']:.0%}"
                           for name in ("encoder", "global", "decoder") if name in lst.flops_by_module)
        print(f"lst FLOPs by module: {shares}; raw tokens per global position {lst.tokens / lst.positions:.2f}")
    if not (lst and base) or lst.error or base.error:
        print("lst/global-model MFU: n/a (a model was not measured)")
        return 1
    print(f"lst/global-model raw tokens/s: {(lst.tokens / lst.step_seconds) / (base.tokens / base.step_seconds):.2f}x")
    # on one GPU the MFU ratio is the TFLOP/s ratio: it needs no peak
    print(f"lst/global-model MFU: {lst.tflops / base.tflops:.2f}x")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flavour", default="1b", help="model flavour (megatron_lst/models/config.py)")
    parser.add_argument("--seq-length", type=int, default=4096, help="global positions per sample")
    parser.add_argument("--patch-size", type=int, default=4, help="static patch size p")
    parser.add_argument("--speech-share", type=float, default=1.0,
                        help="fraction of a row's span tokens that are speech units (1.0: speech only)")
    parser.add_argument("--micro-batch-size", type=int, default=None, help="fixed micro-batch (default: fit)")
    parser.add_argument("--max-micro-batch-size", type=int, default=16, help="upper bound when fitting")
    parser.add_argument("--memory-fraction", type=float, default=0.85, help="GPU memory a fitted step may use")
    parser.add_argument("--micro-batches", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 dense TFLOP/s (default: table)")
    parser.add_argument("--text-vocab-size", type=int, default=32000, help="text ids of the joint vocabulary")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    args, extra = parser.parse_known_args(argv)
    if not torch.cuda.is_available():
        print("bench_mfu.py: needs a CUDA GPU (torch sees none); it measures bf16 GPU throughput only", file=sys.stderr)
        return 2
    if not 0.0 <= args.speech_share <= 1.0:
        parser.error("--speech-share must be in [0, 1]")

    from megatron_lst.models.specs import transformer_engine_available

    use_te = transformer_engine_available()
    name = torch.cuda.get_device_name(0)
    peak, source = peak_flops(name, args.peak_tflops)
    tokenizer = JointTokenizer(SizeOnlyTextModel(args.text_vocab_size))
    print(f"GPU: {name}; peak bf16 dense {peak / 1e12:.1f} TFLOP/s ({source})" if peak else f"GPU: {name}; {source}")
    spec = "transformer-engine spec" if use_te else "local SDPA spec (transformer-engine does not import here)"
    print(f"flavour {args.flavour}, bf16, {spec}, {args.seq_length} positions per sample (one document each), "
          f"static p = {args.patch_size}, speech share {args.speech_share:.0%}, {args.micro_batches} micro-batch(es) "
          f"per step, {args.warmup} warm-up + {args.steps} timed steps")
    results = {}
    try:
        for model in args.models:
            results[model] = measure(model, args, tokenizer, use_te, extra)
    finally:
        from megatron_lst.training.initialize import destroy_distributed

        destroy_distributed()
    return report(results, peak, args)


if __name__ == "__main__":
    sys.exit(main())
