"""The main job: build a small real speech-text corpus, train the baseline and LST, report.

    python tools/run_demo.py --out demo_out            # ~20 minutes on 2 cores
    python tools/run_demo.py --out demo_out --quick    # a few minutes (what CI runs)

Stages (each cached or re-run as needed, progress printed throughout):
  1. corpus      tools/make_demo_corpus.py: gensim-wheel text, espeak-ng speech, log-mel k-means units
  2. tokenizer   a SentencePiece BPE trained on the training text
  3. preprocess  tools/preprocess_data.py: speech-text and text-only indexed datasets
  4. train       pretrain_lst.py for every compared run, compute-controlled as in the paper (the same
                 iterations and global positions per step; --control flops: LST variants instead stop on
                 the FLOPs the baseline spent): the baseline, the BPE baseline (a unit BPE trained here),
                 LST with curriculum, static and aligned patching, and static LST with the strictly
                 causal patch boundary (--quick leaves out aligned)
  5. evaluate    held-out StoryCloze-/HellaSwag-like, Topic StoryCloze and spoken lexical (sWUGGY-like)
                 benchmarks (synthesised speech, word times included) with tools/evaluate.py, LST runs
                 trained with aligned patches also scored aligned on Topic StoryCloze and lexical (--quick keeps
                 StoryCloze and lexical); the token that ends a speech span under the paper's and the causal
                 patch rule, with tools/evaluate_switch_tokens.py
  6. fine-tune   ASR and TTS from the baseline and LST (curriculum); held-out WER / unit error / steps per second
  7. report      demo_out/report.md with the numbers and PNG plots
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_lst.demo.report import read_metrics, summarise_run  # noqa: E402
from megatron_lst.validation import ArgumentParser  # noqa: E402


STARTED = time.time()


def stage(title: str) -> None:
    print(f"\n=== {title} (at {time.time() - STARTED:.0f} s) ===", flush=True)


def run(command: list[str], log_file: Path | None = None) -> None:
    """Run a step, echoing its output (and keeping a copy) so progress stays visible."""
    print("$ " + " ".join(command), flush=True)
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}) as proc:
        log = log_file.open("w") if log_file else None
        for line in proc.stdout:
            if log:
                log.write(line)
            if not line.lstrip().startswith(("warnings.warn", "/")) and "Warning" not in line:
                print("  " + line.rstrip(), flush=True)
        if log:
            log.close()
    if proc.returncode != 0:
        raise SystemExit(f"step failed with exit code {proc.returncode}: {' '.join(command)}")


def build_corpus(out: Path, quick: bool) -> Path:
    corpus = out / "corpus"
    # --quick: Lee news only, 0.3 h of speech (enough utterances for a validation split), seconds
    run([sys.executable, "tools/make_demo_corpus.py", "--out", str(corpus), "--no-progress",
         *(["--quick", "--hours", "0.3"] if quick else [])])
    return corpus


def train_tokenizer(corpus: Path, out: Path, vocab_size: int) -> Path:
    from megatron_lst.tokenizer import train_sentencepiece

    model = out / "tokenizer" / "text_bpe.model"
    if model.is_file():
        return model
    lines = [json.loads(line)["text"] for line in (corpus / "text_train.jsonl").read_text().splitlines()]
    lines += [json.loads(line)["text"] for line in (corpus / "speech_train.jsonl").read_text().splitlines()]
    return train_sentencepiece(lines, model.with_suffix(""), vocab_size=vocab_size)


def preprocess_once(source: Path, prefix: Path, kind: str, tokenizer: Path, *flags: str) -> str:
    """tools/preprocess_data.py ``source`` -> ``{prefix}_{kind}_document``, unless it already exists."""
    dataset = f"{prefix}_{kind}_document"
    if not Path(f"{dataset}.idx").is_file():
        prefix.parent.mkdir(parents=True, exist_ok=True)
        run([sys.executable, "tools/preprocess_data.py", "--input", str(source), "--output-prefix", str(prefix),
             "--tokenizer-model", str(tokenizer), *flags])
    return dataset


def preprocess(corpus: Path, tokenizer: Path, out: Path) -> tuple[str, str]:
    data = out / "data"
    return (preprocess_once(corpus / "speech_train.jsonl", data / "speech", "speech", tokenizer, "--num-units", "501"),
            preprocess_once(corpus / "text_train.jsonl", data / "text", "text", tokenizer, "--append-eod"))


def train(model: str, common: list[str], out: Path, extra: list[str], name: str | None = None) -> Path:
    """One pretrain_lst.py run of ``--model model`` in ``runs/<name>``; returns its metrics jsonl."""
    name = name or model
    run_dir = out / "runs" / name
    log_json = run_dir / "metrics.jsonl"
    if log_json.exists():
        log_json.unlink()
    run([sys.executable, "pretrain_lst.py", "--model", model, *common, "--save", str(run_dir / "checkpoints"),
         "--tensorboard-dir", str(run_dir / "tensorboard"), "--log-json", str(log_json), *extra],
        log_file=run_dir.parent / f"{name}.log" if run_dir.parent.exists() else None)
    return log_json


def flops_matched_schedule(baseline_metrics: list[dict], common: list[str], flags: list[str], out: Path,
                           name: str) -> list[str]:
    """An LST variant's flags to stop on the FLOPs the baseline spent (``--control flops``): a
    3-step probe measures its FLOPs per step, and its schedule is fitted to the steps the budget lasts."""
    budget = summarise_run(baseline_metrics)["flops"]
    stage(f"4/7 measure {name}'s FLOPs per step (a 3-step probe), to fit its schedule to the budget {budget:.3e}")
    probe = summarise_run(read_metrics(train("lst", common, out, [*flags, "--train-iters", "3"], name=f"{name}_probe")))
    lst_iters = max(int(budget // (probe["flops"] / 3)), 1)
    return [*flags, "--train-iters", str(lst_iters), "--train-flops", str(budget),
            "--lr-warmup-iters", str(max(lst_iters // 10, 1)), "--eval-interval", str(max(lst_iters // 4, 1))]


@dataclass(frozen=True)
class Variant:
    """One pretraining run of the demo: its run folder and report label, ``--model`` and flags."""

    name: str
    model: str
    flags: tuple[str, ...]
    description: str


CURRICULUM = ("--patching", "curriculum", "--curriculum-tau1", "0.333", "--curriculum-tau2", "0.667")
DEMO_UNIT_BPE_PIECES = 1000  # the paper's 1k unit BPE
QUICK_UNIT_BPE_PIECES = 600  # --quick: 0.3 h of speech; a BPE needs more pieces than the 501 units
FINETUNED_RUNS = ("baseline", "lst")  # ASR/TTS fine-tuning: the baseline and the paper's best LST
SWITCH_TOKEN_RUNS = ("baseline", "lst", "lst-static", "lst-static-causal")
ALIGNED_SCORING_RUNS = ("lst", "lst-aligned")  # trained with aligned patches (curriculum: aligned first)
# the benchmarks they are also scored aligned on (time: the story benchmarks are at chance at demo scale)
ALIGNED_SCORING_BENCHMARKS = ("topic_storycloze", "lexical")
QUICK_CUT = ("lst-aligned", "hellaswag", "topic_storycloze")  # what --quick leaves out, to stay within its time budget


def pretraining_variants(quick: bool, unit_bpe: Path) -> list[Variant]:
    """The runs the report compares, all at the same iterations and positions per step: both
    baselines and LST under each patching strategy, plus static LST with the strictly causal
    patch boundary (the paper's rule looks one token ahead at a speech span's end)."""
    variants = [
        Variant("baseline", "baseline", (), "interleaved tokens, one per position"),
        Variant("bpe-baseline", "bpe-baseline", ("--unit-bpe", str(unit_bpe)), "speech units as unit-BPE pieces"),
        Variant("lst", "lst", CURRICULUM, "LST, curriculum patching aligned -> static, the paper's best"),
        Variant("lst-static", "lst", ("--patching", "static"), "LST, static patches of 4 units"),
        Variant("lst-aligned", "lst", ("--patching", "aligned"), "LST, one patch per word or silence"),
        Variant("lst-static-causal", "lst", ("--patching", "static", "--patch-boundary", "causal"),
                "LST, static, strictly causal patch boundary"),
    ]
    return [variant for variant in variants if not (quick and variant.name in QUICK_CUT)]


def train_demo_unit_bpe(corpus: Path, out: Path, vocab_size: int) -> Path:
    """The BPE baseline's unit BPE, trained on the training speech (tools/train_unit_bpe.py)."""
    prefix = out / "tokenizer" / f"unit_bpe_{vocab_size}"
    model = prefix.with_suffix(".model")
    if not model.is_file():
        run([sys.executable, "tools/train_unit_bpe.py", "--input", str(corpus / "speech_train.jsonl"),
             "--output-prefix", str(prefix), "--vocab-size", str(vocab_size), "--num-units", "501"])
    return model


