"""The main job: build a small real speech-text corpus, train the baseline and LST, report.

    python tools/run_demo.py --out demo_out            # ~20 minutes on 2 cores
    python tools/run_demo.py --out demo_out --quick    # a few minutes (what CI runs)

Stages (each cached or re-run as needed, progress printed throughout):
  1. corpus      tools/make_demo_corpus.py: gensim-wheel text, espeak-ng speech, log-mel k-means units
  2. tokenizer   a SentencePiece BPE trained on the training text
  3. preprocess  tools/preprocess_data.py: speech-text and text-only indexed datasets
  4. train       pretrain_lst.py for the baseline, then LST, compute-controlled as in the paper: the
                 same iterations and global positions per step (--control flops: LST instead stops on
                 the FLOPs the baseline spent)
  5. evaluate    held-out StoryCloze-/HellaSwag-like benchmarks (synthesised speech), all four
                 directions, with tools/evaluate.py
  6. fine-tune   ASR and TTS from both pretrained models; held-out WER / unit error / steps per second
  7. report      demo_out/report.md with the numbers and PNG plots
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_lst.demo.report import read_metrics, summarise_run  # noqa: E402


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


def flops_matched_schedule(baseline_metrics: list[dict], common: list[str], curriculum: list[str], out: Path) -> list[str]:
    """LST's flags to stop on the FLOPs the baseline spent (``--control flops``): a 3-step probe
    measures LST's FLOPs per step, and its schedule is fitted to the steps the budget lasts."""
    budget = summarise_run(baseline_metrics)["flops"]
    stage("4/7 measure LST's FLOPs per step (a 3-step probe), to fit its schedule to the budget")
    probe = summarise_run(read_metrics(train("lst", common, out, [*curriculum, "--train-iters", "3"], name="lst_probe")))
    lst_iters = max(int(budget // (probe["flops"] / 3)), 1)
    stage(f"4/7 train LST, curriculum patching, same FLOPs budget ({budget:.3e}): about {lst_iters} iterations")
    return [*curriculum, "--train-iters", str(lst_iters), "--train-flops", str(budget),
            "--lr-warmup-iters", str(max(lst_iters // 10, 1)), "--eval-interval", str(max(lst_iters // 4, 1))]


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


def build_benchmarks(corpus: Path, out: Path, max_items: int) -> dict[str, Path]:
    """Held-out StoryCloze-like and HellaSwag-like benchmarks, synthesised with the corpus's voice."""
    benchmarks = {}
    for kind in ("storycloze", "hellaswag"):
        text_file = out / "benchmarks" / f"{kind}_text.jsonl"
        speech_file = out / "benchmarks" / f"{kind}.jsonl"
        text_file.parent.mkdir(parents=True, exist_ok=True)
        if not speech_file.is_file():
            run([sys.executable, "-m", "megatron_lst.evaluation.benchmarks", "--heldout",
                 str(corpus / "heldout_documents.jsonl"), "--kind", kind, "--output", str(text_file),
                 "--max-items", str(max_items)])
            run([sys.executable, "tools/synthesize_benchmark.py", "--input", str(text_file), "--output",
                 str(speech_file), "--extractor", str(corpus / "unit_extractor.npz")])
        benchmarks[kind] = speech_file
    return benchmarks


def evaluate(model: str, out: Path, benchmarks: dict[str, Path], max_length: int) -> dict[str, dict]:
    results = {}
    for kind, path in benchmarks.items():
        output = out / "runs" / model / f"eval_{kind}.json"
        run([sys.executable, "tools/evaluate.py", "--checkpoint", str(out / "runs" / model / "checkpoints"),
             "--benchmark", str(path), "--directions", "ss", "tt", "st", "ts", "--max-length", str(max_length),
             "--batch-size", "8", "--output", str(output)])
        results[kind] = json.loads(output.read_text())
    return results


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
                 finetuned: dict, settings: dict, elapsed: float) -> Path:
    from megatron_lst.demo import report as rep

    rep.plot_loss_vs_flops(runs, out / "loss_vs_flops.png")
    rep.plot_patch_lengths({k: v for k, v in patch_stats.items() if "baseline" not in k}, out / "patch_lengths.png")
    rep.plot_tokens_per_position(patch_stats, out / "tokens_per_position.png")
    rows = rep.accuracy_rows(evaluations)
    for kind in sorted({r["benchmark"] for r in rows}):
        rep.plot_accuracy(rows, kind, "mean", out / f"accuracy_{kind}.png")
    summaries = {name: rep.summarise_run(r) for name, r in runs.items()}
    lines = ["# megatron-lst demo report", "",
             f"Corpus built, models trained and evaluated in {elapsed / 60:.1f} minutes on this machine "
             f"(2 CPU cores). Settings: `{json.dumps(settings)}`.", "",
             f"## Training ({CONTROL_DESCRIPTIONS[settings['control']][0]})", "",
             CONTROL_DESCRIPTIONS[settings["control"]][2], "",
             *rep.training_table(runs), "", "![loss vs FLOPs](loss_vs_flops.png)", ""]
    if "lst" in summaries and summaries["lst"]["valid_loss"] is not None and summaries["baseline"]["valid_loss"] is not None:
        base, lst = summaries["baseline"], summaries["lst"]
        winner = "LST" if lst["valid_loss"] < base["valid_loss"] else "the baseline"
        lines += [f"At {CONTROL_DESCRIPTIONS[settings['control']][1]} {winner} reaches the lower validation loss "
                  f"({lst['valid_loss']:.4f} LST vs {base['valid_loss']:.4f} baseline, nats per token); "
                  f"LST saw {lst['raw_tokens'] or 0:.0f} raw tokens vs {base['raw_tokens'] or 0:.0f}.", ""]
    lines += ["## Patching of the interleaved demo data", "",
              "| strategy | mean units per speech patch | raw tokens per global position |", "|---|---|---|"]
    lines += [f"| {name} | {entry['mean_speech_patch_length']:.2f} | {entry['tokens_per_position']:.2f} |"
              for name, entry in patch_stats.items()]
    lines += ["", "![patch lengths](patch_lengths.png)", "", "![tokens per position](tokens_per_position.png)", "",
              "## Evaluation", ""]
    if rows:
        lines += ["Held-out story completion (documents never trained on), accuracy with 95% Wilson intervals; "
                  "scores: `sum` and `mean` log-prob of the ending, `seq_nll` mean NLL of the whole sequence. "
                  "At this scale both models are expected near chance (1/2 StoryCloze-like, 1/4 HellaSwag-like).", "",
                  *rep.evaluation_table(rows), ""]
        lines += [f"![{kind}](accuracy_{kind}.png)" for kind in sorted({r["benchmark"] for r in rows})]
        skipped = {f"{m}/{k}": v.get("skipped") for m, ks in evaluations.items() for k, v in ks.items() if v.get("skipped")}
        if skipped:
            lines += ["", "Skipped directions: " + json.dumps(skipped)]
    else:
        lines += ["No evaluation was run."]
    lines += ["", *finetune_section(finetuned)]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="output folder (corpus, data, runs, report)")
    parser.add_argument("--quick", action="store_true", help="tiny corpus and short training (CI)")
    parser.add_argument("--iters", type=int, default=None, help="training iterations of the baseline (and of LST "
                        "under --control compute; under --control flops they set the FLOPs budget)")
    parser.add_argument("--control", choices=sorted(CONTROL_DESCRIPTIONS), default="compute",
                        help="compute: equal iterations and positions per step (the paper's compute-controlled "
                             "runs); flops: LST stops on the FLOPs the baseline spent")
    parser.add_argument("--finetune-iters", type=int, default=None,
                        help="ASR/TTS fine-tuning steps per model (default 300; 6 with --quick). At demo scale the "
                             "models start to read their input only after ~1000+ steps: see the report's gain rows")
    args = parser.parse_args(argv)
    started = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    iters = args.iters or (30 if args.quick else 200)

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
    stage("4/7 train the baseline")
    runs = {"baseline": read_metrics(train("baseline", common, out, []))}
    curriculum = ["--patching", "curriculum", "--curriculum-tau1", "0.333", "--curriculum-tau2", "0.667"]
    if args.control == "flops":
        lst_extra = flops_matched_schedule(runs["baseline"], common, curriculum, out)
    else:
        stage(f"4/7 train LST, curriculum patching, the same {iters} iterations and positions per step")
        lst_extra = curriculum
    runs["lst"] = read_metrics(train("lst", common, out, lst_extra))
    stage("5/7 evaluate on held-out story completion")
    benchmarks = build_benchmarks(corpus, out, max_items=12 if args.quick else 40)
    evaluations = {model: evaluate(model, out, benchmarks, max_length=4 * seq_length) for model in runs}
    stage("6/7 fine-tune ASR and TTS from both pretrained models")
    segments = preprocess_segments(corpus, tokenizer, out)
    finetune_iters = args.finetune_iters or (6 if args.quick else 300)
    finetuned = {}
    for model in runs:
        for task in ("asr", "tts"):
            asr = finetuned[(model, "asr")]["checkpoint"] if task == "tts" else None
            finetuned[(model, task)] = finetune_and_evaluate(
                task, model, out, tokenizer, segments, corpus / "speech_heldout.jsonl",
                iters=finetune_iters, max_segments=4 if args.quick else 48, asr_checkpoint=asr)
    stage("7/7 report")
    patch_stats = patch_sample_statistics(speech, tokenizer, out, num_samples=20 if args.quick else 100)
    settings = {"quick": args.quick, "control": args.control, "iterations": iters, "seq_length": seq_length,
                "finetune_iterations": finetune_iters}
    report = write_report(out, runs, evaluations, patch_stats, finetuned, settings, time.time() - started)
    print(report.read_text())
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
