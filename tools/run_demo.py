"""The main job: build a small real speech-text corpus, train the baseline and LST, report.

    python tools/run_demo.py --out demo_out            # ~20 minutes on 2 cores
    python tools/run_demo.py --out demo_out --quick    # a few minutes (what CI runs)

Stages (each cached or re-run as needed, progress printed throughout):
  1. corpus      tools/make_demo_corpus.py: gensim-wheel text, espeak-ng speech, log-mel k-means units
  2. tokenizer   a SentencePiece BPE trained on the training text
  3. preprocess  tools/preprocess_data.py: speech-text and text-only indexed datasets
  4. train       pretrain_lst.py for the baseline, then LST, under the same FLOPs budget
                 (compute-controlled: LST gets --train-flops = what the baseline spent)
  5. evaluate    tools/evaluate.py on held-out story-completion benchmarks, when available
  6. report      demo_out/report.md with the numbers and PNG plots
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def stage(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


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


def preprocess(corpus: Path, tokenizer: Path, out: Path) -> tuple[str, str]:
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    speech_prefix, text_prefix = data / "speech", data / "text"
    if not Path(f"{speech_prefix}_speech_document.idx").is_file():
        run([sys.executable, "tools/preprocess_data.py", "--input", str(corpus / "speech_train.jsonl"),
             "--output-prefix", str(speech_prefix), "--tokenizer-model", str(tokenizer), "--num-units", "501"])
    if not Path(f"{text_prefix}_text_document.idx").is_file():
        run([sys.executable, "tools/preprocess_data.py", "--input", str(corpus / "text_train.jsonl"),
             "--output-prefix", str(text_prefix), "--tokenizer-model", str(tokenizer), "--append-eod"])
    return f"{speech_prefix}_speech_document", f"{text_prefix}_text_document"


def train(model: str, common: list[str], out: Path, extra: list[str]) -> Path:
    run_dir = out / "runs" / model
    log_json = run_dir / "metrics.jsonl"
    if log_json.exists():
        log_json.unlink()
    run([sys.executable, "pretrain_lst.py", "--model", model, *common, "--save", str(run_dir / "checkpoints"),
         "--tensorboard-dir", str(run_dir / "tensorboard"), "--log-json", str(log_json), *extra],
        log_file=run_dir.parent / f"{model}.log" if run_dir.parent.exists() else None)
    return log_json


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def plot_loss_vs_flops(runs: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, rows in runs.items():
        train_rows = [r for r in rows if r["kind"] == "train"]
        axis.plot([r["flops_so_far"] for r in train_rows], [r["lm_loss"] for r in train_rows], label=name)
    axis.set_xlabel("training FLOPs")
    axis.set_ylabel("training loss (nats/token)")
    axis.set_title("loss vs compute")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def summarise(rows: list[dict]) -> dict:
    train_rows = [r for r in rows if r["kind"] == "train"]
    valid_rows = [r for r in rows if r["kind"] == "valid"]
    last = train_rows[-1] if train_rows else {}
    return {
        "iterations": last.get("iteration"),
        "flops": last.get("flops_so_far"),
        "raw tokens": last.get("tokens_so_far"),
        "final train loss": last.get("lm_loss"),
        "final valid loss": valid_rows[-1].get("lm_loss") if valid_rows else None,
        "valid speech loss": valid_rows[-1].get("speech_loss") if valid_rows else None,
        "valid text loss": valid_rows[-1].get("text_loss") if valid_rows else None,
    }


def write_report(out: Path, runs: dict[str, list[dict]], settings: dict, elapsed: float) -> Path:
    plot_loss_vs_flops(runs, out / "loss_vs_flops.png")
    lines = ["# megatron-lst demo report", "",
             f"Built and trained in {elapsed / 60:.1f} minutes on this machine. Settings: `{json.dumps(settings)}`.", "",
             "## Training (compute-controlled)", "",
             "| model | iterations | FLOPs | raw tokens | final train loss | valid loss | valid speech loss | valid text loss |",
             "|---|---|---|---|---|---|---|---|"]
    for name, rows in runs.items():
        s = summarise(rows)
        fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else "-"  # noqa: E731
        lines.append(f"| {name} | {fmt(s['iterations'], 'd')} | {fmt(s['flops'], '.3e')} | {fmt(s['raw tokens'], '.0f')} | "
                     f"{fmt(s['final train loss'], '.4f')} | {fmt(s['final valid loss'], '.4f')} | "
                     f"{fmt(s['valid speech loss'], '.4f')} | {fmt(s['valid text loss'], '.4f')} |")
    lines += ["", "![loss vs FLOPs](loss_vs_flops.png)", ""]
    if "lst" not in runs:
        lines += ["## LST", "", "LST training is not part of this build yet (`--model lst` is not available), "
                  "so only the baseline was trained.", ""]
    lines += ["## Evaluation", "", "Story-completion evaluation is not part of this build yet.", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="output folder (corpus, data, runs, report)")
    parser.add_argument("--quick", action="store_true", help="tiny corpus and short training (CI)")
    parser.add_argument("--iters", type=int, default=None, help="baseline training iterations (sets the FLOPs budget)")
    args = parser.parse_args(argv)
    started = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    iters = args.iters or (30 if args.quick else 400)

    stage("1/5 corpus")
    corpus = build_corpus(out, args.quick)
    stage("2/5 tokenizer")
    tokenizer = train_tokenizer(corpus, out, vocab_size=1000 if args.quick else 2000)
    print(f"  {tokenizer}")
    stage("3/5 preprocess")
    speech, text = preprocess(corpus, tokenizer, out)
    common = ["--config", "examples/configs/debug.yaml", "--tokenizer-model", str(tokenizer),
              "--data-path", "0.33", speech, "0.67", text, "--data-cache-path", str(out / "index_cache"),
              "--seq-length", "128", "--micro-batch-size", "4", "--global-batch-size", "8",
              "--lr-warmup-iters", str(max(iters // 10, 1)), "--log-interval", str(max(iters // 20, 1)),
              "--eval-interval", str(max(iters // 4, 1)), "--eval-iters", "4", "--split", "90,10,0"]
    (out / "runs").mkdir(exist_ok=True)
    stage("4/5 train baseline")
    runs = {"baseline": read_rows(train("baseline", common, out, ["--train-iters", str(iters)]))}
    budget = summarise(runs["baseline"])["flops"]
    if importlib.util.find_spec("megatron_lst.training.lst_task") is not None and budget:
        stage("4/5 train LST (same FLOPs budget)")
        lst_extra = ["--train-iters", str(iters * 20), "--train-flops", str(budget), "--lr-decay-iters", str(iters)]
        runs["lst"] = read_rows(train("lst", common, out, lst_extra))
    stage("5/5 report")
    report = write_report(out, runs, {"quick": args.quick, "baseline_iters": iters}, time.time() - started)
    print(report.read_text())
    print(f"\nreport: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