def evaluate_switch_tokens(name: str, out: Path, corpus: Path, max_segments: int) -> dict:
    """tools/evaluate_switch_tokens.py on one run: the token that ends a speech span, under each patch rule."""
    output = out / "runs" / name / "switch_tokens.json"
    run([sys.executable, "tools/evaluate_switch_tokens.py", "--checkpoint", str(out / "runs" / name / "checkpoints"),
         "--heldout", str(corpus / "speech_heldout.jsonl"), "--segment-words", str(SEGMENT_WORDS),
         "--max-segments", str(max_segments), "--output", str(output)])
    return json.loads(output.read_text())


CONTROL_DESCRIPTIONS = {  # --control: (section title, comparison, how the pair is trained)
    "compute": ("compute-controlled: equal iterations", "equal iterations",
                "Both models use the same global transformer (the `demo` flavour: 4 x 128), the same iterations and "
                "the same global positions per step, as in the paper's compute-controlled runs; LST's positions hold "
                "patches of speech units, so it sees more raw tokens and spends more FLOPs (its local modules)."),
    "flops": ("FLOPs-matched", "equal FLOPs",
              "Both models use the same global transformer (the `demo` flavour: 4 x 128) and positions per step; "
              "LST's schedule is fitted to the baseline's FLOPs (local encoder/decoder counted) and it stops "
              "when it has spent them."),
}


