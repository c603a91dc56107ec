"""The demo's report: markdown tables and PNG plots from the runs' metrics and evaluation results.

Kept apart from ``tools/run_demo.py`` (which only orchestrates) so each plot is a small function of
plain data: loss vs FLOPs per model, accuracy bars with confidence intervals per direction, speech
patch-length histograms per patching strategy, and tokens per global position.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()] if Path(path).is_file() else []


SHARE_SO_FAR = "share_so_far_"  # --log-json key prefix of a blended dataset's running token share


def summarise_run(rows: list[dict]) -> dict:
    """The last training and validation numbers of one run."""
    train_rows = [r for r in rows if r["kind"] == "train"]
    valid_rows = [r for r in rows if r["kind"] == "valid"]
    last_train = train_rows[-1] if train_rows else {}
    last_valid = valid_rows[-1] if valid_rows else {}
    return {
        "iterations": last_train.get("iteration"),
        "flops": last_train.get("flops_so_far"),
        "raw_tokens": last_train.get("tokens_so_far"),
        "train_loss": last_train.get("lm_loss"),
        "valid_loss": last_valid.get("lm_loss"),
        "valid_speech_loss": last_valid.get("speech_loss"),
        "valid_text_loss": last_valid.get("text_loss"),
        "token_shares": {key[len(SHARE_SO_FAR):]: value for key, value in last_train.items()
                         if key.startswith(SHARE_SO_FAR)},
    }


def smooth(values: list[float], weight: float = 0.9) -> np.ndarray:
    """Exponential moving average (bias-corrected, as TensorBoard's smoothing): the trend of a
    noisy per-step training loss."""
    smoothed, average = [], 0.0
    for step, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        smoothed.append(average / (1 - weight ** step))
    return np.asarray(smoothed)


def _model_colours(names: Iterable[str]) -> dict[str, tuple]:
    plt = _pyplot()
    palette = plt.get_cmap("tab10")
    return {name: palette(index % 10) for index, name in enumerate(names)}


def _legend_outside(figure, handles: list, labels: list[str]) -> None:
    """One legend for the figure, to the right of its panels, so no label covers a curve."""
    figure.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def plot_loss_vs_flops(runs: dict[str, list[dict]], path: Path) -> None:
    """Training loss (smoothed; the raw per-step values faint behind it) and validation loss (markers)
    of every model against training FLOPs, one colour per model."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    figure, (train_axis, valid_axis) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colours = _model_colours(runs)
    for name, rows in runs.items():
        colour = colours[name]
        train_rows = [r for r in rows if r["kind"] == "train" and "flops_so_far" in r]
        flops = [r["flops_so_far"] for r in train_rows]
        losses = [r["lm_loss"] for r in train_rows]
        train_axis.plot(flops, losses, color=colour, alpha=0.15, linewidth=0.8)
        train_axis.plot(flops, smooth(losses), color=colour, linewidth=1.8)
        flops_at = {r["iteration"]: r["flops_so_far"] for r in train_rows}
        points = [(flops_at[r["iteration"]], r["lm_loss"]) for r in rows
                  if r["kind"] == "valid" and r["iteration"] in flops_at]
        if points:
            valid_axis.plot(*zip(*points), "o-", color=colour, markersize=5)
    for axis, title in ((train_axis, "training loss (smoothed; raw faint)"), (valid_axis, "validation loss")):
        axis.set_xlabel("training FLOPs")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    train_axis.set_ylabel("loss (nats/token)")
    handles = [Line2D([], [], color=colours[name], linewidth=2) for name in runs]
    _legend_outside(figure, handles, list(runs))
    figure.tight_layout()
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def accuracy_rows(evaluations: dict[str, dict[str, dict]]) -> list[dict]:
    """Flatten ``{model: {benchmark: tools/evaluate.py --output json}}`` to one row per accuracy;
    ``chance`` is 1 / the number of endings of the direction's items."""
    rows = []
    for model, benchmarks in evaluations.items():
        for benchmark, result in benchmarks.items():
            for direction, entry in result.get("results", {}).items():
                items = entry.get("items") or []
                endings = len(next(iter(items[0]["scores"].values()))) if items else 0
                for score, accuracy in entry["accuracy"].items():
                    rows.append({"model": model, "benchmark": benchmark, "direction": direction, "score": score,
                                 "chance": 1 / endings if endings else None, **accuracy})
    return rows


SCORES = ("mean", "sum", "seq_nll")  # tools/evaluate.py's three ways to rank endings


def plot_accuracy(rows: list[dict], benchmark: str, path: Path, scores: tuple[str, ...] = SCORES) -> None:
    """Accuracy per direction for each model on one benchmark, one panel per score, with 95% Wilson
    interval whiskers and the chance level."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    rows = [r for r in rows if r["benchmark"] == benchmark]
    scores = tuple(score for score in scores if any(r["score"] == score for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    directions = sorted({r["direction"] for r in rows})
    colours = _model_colours(models)
    figure, axes = plt.subplots(1, len(scores), figsize=(4.5 * len(scores), 4), sharey=True, squeeze=False)
    width = 0.8 / max(len(models), 1)
    for axis, score in zip(axes[0], scores):
        for index, model in enumerate(models):
            found = {r["direction"]: r for r in rows if r["model"] == model and r["score"] == score}
            values = [found[d]["accuracy"] if d in found else np.nan for d in directions]
            below = [found[d]["accuracy"] - found[d]["ci95_low"] if d in found else 0 for d in directions]
            above = [found[d]["ci95_high"] - found[d]["accuracy"] if d in found else 0 for d in directions]
            axis.bar(np.arange(len(directions)) + index * width, values, width, yerr=[below, above], capsize=2,
                     color=colours[model])
        chance = {r["chance"] for r in rows if r.get("chance")}
        for level in chance:
            axis.axhline(level, color="black", linestyle="--", linewidth=1)
        axis.set_xticks(np.arange(len(directions)) + width * (len(models) - 1) / 2, directions)
        axis.set_ylim(0, 1)
        axis.set_title(f"{score} score")
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("accuracy (95% interval)")
    figure.suptitle(f"{benchmark}: accuracy by direction (dashed: chance)")
    _legend_outside(figure, [Patch(color=colours[m]) for m in models], models)
    figure.tight_layout()
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def patch_statistics(samples: Iterable[dict], vocab, strategies: dict) -> dict[str, dict]:
    """Speech patch lengths and tokens per global position for each named ``PatchingConfig``."""
    from megatron_lst.patching import compute_patches

    samples = list(samples)
    stats = {}
    for name, config in strategies.items():
        lengths: list[np.ndarray] = []
        tokens = positions = 0
        for sample in samples:
            patches = compute_patches(sample["tokens"], sample["is_speech"], config, vocab,
                                      segment_ids=sample["segment_ids"], is_silence=sample["is_silence"],
                                      document_ids=sample["document_ids"])
            patch_lengths = np.asarray(patches.patch_lengths)[: int(patches.num_patches)]
            starts = np.asarray(patches.patch_starts)[: int(patches.num_patches)]
            speech_patch = np.asarray(sample["is_speech"])[starts]
            lengths.append(patch_lengths[speech_patch])
            tokens += len(sample["tokens"])
            positions += int(patches.num_patches)
        all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, int)
        stats[name] = {
            "speech_patch_lengths": all_lengths,
            "mean_speech_patch_length": float(all_lengths.mean()) if all_lengths.size else 0.0,
            "tokens_per_position": tokens / max(positions, 1),
        }
    return stats


def plot_patch_lengths(stats: dict[str, dict], path: Path) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    top = max((int(s["speech_patch_lengths"].max()) for s in stats.values() if s["speech_patch_lengths"].size), default=1)
    bins = np.arange(1, min(top, 40) + 2) - 0.5
    for name, entry in stats.items():
        axis.hist(np.minimum(entry["speech_patch_lengths"], 40), bins=bins, histtype="step", density=True,
                  label=f"{name} (mean {entry['mean_speech_patch_length']:.1f})")
    axis.set_xlabel("speech units per patch")
    axis.set_ylabel("fraction of speech patches")
    axis.set_title("speech patch lengths by strategy")
    axis.legend(frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_tokens_per_position(stats: dict[str, dict], path: Path) -> None:
    """Horizontal bars (the strategy names are long), each labelled with its value."""
    plt = _pyplot()
    names = list(stats)
    values = [stats[n]["tokens_per_position"] for n in names]
    figure, axis = plt.subplots(figsize=(6, 0.6 * len(names) + 1.2))
    bars = axis.barh(names, values, color="tab:blue")
    axis.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3)
    axis.invert_yaxis()  # first strategy on top
    axis.set_xlim(0, max(values, default=1) * 1.15)
    axis.set_xlabel("raw tokens per global position (speech-text samples)")
    axis.set_title("compression of the global sequence")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and value == value else "-"


def training_table(runs: dict[str, list[dict]]) -> list[str]:
    """One row per run; the last column is the realised share of the raw tokens each blended
    dataset supplied over the whole run (what the --data-path weights ask for, by tokens)."""
    lines = ["| model | iterations | FLOPs | raw tokens | train loss | valid loss | valid speech loss | valid text loss "
             "| token shares |", "|---|---|---|---|---|---|---|---|---|"]
    for name, rows in runs.items():
        s = summarise_run(rows)
        shares = ", ".join(f"{dataset} {share:.1%}" for dataset, share in s["token_shares"].items()) or "-"
        lines.append(
            f"| {name} | {_fmt(s['iterations'], 'd')} | {_fmt(s['flops'], '.3e')} | {_fmt(s['raw_tokens'], '.0f')} | "
            f"{_fmt(s['train_loss'], '.4f')} | {_fmt(s['valid_loss'], '.4f')} | "
            f"{_fmt(s['valid_speech_loss'], '.4f')} | {_fmt(s['valid_text_loss'], '.4f')} | {shares} |"
        )
    return lines


def evaluation_table(rows: list[dict]) -> list[str]:
    lines = ["| benchmark | direction | model | score | accuracy | 95% interval | items |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["benchmark"], r["direction"], r["score"], r["model"])):
        lines.append(f"| {r['benchmark']} | {r['direction']} | {r['model']} | {r['score']} | {r['accuracy']:.3f} | "
                     f"[{r['ci95_low']:.3f}, {r['ci95_high']:.3f}] | {r['total']} |")
    return lines


def accuracy_matrix(rows: list[dict], score: str, models: list[str]) -> list[str]:
    """One line per model, one column per (benchmark, direction): accuracy by ``score`` with its
    95% interval, so the variants read side by side (the full table lists every score)."""
    columns = sorted({(r["benchmark"], r["direction"]) for r in rows if r["score"] == score})
    found = {(r["model"], r["benchmark"], r["direction"]): r for r in rows if r["score"] == score}
    lines = ["| model | " + " | ".join(f"{benchmark} {direction}" for benchmark, direction in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for model in models:
        cells = []
        for benchmark, direction in columns:
            r = found.get((model, benchmark, direction))
            cells.append(f"{r['accuracy']:.2f} [{r['ci95_low']:.2f}, {r['ci95_high']:.2f}]" if r else "-")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def switch_token_table(results: dict[str, dict]) -> list[str]:
    """``{run: tools/evaluate_switch_tokens.py json}`` -> the NLL of the token ending a speech span,
    scored with each patch rule's patches (all segments, and those whose last patch is partial)."""
    lines = ["| model | trained with | switch token | NLL, paper patches | NLL, causal patches | "
             "NLL where the last patch is partial (paper / causal) |", "|---|---|---|---|---|---|"]
    for run, result in results.items():
        for switch in ("<t> after speech", "EOS after speech"):
            by_rule = result.get(switch, {})
            paper, causal = by_rule.get("paper") or by_rule.get("none"), by_rule.get("causal") or by_rule.get("none")
            if paper is None:
                continue
            partial = ("-" if result.get("trained_patch_boundary") is None  # no patches, nothing partial
                       else f"{paper['nll_partial_last_patch']:.4f} / {causal['nll_partial_last_patch']:.4f}")
            lines.append(f"| {run} | {result.get('trained_patch_boundary') or 'no patches'} | {switch} | "
                         f"{paper['nll']:.4f} | {causal['nll']:.4f} | {partial} |")
    return lines
