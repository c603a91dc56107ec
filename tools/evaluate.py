#!/usr/bin/env python
"""Story-completion accuracy of a checkpoint: which ending does the model find most likely?

    python tools/evaluate.py --checkpoint runs/base --benchmark storycloze.jsonl
        --directions ss tt st ts --batch-size 16 --output results.json  (one line)

The benchmark is the jsonl of megatron_lst/evaluation/FORMAT.md. A direction is evaluated only when
the benchmark carries its fields (S->S needs "units" in prompts and endings, T->T needs "text");
the others are listed as skipped with the reason. For every direction the table gives accuracy
with a 95% Wilson interval under three scores: summed and mean log-prob of the ending, and mean NLL
of the whole sequence. The model family, shape and tokenizer are read from the checkpoint; for a
bpe-baseline checkpoint that includes its unit BPE, which encodes the speech prompts and endings.

--patching (LST only; baselines are not patched and ignore it): static (default, what this tool always
did) patches speech in runs of the run's patch size; aligned makes one patch per word / silence from
the benchmark's word times ("segments", written by tools/synthesize_benchmark.py) with the run's
silence mode, patch boundary and patch-length cap; auto takes aligned when the model was trained
with aligned, mixed or curriculum patching and every speech part has word times, static otherwise.
The table and the json say which was used and why.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_lst.evaluation.items import read_items  # noqa: E402
from megatron_lst.evaluation.patching_choice import REQUESTS, choose_patching  # noqa: E402
from megatron_lst.evaluation.scoring import DIRECTIONS, SequenceBuilder  # noqa: E402
from megatron_lst.evaluation.story_completion import evaluate_items, format_report  # noqa: E402
from megatron_lst.utils.atomic import write_text_atomic  # noqa: E402
from megatron_lst.validation import ArgumentParser, exit_on_input_error  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="the --save folder of a training run")
    parser.add_argument("--iteration", type=int, default=None, help="which saved iteration (default: latest)")
    parser.add_argument("--benchmark", required=True, help="benchmark jsonl (see evaluation/FORMAT.md)")
    parser.add_argument("--directions", nargs="+", default=["ss", "tt", "st", "ts"], choices=sorted(DIRECTIONS),
                        help="ss: speech prompt and endings; tt: text prompt and endings; "
                             "st: speech prompt, text endings; ts: text prompt, speech endings")
    parser.add_argument("--batch-size", type=int, default=16, help="candidate sequences per forward pass")
    parser.add_argument("--max-length", type=int, default=None,
                        help="longest sequence in tokens; longer prompts lose their oldest tokens "
                             "(default: the run's --seq-length)")
    parser.add_argument("--tokenizer-model", default=None,
                        help="text tokenizer file, when it is no longer where the training run found it")
    parser.add_argument("--unit-bpe", default=None,
                        help="bpe-baseline: its unit BPE .model, when it is no longer where the training run found "
                             "it (its SHA-256 must match the checkpoint's)")
    parser.add_argument("--model", choices=["auto", "baseline", "bpe-baseline", "lst"], default="auto",
                        help="expected model family; 'auto' takes the checkpoint's")
    parser.add_argument("--patching", choices=REQUESTS, default="static",
                        help="LST only: static (default: runs of the patch size), aligned (one patch per word / silence "
                             "from the benchmark's word times) or auto (aligned for aligned / mixed / curriculum "
                             "runs when every speech part has word times, else static); baselines ignore it")
    parser.add_argument("--output", default=None, help="also write accuracies and per-item scores to this json")
    return parser


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        print("error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    from megatron_lst.evaluation.model_scorer import CheckpointScorer, config_from_checkpoint

    try:  # the checkpoint is verified against its manifest before anything in it is read
        config = config_from_checkpoint(args.checkpoint, args.iteration, args.tokenizer_model, args.unit_bpe)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # a malformed item (units not a list of codebook indices, a label that is not an integer, an id
    # used twice, word times that do not cover its units ...) is one line naming the line and field
    items = read_items(args.benchmark, num_units=config.data.num_units)
    if args.model != "auto" and args.model != config.train.model:
        print(f"error: --model {args.model} but the checkpoint holds a {config.train.model} model", file=sys.stderr)
        return 2
    try:
        choice = choose_patching(args.patching, config.train.model, config.patching.patching, items)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if choice.note:
        print(f"note: {choice.note}", file=sys.stderr)
    aligned = choice.patching == "aligned"
    try:  # a bpe-baseline's tokenizer encodes speech items with the run's unit BPE (never raw unit ids)
        scorer = CheckpointScorer.from_checkpoint(args.checkpoint, args.iteration, args.tokenizer_model, args.unit_bpe,
                                                  patching="aligned" if aligned else "static")
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    builder = SequenceBuilder(scorer.tokenizer, max_length=args.max_length or scorer.max_length, word_times=aligned)
    report = evaluate_items(items, builder, scorer, args.directions, args.batch_size)
    report.patching = choice
    print(f"{args.benchmark}: {len(items)} items, checkpoint {args.checkpoint} ({config.train.model})")
    print(format_report(report))
    if args.output:
        write_text_atomic(args.output, json.dumps(
            {"checkpoint": str(args.checkpoint), "benchmark": str(args.benchmark), **report.to_dict()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