@dataclass(frozen=True)
class Benchmark:
    """One held-out benchmark of the demo: how it is built and which directions are scored."""

    kind: str
    directions: tuple[str, ...]
    build_flags: tuple[str, ...] = ()


# The lexical test's words and non-words. The full demo takes every held-out word of 9+ letters seen
# in training (about 760) against a non-word with four letters changed: on the demo's 400-step
# models that gave the BPE baseline 0.585 [0.550, 0.619] by the mean score where 1000 words of 7+
# letters with three changes gave 0.539 [0.508, 0.570] (the same checkpoints), and every other run
# gained as much. The quick corpus is too small for that many long words.
LEXICAL = ("--edit-letters", "4", "--min-letters", "9", "--min-count", "1", "--max-items", "1000")
LEXICAL_QUICK = ("--max-items", "400")


def demo_benchmarks(corpus: Path, quick: bool) -> list[Benchmark]:
    """The story benchmarks of the paper (at chance at demo scale), Topic StoryCloze (every
    held-out window: the corpus holds few documents) and the spoken lexical test, which small
    models solve above chance with enough items (hundreds: its effect is several points)."""
    story_items = ("--max-items", "12" if quick else "40")
    benchmarks = [
        Benchmark("storycloze", ("ss", "tt", "st", "ts"), story_items),
        Benchmark("hellaswag", ("ss", "tt", "st", "ts"), story_items),
        Benchmark("topic_storycloze", ("ss", "tt", "st", "ts"), ("--windows-per-document", "3")),
        # an empty prompt: only the speech forms of the two words are compared
        Benchmark("lexical", ("ss",), ("--train-text", str(corpus / "text_train.jsonl"),
                                       str(corpus / "speech_train.jsonl"), *(LEXICAL_QUICK if quick else LEXICAL))),
    ]
    return [benchmark for benchmark in benchmarks if not (quick and benchmark.kind in QUICK_CUT)]


def has_word_times(path: Path) -> bool:
    """Whether a synthesised benchmark carries word times (files from before they existed do not)."""
    with path.open() as handle:
        first = json.loads(handle.readline() or "{}")
    return any("segments" in part for part in [first.get("prompt", {}), *first.get("endings", [])] if part.get("units"))


