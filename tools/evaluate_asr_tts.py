"""Held-out ASR / TTS evaluation of a checkpoint (fine-tuned, or its starting point to compare).

Held-out utterances (``speech_heldout.jsonl`` of tools/make_demo_corpus.py: units plus word
times) are cut into segments of ``--segment-words`` words, each with its own units and text.

    python tools/evaluate_asr_tts.py --task asr --checkpoint ft_asr --heldout corpus/speech_heldout.jsonl
    python tools/evaluate_asr_tts.py --task tts --checkpoint ft_tts --asr-checkpoint ft_asr --heldout ...

ASR: word error rate of greedy transcripts, and the teacher-forced NLL of the reference transcript
(nats per token) given the speech, and given another segment's speech (the difference,
``conditioning_gain``, says whether the model listens at all). TTS: unit error rate of greedy units
against the reference units (repeats collapsed), NLL of the reference units given the text and
given another segment's text, global-model steps and wall time per second of generated speech,
and with ``--asr-checkpoint`` the round-trip WER (that ASR model transcribes the generated units).
Prints one JSON object (and writes it to ``--output``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_lst.data.segments import heldout_segments as segments  # noqa: E402
from megatron_lst.validation import (ArgumentParser, exit_on_input_error, input_errors_from,  # noqa: E402
                                     require_positive_finite)
from megatron_lst.evaluation.asr_tts import (  # noqa: E402
    UNIT_RATE,
    generation_cost_of,
    unit_error_rate,
    word_error_rate,
)
from megatron_lst.utils.atomic import write_text_atomic  # noqa: E402


def answer_nll(generator, prompts: list[list[int]], answers: list[list[int]]) -> float:
    """Mean NLL (nats per token) of each answer (EOS included) given its prompt, teacher-forced."""
    from megatron_lst.evaluation.model_scorer import CheckpointScorer, next_token_logits

    scorer = CheckpointScorer(next_token_logits(generator.model, generator.config, generator.tokenizer),
                              generator.model, generator.tokenizer, generator.device)
    eos = generator.tokenizer.eos_id
    sequences = [np.asarray(prompt + answer + [eos]) for prompt, answer in zip(prompts, answers)]
    total, count = 0.0, 0
    for start in range(0, len(sequences), 8):
        batch = sequences[start:start + 8]
        for logprobs, prompt in zip(scorer.token_logprobs(batch), prompts[start:start + 8]):
            total -= float(logprobs[len(prompt) - 1:].sum())
            count += len(logprobs) - len(prompt) + 1
    return total / max(count, 1)


def conditioning_nll(generator, prompts: list[list[int]], answers: list[list[int]]) -> dict:
    """The answer NLL given its own prompt, and given the next segment's prompt instead.

    A model that only learned the answers' language (what transcripts or unit streams look like)
    scores both alike; ``conditioning_gain`` (mismatched minus matched, nats per token) is what
    the model gets from actually reading the speech (ASR) or the text (TTS).
    """
    matched = answer_nll(generator, prompts, answers)
    if len(prompts) < 2:
        return {"answer_nll": matched}
    mismatched = answer_nll(generator, prompts[1:] + prompts[:1], answers)
    return {"answer_nll": matched, "answer_nll_mismatched": mismatched, "conditioning_gain": mismatched - matched}


@exit_on_input_error  # a bad held-out line, flag or checkpoint: one line naming file, line and field; exit 2
def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("asr", "tts"), required=True, help="which direction to evaluate")
    parser.add_argument("--checkpoint", required=True, help="the model to evaluate (pretrain_lst.py --save dir)")
    parser.add_argument("--asr-checkpoint", default=None, help="tts: an ASR model for the round-trip WER")
    parser.add_argument("--heldout", required=True, help="held-out speech jsonl with units and word times")
    parser.add_argument("--segment-words", type=int, default=8, help="words per evaluated segment")
    parser.add_argument("--max-segments", type=int, default=24, help="evaluate at most this many segments")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="tts: speech budget per segment (default: 1.5 x the reference duration of the longest)")
    parser.add_argument("--output", default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)
    from megatron_lst.inference.loading import CheckpointGenerator
    from megatron_lst.inference.tasks import asr_prompt, synthesize, transcribe, tts_prompt

    items = segments(args.heldout, args.segment_words, args.max_segments)
    if args.max_seconds is not None:
        require_positive_finite(args.max_seconds, "--max-seconds")
    with input_errors_from(FileNotFoundError):  # a refused checkpoint is an InputError already
        generator = CheckpointGenerator.from_checkpoint(args.checkpoint)
        asr = CheckpointGenerator.from_checkpoint(args.asr_checkpoint) if args.asr_checkpoint else None
    tokenizer = generator.tokenizer
    texts = [item["text"] for item in items]
    result = {"task": args.task, "checkpoint": args.checkpoint, "segments": len(items), "model": generator.config.train.model}
    if args.task == "asr":
        hypotheses, _ = transcribe(generator, [item["units"] for item in items])
        result["wer"] = word_error_rate(texts, hypotheses)
        result.update(conditioning_nll(generator, [asr_prompt(tokenizer, item["units"]) for item in items],
                                       [tokenizer.encode_text(text) for text in texts]))
        result["examples"] = [{"reference": r, "hypothesis": h} for r, h in zip(texts[:3], hypotheses[:3])]
    else:
        longest = max(len(item["units"]) for item in items) / UNIT_RATE
        unit_lists, runs = synthesize(generator, texts, max_seconds=args.max_seconds or 1.5 * longest)
        cost = generation_cost_of(runs, tokenizer.vocab)
        result["uer"] = unit_error_rate([item["units"] for item in items], unit_lists)
        result.update(conditioning_nll(generator, [tts_prompt(tokenizer, text) for text in texts],
                                       [tokenizer.encode_units(item["units"]).tolist() for item in items]))
        result["global_steps_per_second"] = cost.global_steps_per_second
        result["wall_seconds_per_second"] = cost.wall_seconds_per_second
        result["mean_generated_seconds"] = float(np.mean([len(units) for units in unit_lists]) / UNIT_RATE)
        if asr is not None:
            transcripts, _ = transcribe(asr, unit_lists)
            result["round_trip_wer"] = word_error_rate(texts, transcripts)
    print(json.dumps(result))
    if args.output:
        write_text_atomic(args.output, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
