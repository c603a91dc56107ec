#!/usr/bin/env python
"""Train a SentencePiece BPE over speech-unit sequences (the "BPE SpeechLLM" baseline).

    python tools/train_unit_bpe.py --input speech.jsonl --output-prefix units_bpe --vocab-size 1000

Reads the "units" of every aligned-speech jsonl line and writes PREFIX.model, PREFIX.vocab and
PREFIX.json (the unit codebook size, which runs check their corpus against). Train the BPE
SpeechLLM baseline with it: pretrain_lst.py --model bpe-baseline --unit-bpe PREFIX.model (raw-unit
datasets, encoded on the fly). Records without "units" (text lines of a mixed file) are left out;
a line that is not valid JSON or whose units are not codebook indices is an error naming the file,
line and field (exit 2), as is a flag below 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_lst.data.jsonl_records import parse_units  # noqa: E402
from megatron_lst.data.unit_bpe import DEFAULT_UNIT_BPE_VOCAB, train_unit_bpe  # noqa: E402
from megatron_lst.validation import ArgumentParser, InputError, at_line, exit_on_input_error, read_jsonl  # noqa: E402


def read_unit_sequences(path: str, num_units: int) -> list[list[int]]:
    """The unit lists of every speech record of ``path``, read strictly (megatron_lst/validation.py)."""
    sequences = []
    for number, record in read_jsonl(path):
        if "units" in record:
            with at_line(path, number):
                sequences.append(parse_units(record, num_units).tolist())
    if not any(sequences):
        raise InputError("no speech record with units to train on", file=path)
    return sequences


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="aligned-speech jsonl")
    parser.add_argument("--output-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_UNIT_BPE_VOCAB, help="BPE pieces (default 1000)")
    parser.add_argument("--num-units", type=int, default=501, help="speech unit codebook size, recorded in PREFIX.json (default 501)")
    args = parser.parse_args(argv)
    for flag, value in (("--vocab-size", args.vocab_size), ("--num-units", args.num_units)):
        if value < 1:
            raise InputError(f"must be >= 1, got {value}", field=flag)
    sequences = read_unit_sequences(args.input, args.num_units)
    try:
        model = train_unit_bpe(sequences, args.output_prefix, args.vocab_size, num_units=args.num_units)
    except (ValueError, RuntimeError) as error:  # SentencePiece's own refusals (a vocabulary too large ...)
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
