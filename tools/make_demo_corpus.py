#!/usr/bin/env python
"""Build the offline demo corpus: real English text, espeak-ng speech, 25 Hz units, word alignments.

    python tools/make_demo_corpus.py --out demo_out/corpus            # ~3 h of speech, ~2 min
    python tools/make_demo_corpus.py --out /tmp/ci_corpus --quick     # ~3 min of speech, seconds

Needs `pip install --no-deps gensim==4.4.0` (the text) and `pip install espeakng-loader==0.2.4`
(the voice), plus scipy and faiss-cpu or scikit-learn. Writes into --out:

    speech_train.jsonl / speech_heldout.jsonl   {"id", "units", "words": [{"text","start","end"}], "text"}
    speech_info.jsonl                           voice, rate, pitch, duration and document of each utterance
    text_train.jsonl / text_heldout.jsonl       {"text"}: one document per line
    heldout_documents.jsonl                     {"id", "sentences"}: whole held-out documents
    unit_extractor.npz                          PCA + centroids (tools/extract_units.py --log-mel)
    manifest.json                               cache key, config and the summary printed below

Held-out documents never appear in any training file. Running again with the same settings, text
and code returns at once (the manifest's key matches).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_lst.demo.corpus import QUICK_CONFIG, CorpusConfig, build_corpus  # noqa: E402
from megatron_lst.demo.espeak import DEFAULT_VOICES  # noqa: E402
from megatron_lst.demo.text_source import SOURCES  # noqa: E402
from megatron_lst.demo.units import FrontEndConfig  # noqa: E402
from megatron_lst.validation import (ArgumentParser, InputError, exit_on_input_error,  # noqa: E402
                                     require_positive_finite)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = CorpusConfig()
    parser = ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out/corpus",
                        help="folder for the corpus files (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny corpus for CI: about 3 minutes of speech from the Lee news "
                             "stories only, built in seconds (other size/source flags still apply)")
    parser.add_argument("--hours", type=float,
                        help=f"hours of speech to synthesise, train + held-out "
                             f"(default {defaults.hours}; {QUICK_CONFIG.hours} with --quick)")
    parser.add_argument("--speech-sources", nargs="+", choices=SOURCES,
                        help="texts to speak, in order, until --hours is reached "
                             f"(default: {' '.join(defaults.speech_sources)})")
    parser.add_argument("--text-sources", nargs="+", choices=SOURCES,
                        help="texts for the text-only files (default: all sources)")
    parser.add_argument("--voices", nargs="+",
                        help="espeak-ng voices to draw from per utterance, e.g. en-us en-us+f3 "
                             f"(default: {' '.join(DEFAULT_VOICES)})")
    parser.add_argument("--min-rate", type=int, default=defaults.min_rate,
                        help="slowest speaking rate, words per minute (default: %(default)s)")
    parser.add_argument("--max-rate", type=int, default=defaults.max_rate,
                        help="fastest speaking rate, words per minute (default: %(default)s)")
    parser.add_argument("--heldout-percent", type=float, default=defaults.heldout_percent,
                        help="share of documents held out from training, and of speech hours "
                             "spoken from them (default: %(default)s)")
    parser.add_argument("--max-sentences", type=int, default=defaults.max_sentences_per_utterance,
                        help="longest utterance in sentences; longer documents are cut into "
                             "several utterances (default: %(default)s)")
    parser.add_argument("--num-units", type=int, default=defaults.front_end.num_units,
                        help="k-means clusters = size of the unit vocabulary (default: %(default)s)")
    parser.add_argument("--pca-dim", type=int, default=defaults.front_end.pca_dim,
                        help="dimensions kept by the whitening PCA before k-means "
                             "(default: %(default)s)")
    parser.add_argument("--extractor", metavar="NPZ",
                        help="reuse a saved unit_extractor.npz instead of fitting a new one, so "
                             "this corpus shares another corpus' units")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed for the held-out split, voices and k-means (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8),
                        help="synthesis processes (default: number of CPU cores, at most 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> CorpusConfig:
    base = QUICK_CONFIG if args.quick else CorpusConfig()
    front_end = FrontEndConfig(pca_dim=args.pca_dim, num_units=args.num_units)
    return replace(
        base,
        hours=args.hours if args.hours is not None else base.hours,
        speech_sources=tuple(args.speech_sources or base.speech_sources),
        text_sources=tuple(args.text_sources or base.text_sources),
        voices=tuple(args.voices or base.voices),
        min_rate=args.min_rate, max_rate=args.max_rate,
        heldout_percent=args.heldout_percent,
        max_sentences_per_utterance=args.max_sentences,
        front_end=front_end, seed=args.seed)


def check_flags(args: argparse.Namespace) -> None:
    """Refuse numbers that would build a wrong or empty corpus, before any synthesis (minutes of work)."""
    if args.hours is not None:
        require_positive_finite(args.hours, "--hours")
    for flag, value, low in (("--min-rate", args.min_rate, 1), ("--max-rate", args.max_rate, args.min_rate),
                             ("--max-sentences", args.max_sentences, 1), ("--num-units", args.num_units, 2),
                             ("--pca-dim", args.pca_dim, 1), ("--workers", args.workers, 1)):
        if value < low:
            raise InputError(f"must be >= {low}, got {value}", field=flag)
    if not 0 <= args.heldout_percent < 100:
        raise InputError(f"must be in [0, 100), got {args.heldout_percent}", field="--heldout-percent")
    if args.extractor and not Path(args.extractor).is_file():
        raise InputError("no such file", file=args.extractor, field="--extractor")


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_flags(args)
    config = config_from_args(args)
    manifest = build_corpus(config, args.out, workers=args.workers,
                            extractor_path=args.extractor, progress=not args.no_progress)
    summary = manifest["summary"]
    state = "reused cached corpus" if summary["cached"] else f"built in {summary['build_seconds']} s"
    print(f"demo corpus in {args.out} ({state}, key {manifest['key']})")
    print(f"  speech: {summary['speech_hours']:.2f} h ({summary['speech_hours_heldout']:.2f} h "
          f"held out), {summary['utterances']} utterances from {summary['speech_documents']} "
          f"documents, {summary['spoken_words']:,} words, {summary['units']:,} units "
          f"(vocabulary {summary['num_units']}); {summary['utterances_skipped']} skipped")
    print(f"  text:   {summary['text_documents_train']} training documents "
          f"({summary['text_words_train']:,} words), {summary['text_documents_heldout']} held out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
