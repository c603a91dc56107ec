"""Score the token that ends a speech span (``<t>`` before text, EOS at the end) on held-out speech.

    python tools/evaluate_switch_tokens.py --checkpoint runs/lst/checkpoints --heldout corpus/speech_heldout.jsonl

For an LST checkpoint the switch token is scored with the patches of both ``--patch-boundary``
rules: the paper's (a span's short last patch closes where the span ends, which the prediction of
the next token can see: what teacher-forced validation measures) and the causal one (what
generation sees). Held-out utterances are cut into ``--segment-words``-word segments as the
ASR/TTS evaluation cuts them (megatron_lst/evaluation/switch_tokens.py). Prints one JSON object
(and writes it to ``--output``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_lst.data.segments import heldout_segments  # noqa: E402
from megatron_lst.evaluation.switch_tokens import evaluate_switch_tokens  # noqa: E402
from megatron_lst.utils.atomic import write_text_atomic  # noqa: E402
from megatron_lst.validation import ArgumentParser, InputError, exit_on_input_error, input_errors_from  # noqa: E402


@exit_on_input_error  # a bad held-out line, flag or checkpoint: one line naming file, line and field; exit 2
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a run's checkpoint folder (--save of pretrain_lst.py)")
    parser.add_argument("--heldout", required=True, help="held-out aligned speech jsonl (units and word times)")
    parser.add_argument("--segment-words", type=int, default=8, help="words per scored segment")
    parser.add_argument("--max-segments", type=int, default=64, help="segments scored")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise InputError(f"must be >= 1, got {args.batch_size}", field="--batch-size")
    segments = heldout_segments(args.heldout, args.segment_words, args.max_segments)
    with input_errors_from(FileNotFoundError):  # a tokenizer the checkpoint names that is gone
        scores = evaluate_switch_tokens(args.checkpoint, segments, args.batch_size)
    result = {"segments": len(segments), **scores}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        write_text_atomic(args.output, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