def build_benchmarks(corpus: Path, out: Path, benchmarks: list[Benchmark]) -> dict[str, Path]:
    """The held-out benchmarks, synthesised with the corpus's voice (word times included); one
    built earlier in ``out`` is reused only when it was built with the same flags."""
    paths = {}
    for benchmark in benchmarks:
        text_file = out / "benchmarks" / f"{benchmark.kind}_text.jsonl"
        speech_file = out / "benchmarks" / f"{benchmark.kind}.jsonl"
        flags_file = out / "benchmarks" / f"{benchmark.kind}.flags.json"
        text_file.parent.mkdir(parents=True, exist_ok=True)
        flags = json.dumps(list(benchmark.build_flags))
        built = speech_file.is_file() and flags_file.is_file() and flags_file.read_text() == flags
        if not built or not has_word_times(speech_file):
            run([sys.executable, "-m", "megatron_lst.evaluation.benchmarks", "--heldout",
                 str(corpus / "heldout_documents.jsonl"), "--kind", benchmark.kind, "--output", str(text_file),
                 *benchmark.build_flags])
            run([sys.executable, "tools/synthesize_benchmark.py", "--input", str(text_file), "--output",
                 str(speech_file), "--extractor", str(corpus / "unit_extractor.npz")])
            flags_file.write_text(flags)
        paths[benchmark.kind] = speech_file
    return paths


def evaluate(model: str, out: Path, benchmarks: list[Benchmark], paths: dict[str, Path], max_length: int,
             patching: str = "static") -> dict[str, dict]:
    """tools/evaluate.py on every benchmark, one call (one model load) per set of directions, results
    in ``runs/<model>/eval[_<patching>]/<kind>.json``; ``patching="aligned"`` scores an LST run with
    one patch per word and silence (the word times of the synthesised parts), as the paper scored
    aligned rows."""
    folder = out / "runs" / model / ("eval" if patching == "static" else f"eval_{patching}")
    groups: dict[tuple[str, ...], list[Benchmark]] = {}
    for benchmark in benchmarks:
        groups.setdefault(benchmark.directions, []).append(benchmark)
    for directions, group in groups.items():
        run([sys.executable, "tools/evaluate.py", "--checkpoint", str(out / "runs" / model / "checkpoints"),
             "--benchmark", *(str(paths[benchmark.kind]) for benchmark in group), "--directions", *directions,
             "--max-length", str(max_length), "--batch-size", "16", "--patching", patching,
             "--output-dir", str(folder)])
    return {benchmark.kind: json.loads((folder / f"{paths[benchmark.kind].stem}.json").read_text())
            for benchmark in benchmarks}


SEGMENT_WORDS = 8  # words per fine-tuning and evaluation example (about 2.5 s of speech)
# Global positions per fine-tuning sample: each holds about three segments for either model
# (LST packs ~2.4 tokens per position on this data, the baseline one).
FINETUNE_SEQ_LENGTH = {"baseline": 256, "lst": 128}


def preprocess_segments(corpus: Path, tokenizer: Path, out: Path) -> str:
    """The training speech cut into word-aligned segments: whole demo utterances (up to a minute)
    do not fit a fine-tuning sample, and a piece cut before its answer marker trains on nothing."""
    return preprocess_once(corpus / "speech_train.jsonl", out / "data" / "segments", "speech", tokenizer,
                           "--num-units", "501", "--segment-words", str(SEGMENT_WORDS))


