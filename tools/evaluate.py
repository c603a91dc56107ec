#!/usr/bin/env python
"""Story-completion accuracy of a checkpoint: which ending does the model find most likely?

    python tools/evaluate.py --checkpoint runs/base --benchmark storycloze.jsonl
        --directions ss tt st ts --batch-size 16 --output results.json  (one line)
    python tools/evaluate.py --checkpoint runs/base --benchmark storycloze.jsonl topic.jsonl
        --output-dir results/  (results/storycloze.json, results/topic.json: the model loads once)

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

Each item's shared prompt is read once and its cache copied to every ending (same scores as
whole sequences; --no-prompt-cache scores whole sequences). --max-length counts patches for LST
and tokens for baselines; items that do not fit are skipped and counted per direction. --format
reads the Story Cloze CSV, HellaSwag jsonl or a spoken StoryCloze units jsonl. Under torchrun the
ranks split the items and rank 0 prints and writes; --output also gets lm-eval-harness's shape
beside it (OUTPUT.lm_eval.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_lst.evaluation.importers import FORMATS, default_task_name, read_benchmark  # noqa: E402
from megatron_lst.evaluation.lm_eval_format import lm_eval_results  # noqa: E402
from megatron_lst.evaluation.parallel import rank_and_world  # noqa: E402
from megatron_lst.evaluation.patching_choice import REQUESTS, choose_patching  # noqa: E402
from megatron_lst.evaluation.scoring import DIRECTIONS, SequenceBuilder  # noqa: E402
from megatron_lst.evaluation.story_completion import evaluate_items, format_report  # noqa: E402
from megatron_lst.training.registry import MODELS  # noqa: E402
from megatron_lst.utils.atomic import write_text_atomic  # noqa: E402
from megatron_lst.validation import ArgumentParser, exit_on_input_error  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="the --save folder of a training run, or an export folder (convert_checkpoint.py to-hf)")
    parser.add_argument("--iteration", type=int, default=None, help="which saved iteration (default: latest)")
    parser.add_argument("--benchmark", required=True, nargs="+",
                        help="benchmark file(s) (see megatron_lst/evaluation/FORMAT.md); several are scored one after "
                             "another with the model loaded once (--output-dir names their results)")
    parser.add_argument("--format", choices=FORMATS, default="jsonl",
                        help="jsonl: ours (default); storycloze-csv: the Story Cloze Test CSV; hellaswag: the HellaSwag "
                             "jsonl (both text, T->T); slamkit: the units jsonl of a spoken StoryCloze folder (S->S)")
    parser.add_argument("--directions", nargs="+", default=["ss", "tt", "st", "ts"], choices=sorted(DIRECTIONS),
                        help="ss: speech prompt and endings; tt: text prompt and endings; "
                             "st: speech prompt, text endings; ts: text prompt, speech endings")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="candidate sequences per forward pass (--no-prompt-cache; the cache batches an item's endings)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="longest sequence, in patches for LST (as its --seq-length counts) and in tokens for "
                             "baselines; longer prompts lose their oldest tokens, an item whose ending alone does "
                             "not fit is skipped and counted (default: the run's --seq-length)")
    parser.add_argument("--no-prompt-cache", dest="prompt_cache", action="store_false",
                        help="score every ending's whole sequence instead of reading the shared prompt once")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar on stderr")
    parser.add_argument("--tokenizer-model", default=None,
                        help="text tokenizer file, when it is no longer where the training run found it")
    parser.add_argument("--unit-bpe", default=None,
                        help="bpe-baseline: its unit BPE .model, when it is no longer where the training run found "
                             "it (its SHA-256 must match the checkpoint's)")
    parser.add_argument("--model", choices=["auto", *MODELS], default="auto",
                        help="expected model family; 'auto' takes the checkpoint's")
    parser.add_argument("--patching", choices=REQUESTS, default=None,
                        help="LST only: static (default: runs of the patch size), aligned (one patch per word / silence "
                             "from the benchmark's word times) or auto (aligned for aligned / mixed / curriculum "
                             "runs when every speech part has word times, else static); baselines ignore it")
    parser.add_argument("--output", default=None,
                        help="also write accuracies and per-item scores to this json, and lm-eval-harness's results "
                             "shape beside it (OUTPUT with .lm_eval.json)")
    parser.add_argument("--output-dir", default=None,
                        help="write each benchmark's json to DIR/<benchmark file stem>.json, and lm-eval-harness's "
                             "shape to DIR/<stem>.lm_eval.json (the way to name results of several benchmarks)")
    parser.add_argument("--lm-eval-output", default=None, help="where to write the lm-eval-harness json instead")
    parser.add_argument("--task-name", default=None,
                        help="lm-eval task prefix, e.g. storycloze -> storycloze_s2s (default: the format's benchmark "
                             "name, or the file's stem)")
    return parser


def output_paths(args) -> list[tuple[Optional[str], Optional[str], str]]:
    """(json, lm-eval json, lm-eval task name) for each benchmark, in order; ValueError when the
    flags cannot name several benchmarks' results apart."""
    several = len(args.benchmark) > 1
    if several:
        for flag, value in (("--output", args.output), ("--lm-eval-output", args.lm_eval_output),
                            ("--task-name", args.task_name)):
            if value:
                raise ValueError(f"{flag} names one benchmark's results, but {len(args.benchmark)} benchmarks were "
                                 "given: use --output-dir (one <stem>.json per benchmark)")
    if args.output_dir and (args.output or args.lm_eval_output):
        raise ValueError("--output-dir names the results itself: drop --output / --lm-eval-output")
    stems = [Path(benchmark).stem for benchmark in args.benchmark]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if args.output_dir and repeated:
        raise ValueError(f"benchmark files share the stem {repeated[0]!r}, so their results in --output-dir would "
                         "overwrite each other: rename one")
    paths = []
    for benchmark, stem in zip(args.benchmark, stems):
        task = args.task_name or default_task_name(benchmark, args.format)
        if args.output_dir:
            base = Path(args.output_dir) / stem
            paths.append((f"{base}.json", f"{base}.lm_eval.json", task))
            continue
        lm_eval = args.lm_eval_output or (str(Path(args.output).with_suffix(".lm_eval.json")) if args.output else None)
        paths.append((args.output, lm_eval, task))
    return paths


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        print("error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    try:
        outputs = output_paths(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from megatron_lst.training.checkpoint_loading import config_from_checkpoint, load_model

    try:  # the checkpoint is verified against its manifest before anything in it is read
        config = config_from_checkpoint(args.checkpoint, args.iteration, args.tokenizer_model, args.unit_bpe)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.model != "auto" and args.model != config.train.model:
        print(f"error: --model {args.model} but the checkpoint holds a {config.train.model} model", file=sys.stderr)
        return 2
    # every file is read and checked before the model loads: a malformed item (units not a list of
    # codebook indices, a label that is not an integer, an id used twice, word times that do not
    # cover its units ...) is one line naming the file, line and field, and nothing is written
    benchmarks = [(benchmark, read_benchmark(benchmark, args.format, num_units=config.data.num_units))
                  for benchmark in args.benchmark]
    try:
        choices = [choose_patching(args.patching, config.train.model, config.patching.patching, items)
                   for _, items in benchmarks]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    scorers: dict[bool, tuple] = {}  # aligned? -> (builder, scorer, whole-sequence scorer)
    loaded: Optional[tuple] = None  # load_model's answer, read once for every patching used
    for (benchmark, items), choice, (output, lm_eval_path, task) in zip(benchmarks, choices, outputs):
        if choice.note:
            print(f"note: {choice.note}", file=sys.stderr)
        aligned = choice.patching == "aligned"
        if aligned not in scorers:
            try:
                loaded = loaded or load_model(args.checkpoint, args.iteration, args.tokenizer_model, args.unit_bpe)
                scorers[aligned] = scorers_for(loaded, config, aligned, args)
            except (ValueError, FileNotFoundError) as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
        builder, scorer, whole_sequence_scorer = scorers[aligned]
        if scorer is not whole_sequence_scorer and not has_prompts(items):
            print(f"note: {benchmark}: no item has a prompt, so nothing is shared between its endings: whole "
                  f"sequences in batches of {args.batch_size}", file=sys.stderr)
            scorer = whole_sequence_scorer
        report = evaluate_items(items, builder, scorer, args.directions, args.batch_size,
                                progress=args.progress and sys.stderr.isatty())
        report.patching = choice
        if rank_and_world()[0] != 0:  # every rank holds the gathered results; rank 0 reports them
            continue
        print(f"{benchmark}: {len(items)} items, checkpoint {args.checkpoint} ({config.train.model})")
        print(format_report(report))
        if output:
            write_text_atomic(output, json.dumps(
                {"checkpoint": str(args.checkpoint), "benchmark": str(benchmark), "format": args.format,
                 "length_unit": builder.length_unit, "max_length": builder.max_length, **report.to_dict()}, indent=1))
        if lm_eval_path:
            write_text_atomic(lm_eval_path, json.dumps(
                lm_eval_results(task, report.results, len(items), str(args.checkpoint)), indent=1))
    return 0


def has_prompts(items) -> bool:
    """Whether any item has a prompt (text or units) for the prompt cache to read once; a lexical
    test's items have none, and batching whole sequences across items scores them twice as fast."""
    return any(item.prompt.text or item.prompt.units for item in items)


def scorers_for(loaded: tuple, config, aligned: bool, args) -> tuple:
    """(SequenceBuilder, scorer, whole-sequence scorer) for one patching of the loaded model
    (``load_model``'s answer): a bpe-baseline's tokenizer encodes speech items with the run's unit
    BPE (never raw unit ids)."""
    from megatron_lst.evaluation.model_scorer import CheckpointScorer

    scorer = CheckpointScorer.from_loaded(*loaded, patching="aligned" if aligned else "static")
    builder, scorer_used, how = scoring_setup(scorer, config, aligned, args)
    print(f"note: {how}", file=sys.stderr)
    return builder, scorer_used, scorer


def scoring_setup(scorer, config, aligned: bool, args):
    """(SequenceBuilder, scorer, what was chosen): the length cap in the model's units (LST:
    patches, baselines: tokens) and the prompt-cached scorer unless asked for whole sequences or
    the model cannot be stepped (then whole-sequence, and the note says why)."""
    from megatron_lst.evaluation.lengths import patch_counter
    from megatron_lst.evaluation.prompt_cache import prompt_cached_scorer
    from megatron_lst.training.checkpoint_loading import fixed_patching_config
    from megatron_lst.training.registry import spec_of

    patched = spec_of(config).patched
    patching = fixed_patching_config(config, "aligned" if aligned else "static") if patched else None
    measure = None if patching is None else patch_counter(patching, scorer.tokenizer)
    builder = SequenceBuilder(scorer.tokenizer, max_length=args.max_length or scorer.max_length, word_times=aligned,
                              measure=measure)
    limit = f"sequences capped at {builder.max_length} {builder.length_unit}"
    if not args.prompt_cache:
        return builder, scorer, f"whole-sequence scoring (--no-prompt-cache), {limit}"
    cached, why = prompt_cached_scorer(scorer.model, patched, scorer.tokenizer, scorer.device, patching)
    if cached is None:
        return builder, scorer, f"whole-sequence scoring: this model cannot be stepped ({why}), {limit}"
    return builder, cached, f"shared prompts read once per item (prompt cache), {limit}"


if __name__ == "__main__":
    sys.exit(main())
