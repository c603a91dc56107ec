#!/usr/bin/env python
"""Add speech to a text benchmark: espeak-ng speaks the prompt and each ending separately.

    python tools/synthesize_benchmark.py --input storycloze.jsonl --output storycloze_speech.jsonl
        --extractor demo_corpus/unit_extractor.npz  (one line)

Writes the same items with "units" on every prompt and ending (megatron_lst/evaluation/FORMAT.md), so
tools/evaluate.py can then run S->S, S->T and T->S as well as T->T. Each part also gets its word
times, "segments": [[start, end, "word"|"sil"], ...] in unit frames, tiling its units, from
espeak-ng's own word events, so aligned LST models can be scored with aligned patches
(tools/evaluate.py --patching). Use the unit extractor saved by
the demo corpus the model was trained on; other units would be a different codebook. Items espeak
cannot speak are left out and counted.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from megatron_lst.demo.espeak import espeak_available, get_espeak  # noqa: E402
from megatron_lst.demo.units import LogMelUnitExtractor  # noqa: E402
from megatron_lst.evaluation.items import read_items, write_items  # noqa: E402
from megatron_lst.evaluation.speech import PartSynthesizer, Voice, synthesize_items, unit_count  # noqa: E402
from megatron_lst.validation import ArgumentParser  # noqa: E402


MIN_RATE, MAX_RATE = 80, 450  # espeak-ng's speaking rates, words per minute


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="benchmark jsonl with text on every part")
    parser.add_argument("--output", required=True, help="benchmark jsonl to write, with units and word times added")
    parser.add_argument("--extractor", required=True, help="unit_extractor.npz of the demo corpus")
    parser.add_argument("--voice", default="en-us", help="espeak-ng voice (default en-us)")
    parser.add_argument("--rate", type=int, default=175,
                        help=f"speaking rate in words per minute, {MIN_RATE}-{MAX_RATE} (default 175)")
    parser.add_argument("--pitch", type=int, default=50, help="pitch 0-100 (default 50)")
    args = parser.parse_args(argv)

    # every argument is checked before the output is touched: a bad one leaves an earlier output as it was
    try:
        if not espeak_available():
            raise ValueError("espeak-ng is not available (pip install espeakng-loader)")
        if not MIN_RATE <= args.rate <= MAX_RATE:
            raise ValueError(f"--rate {args.rate} is outside espeak-ng's {MIN_RATE}-{MAX_RATE} words per minute")
        if not 0 <= args.pitch <= 100:
            raise ValueError(f"--pitch {args.pitch} is outside 0-100")
        get_espeak().check_voice(args.voice)
        extractor = LogMelUnitExtractor.load(args.extractor)
        items = read_items(args.input)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    synthesizer = PartSynthesizer(extractor, Voice(args.voice, args.rate, args.pitch))
    failures: list[str] = []
    spoken = list(synthesize_items(tqdm(items, desc="synthesising", unit="item"), synthesizer,
                                   on_failure=lambda item, error: failures.append(f"{item.id}: {error}")))
    if failures:
        print(f"left out {len(failures)} items espeak could not speak, e.g. {failures[0]}", file=sys.stderr)
    if not spoken:
        print(f"error: no item of {args.input} could be spoken; {args.output} was not written", file=sys.stderr)
        return 1
    write_items(args.output, spoken)  # atomically
    print(f"wrote {len(spoken)} items ({unit_count(spoken)} units) to {args.output}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