def finetune_and_evaluate(task: str, model: str, out: Path, tokenizer: Path, segments_prefix: str, heldout: Path,
                          iters: int, max_segments: int, asr_checkpoint: Path | None = None) -> dict:
    """Fine-tune the pretrained ``model`` for ASR or TTS on speech segments (loss on the answer only,
    as in examples/finetune_{asr,tts}.sh) and evaluate the starting point and the result on held-out
    segments cut the same way."""
    run_dir = out / "finetune" / f"{model}_{task}"
    pretrained = out / "runs" / model / "checkpoints"
    run([sys.executable, "pretrain_lst.py", "--config", "examples/configs/debug.yaml", "--model", model,
         "--model-flavour", "demo", "--tokenizer-model", str(tokenizer), "--data-path", segments_prefix,
         "--data-mode", task, "--data-cache-path", str(out / "index_cache"),
         "--seq-length", str(FINETUNE_SEQ_LENGTH[model]), "--micro-batch-size", "4", "--global-batch-size", "8",
         "--lr", "3e-3", "--lr-warmup-iters", str(max(iters // 20, 1)), "--train-iters", str(iters),
         "--log-interval", str(max(iters // 8, 1)), "--eval-iters", "0", "--split", "100,0,0",
         "--load", str(pretrained), "--finetune", "--save", str(run_dir / "checkpoints"),
         "--save-interval", "1000000"])
    round_trip = ["--asr-checkpoint", str(asr_checkpoint)] if asr_checkpoint is not None else []
    results = {}
    for label, checkpoint in (("start", pretrained), ("finetuned", run_dir / "checkpoints")):
        output = run_dir / f"eval_{label}.json"
        run([sys.executable, "tools/evaluate_asr_tts.py", "--task", task, "--checkpoint", str(checkpoint),
             "--heldout", str(heldout), "--segment-words", str(SEGMENT_WORDS), "--max-segments", str(max_segments),
             *round_trip, "--output", str(output)])
        results[label] = json.loads(output.read_text())
    results["checkpoint"] = run_dir / "checkpoints"
    results["iterations"] = iters
    return results


LISTENING_THRESHOLD = 0.05  # nats per token: below this the prompt barely changes the answer's NLL


def finetune_section(finetuned: dict) -> list[str]:
    """Markdown for the ASR/TTS fine-tuning results: start vs fine-tuned for each model, and
    whether the fine-tuned model reads its prompt (``conditioning_gain``) or only its answers' format."""
    metrics = {"asr": [("wer", "word error rate"), ("answer_nll", "transcript NLL (nats/token)"),
                       ("conditioning_gain", "NLL gain from the speech (nats/token, higher is better)")],
               "tts": [("uer", "unit error rate"), ("answer_nll", "unit NLL (nats/token)"),
                       ("conditioning_gain", "NLL gain from the text (nats/token, higher is better)"),
                       ("round_trip_wer", "round-trip WER (own ASR)"),
                       ("global_steps_per_second", "global steps per second of speech"),
                       ("wall_seconds_per_second", "wall seconds per second of speech")]}
    first = next(iter(finetuned.values()), {})
    lines = ["## Fine-tuning: ASR and TTS", "",
             f"Each pretrained model is fine-tuned for {first.get('iterations', '?')} steps on the demo's training "
             f"speech cut into {SEGMENT_WORDS}-word segments (ASR: speech then `<t>` transcript; TTS: text then `<s>` "
             f"units; loss on the answer only) and evaluated on {first.get('start', {}).get('segments', '?')} held-out "
             "segments cut the same way, before and after. Lower is better except where marked. The *gain* rows "
             "compare the answer's NLL given its own prompt with the NLL given another segment's prompt: near zero, "
             "the model has learned what answers look like but does not read the speech (ASR) or text (TTS).", "",
             "| task | model | metric | start | fine-tuned |", "|---|---|---|---|---|"]
    per_second = {"global_steps_per_second", "wall_seconds_per_second"}
    for (model, task), result in sorted(finetuned.items()):
        for key, label in metrics[task]:
            start, tuned = (None if key in per_second and not result[which].get("mean_generated_seconds")
                            else result[which].get(key) for which in ("start", "finetuned"))
            if start is None and tuned is None:
                continue
            lines.append(f"| {task.upper()} | {model} | {label} | {_number(start)} | {_number(tuned)} |")
    lines.append("")
    for (model, task), result in sorted(finetuned.items()):
        tuned, start = result["finetuned"], result["start"]
        error, name = ("wer", "WER") if task == "asr" else ("uer", "unit error rate")
        gain = tuned.get("conditioning_gain")
        reads = ("reads its prompt" if gain is not None and gain >= LISTENING_THRESHOLD
                 else "hardly reads its prompt (it mostly learned the answers' format and language)")
        lines.append(f"- {task.upper()} {model}: {name} {_number(start.get(error))} -> {_number(tuned.get(error))}, "
                     f"answer NLL {_number(start.get('answer_nll'))} -> {_number(tuned.get('answer_nll'))}; "
                     f"the fine-tuned model {reads} (gain {_number(gain)} nats/token).")
    return lines + [""]


def _number(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "- (no speech generated)"


def patch_sample_statistics(speech_prefix: str, tokenizer: Path, out: Path, num_samples: int) -> dict:
    """Patch lengths and compression of interleaved demo samples under each patching strategy."""
    from megatron_lst.data.blending import build_lst_datasets
    from megatron_lst.data.datasets import LSTDatasetConfig
    from megatron_lst.demo.report import patch_statistics
    from megatron_lst.patching import PatchingConfig
    from megatron_lst.tokenizer import JointTokenizer
    from megatron_lst.training.initialize import initialize_distributed

    initialize_distributed()  # megatron-core's dataset cache needs a process group
    vocab = JointTokenizer.from_file(tokenizer).vocab
    config = LSTDatasetConfig(random_seed=1, sequence_length=256, blend=([speech_prefix], None), split="1,0,0",
                              vocab=vocab, path_to_cache=str(out / "index_cache"))
    dataset = build_lst_datasets(config, [num_samples, 0, 0])[0]
    samples = [dataset[i] for i in range(min(num_samples, len(dataset)))]
    strategies = {
        "static p=4": PatchingConfig(strategy="static", patch_size=4),
        "aligned sil_sep": PatchingConfig(strategy="aligned", silence_mode="sil_sep"),
        "aligned sil_merged": PatchingConfig(strategy="aligned", silence_mode="sil_merged"),
        "baseline (p=1)": PatchingConfig(strategy="static", patch_size=1),
    }
    return patch_statistics(samples, vocab, strategies)


def write_report(out: Path, runs: dict[str, list[dict]], evaluations: dict, patch_stats: dict,
                 finetuned: dict, settings: dict, elapsed: float, switches: dict | None = None,
                 variants: list[Variant] | None = None) -> Path:
    from megatron_lst.demo import report as rep

    rep.plot_loss_vs_flops(runs, out / "loss_vs_flops.png")
    rep.plot_patch_lengths({k: v for k, v in patch_stats.items() if "baseline" not in k}, out / "patch_lengths.png")
    rep.plot_tokens_per_position(patch_stats, out / "tokens_per_position.png")
    rows = rep.accuracy_rows(evaluations)
    for kind in sorted({r["benchmark"] for r in rows}):
        rep.plot_accuracy(rows, kind, out / f"accuracy_{kind}.png")
    summaries = {name: rep.summarise_run(r) for name, r in runs.items()}
    control = CONTROL_DESCRIPTIONS[settings["control"]]
    lines = ["# megatron-lst demo report", "",
             f"Corpus built, models trained and evaluated in {elapsed / 60:.1f} minutes on this machine "
             f"(2 CPU cores). Settings: `{json.dumps(settings)}`.", "",
             f"## Training ({control[0]})", "", control[2], ""]
    if variants:
        lines += ["Runs: " + "; ".join(f"`{v.name}`: {v.description}" for v in variants) + "."
                  + (f" Cut from this quick run to fit its time budget: {', '.join(QUICK_CUT)}." if settings.get("quick")
                     else ""), ""]
    lines += [*rep.training_table(runs), "", "![loss vs FLOPs](loss_vs_flops.png)", ""]
    if "lst" in summaries and summaries["lst"]["valid_loss"] is not None and summaries["baseline"]["valid_loss"] is not None:
        base, lst = summaries["baseline"], summaries["lst"]
        winner = "LST" if lst["valid_loss"] < base["valid_loss"] else "the baseline"
        lines += [f"At {control[1]} {winner} reaches the lower validation loss "
                  f"({lst['valid_loss']:.4f} LST vs {base['valid_loss']:.4f} baseline, nats per token); "
                  f"LST saw {lst['raw_tokens'] or 0:.0f} raw tokens vs {base['raw_tokens'] or 0:.0f}.", ""]
    lines += ["## Patching of the interleaved demo data", "",
              "| strategy | mean units per speech patch | raw tokens per global position |", "|---|---|---|"]
    lines += [f"| {name} | {entry['mean_speech_patch_length']:.2f} | {entry['tokens_per_position']:.2f} |"
              for name, entry in patch_stats.items()]
    lines += ["", "![patch lengths](patch_lengths.png)", "", "![tokens per position](tokens_per_position.png)", "",
              "## Evaluation", ""]
    if rows:
        lines += ["Held-out benchmarks (documents never trained on), accuracy by the `mean` log-prob of the ending "
                  "(per speech unit or text token, so the BPE baseline's pieces are scored per unit like every "
                  "other model's) with 95% Wilson intervals, every run side by side; the full table below also has "
                  "the `sum` and `seq_nll` scores. StoryCloze-like and HellaSwag-like items are expected near "
                  "chance at this scale (1/2 and 1/4). Topic StoryCloze's distractor is a sentence of similar length from an "
                  "unrelated held-out document. The lexical test (sWUGGY-like) puts a held-out word heard in "
                  "training against a non-word with a few letters changed (the full demo: four letters of a word "
                  "of 9+ letters; --quick: three of 7+), both spoken by the demo's voice with nothing "
                  "before them; read its `mean` score (espeak speaks non-words a little longer, which `sum` "
                  "rewards). Rows marked *aligned scoring* patch every word and silence of the speech as one "
                  "patch (the benchmark's word times), as the paper scored its aligned models; the others are "
                  "patched static.", "",
                  *[line for kind in sorted({r["benchmark"] for r in rows})
                    for line in (*rep.accuracy_matrix([r for r in rows if r["benchmark"] == kind], "mean",
                                                      list(evaluations)), "")],
                  "<details><summary>every score</summary>", "", *rep.evaluation_table(rows), "", "</details>", ""]
        lines += [f"![{kind}](accuracy_{kind}.png)" for kind in sorted({r["benchmark"] for r in rows})]
        skipped = {f"{m}/{k}": v.get("skipped") for m, ks in evaluations.items() for k, v in ks.items() if v.get("skipped")}
        if skipped:
            lines += ["", "Skipped directions: " + json.dumps(skipped)]
    else:
        lines += ["No evaluation was run."]
    if switches:
        lines += ["", *switch_section(switches, rows)]
    lines += ["", *finetune_section(finetuned)]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def switch_section(switches: dict, rows: list[dict]) -> list[str]:
    """Markdown for the patch-boundary comparison: the token that ends a speech span, scored with
    the paper's and the causal rule's patches, and the S->T / T->S accuracies of both static runs."""
    from megatron_lst.demo import report as rep

    lines = ["## Patch boundaries: the paper's rule vs strictly causal", "",
             "Under the paper's static rule a speech span's short last patch closes where the span ends, so the "
             "prediction of the token after the span (`<t>` before text, EOS at the end) already sees that the span "
             "ended; generation cannot. `--patch-boundary causal` lets that token join the open patch instead. Each "
             "row scores the switch token of held-out speech segments with both rules' patches: for a paper-trained "
             "run the paper column is what teacher-forced validation measures, the causal column what generation "
             "gets; a causal-trained run reads the same patches either way. Lower is better.", "",
             *rep.switch_token_table(switches), ""]
    static_runs = [name for name in ("lst-static", "lst-static-causal") if name in switches]
    cross = [r for r in rows if r["model"] in static_runs and r["direction"] in ("S->T", "T->S") and r["score"] == "mean"]
    if cross:
        lines += ["S->T and T->S accuracy (`mean` score) of the two static runs:", "",
                  *rep.accuracy_matrix(cross, "mean", static_runs), ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="output folder (corpus, data, runs, report)")
    parser.add_argument("--quick", action="store_true", help="tiny corpus and short training (CI)")
    parser.add_argument("--iters", type=int, default=None, help="training iterations of the baseline, default 400 "
                        "(30 with --quick) (and of LST "
                        "under --control compute; under --control flops they set the FLOPs budget)")
    parser.add_argument("--control", choices=sorted(CONTROL_DESCRIPTIONS), default="compute",
                        help="compute: equal iterations and positions per step (the paper's compute-controlled "
                             "runs); flops: LST stops on the FLOPs the baseline spent")
    parser.add_argument("--finetune-iters", type=int, default=None,
                        help="ASR/TTS fine-tuning steps per model (default 100; 6 with --quick). At demo scale the "
                             "models start to read their input only after ~1000+ steps: see the report's gain rows")
    args = parser.parse_args(argv)
    started = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # 400: the baseline's speech loss drops sharply between iterations ~300 and ~400 of a 400-step
    # schedule (validation 5.5 -> 4.3 nats); at 200 its lexical S->S score sat at chance in some builds
    iters = args.iters or (30 if args.quick else 400)

    stage("1/7 corpus")
    corpus = build_corpus(out, args.quick)
    stage("2/7 tokenizer")
    tokenizer = train_tokenizer(corpus, out, vocab_size=1000 if args.quick else 2000)
    print(f"  {tokenizer}")
    stage("3/7 preprocess")
    speech, text = preprocess(corpus, tokenizer, out)
    seq_length = 128 if args.quick else 256
    common = ["--config", "examples/configs/debug.yaml", "--model-flavour", "demo", "--tokenizer-model", str(tokenizer),
              "--data-path", "0.33", speech, "0.67", text, "--data-cache-path", str(out / "index_cache"),
              "--seq-length", str(seq_length), "--micro-batch-size", "4", "--global-batch-size", "8",
              "--train-iters", str(iters), "--lr-warmup-iters", str(max(iters // 10, 1)),
              "--log-interval", str(max(iters // 20, 1)), "--eval-interval", str(max(iters // 4, 1)),
              "--eval-iters", "4", "--split", "90,10,0"]
    (out / "runs").mkdir(exist_ok=True)
    unit_bpe = train_demo_unit_bpe(corpus, out, vocab_size=QUICK_UNIT_BPE_PIECES if args.quick else DEMO_UNIT_BPE_PIECES)
    variants = pretraining_variants(args.quick, unit_bpe)
    runs: dict[str, list[dict]] = {}
    for number, variant in enumerate(variants, start=1):
        extra = list(variant.flags)
        if args.control == "flops" and variant.model == "lst":
            extra = flops_matched_schedule(runs["baseline"], common, extra, out, variant.name)
        stage(f"4/7 pretrain {number}/{len(variants)}: {variant.name} ({variant.description}), {iters} iterations"
              + (" or the baseline's FLOPs" if args.control == "flops" and variant.model == "lst" else ""))
        runs[variant.name] = read_metrics(train(variant.model, common, out, extra, name=variant.name))
    stage("5/7 evaluate on held-out story completion and the speech-span switch tokens")
    benchmarks = demo_benchmarks(corpus, args.quick)
    paths = build_benchmarks(corpus, out, benchmarks)
    evaluations = {name: evaluate(name, out, benchmarks, paths, max_length=4 * seq_length) for name in runs}
    aligned = [benchmark for benchmark in benchmarks if benchmark.kind in ALIGNED_SCORING_BENCHMARKS]
    for name in ALIGNED_SCORING_RUNS:  # runs trained with aligned patches are also scored the paper's aligned way
        if name in runs:
            evaluations[f"{name} (aligned scoring)"] = evaluate(name, out, aligned, paths, 4 * seq_length, "aligned")
    switches = {name: evaluate_switch_tokens(name, out, corpus, max_segments=16 if args.quick else 64)
                for name in runs if name in SWITCH_TOKEN_RUNS}
    stage("6/7 fine-tune ASR and TTS from both pretrained models")
    segments = preprocess_segments(corpus, tokenizer, out)
    finetune_iters = args.finetune_iters or (6 if args.quick else 100)
    finetuned = {}
    for model in FINETUNED_RUNS:
        for task in ("asr", "tts"):
            asr = finetuned[(model, "asr")]["checkpoint"] if task == "tts" else None
            finetuned[(model, task)] = finetune_and_evaluate(
                task, model, out, tokenizer, segments, corpus / "speech_heldout.jsonl",
                iters=finetune_iters, max_segments=4 if args.quick else 48, asr_checkpoint=asr)
    stage("7/7 report")
    patch_stats = patch_sample_statistics(speech, tokenizer, out, num_samples=20 if args.quick else 100)
    settings = {"quick": args.quick, "control": args.control, "iterations": iters, "seq_length": seq_length,
                "finetune_iterations": finetune_iters, "unit_bpe_pieces": QUICK_UNIT_BPE_PIECES if args.quick else DEMO_UNIT_BPE_PIECES}
    report = write_report(out, runs, evaluations, patch_stats, finetuned, settings, time.time() - started,
                          switches=switches, variants=variants)
    print(report.read_text())
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
