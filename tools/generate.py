"""Generate with a trained LST or baseline checkpoint: continue text or speech, TTS, ASR.

    # continue prompts in their own modality; one jsonl record per prompt: {"text": ...} or {"units": [...]}
    python tools/generate.py continue --checkpoint ckpt --input prompts.jsonl --output out.jsonl
    # text -> speech units (and a wav per line through a unit vocoder)
    python tools/generate.py tts --checkpoint ckpt_tts --input texts.jsonl --output units.jsonl \\
        --vocoder demo:demo_out/corpus/unit_extractor.npz --wav-dir wavs
    # speech units -> text
    python tools/generate.py asr --checkpoint ckpt_asr --input speech.jsonl --output text.jsonl

Every output record keeps the input's ``id`` (or its record number) and adds ``text`` or ``units``
(0-based unit indices at 25 Hz), ``stop_reason``, and the cost of the generation:
``global_steps`` (global-model positions it took: ceil(units / p) for LST speech, one per
unit for the baseline) and ``seconds``. The demo vocoder is a Griffin-Lim inversion of the demo's
log-mel unit extractor, for listening only; ``--vocoder package.module:factory`` plugs in a real
unit vocoder.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_lst.inference.generate import SPEECH, TEXT, GenerationConfig  # noqa: E402
from megatron_lst.inference.prompt_records import WAV_SUFFIX, read_prompt_records  # noqa: E402
from megatron_lst.inference.sampling import SamplingConfig  # noqa: E402
from megatron_lst.inference.tasks import (  # noqa: E402
    asr_prompt,
    generated_text,
    generated_units,
    speech_prompt,
    text_prompt,
    tts_prompt,
)
from megatron_lst.utils.atomic import atomic_file  # noqa: E402
from megatron_lst.validation import (ArgumentParser, InputError, exit_on_input_error, input_errors_from,  # noqa: E402
                                     require_positive_finite)


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=("continue", "tts", "asr"),
                        help="continue: same modality as the prompt; tts: text -> units; asr: units -> text")
    parser.add_argument("--checkpoint", required=True,
                        help="a pretrain_lst.py --save directory, or an export folder (convert_checkpoint.py to-hf)")
    parser.add_argument("--iteration", type=int, default=None, help="checkpoint iteration (default: latest)")
    parser.add_argument("--tokenizer-model", default=None, help="the run's tokenizer, if it moved since training")
    parser.add_argument("--input", required=True, help="jsonl: {'text': ...} or {'units': [...]} per line")
    parser.add_argument("--output", required=True, help="jsonl written with one generation per input line")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="stop a row after this many tokens")
    parser.add_argument("--max-units", type=int, default=None, help="stop a speech row after this many units")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop a speech row after this much speech (25 units per second)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0 = all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--no-restrict", action="store_true",
                        help="let the model emit any token (default: only the target modality, EOS and the "
                             "marker that switches modality, which stops the row)")
    parser.add_argument("--no-cache", action="store_true", help="re-run the full model every step (reference, slow)")
    parser.add_argument("--vocoder", default=None,
                        help="units -> audio: demo:UNIT_EXTRACTOR.npz (demo Griffin-Lim vocoder) or "
                             "package.module:factory; wavs go to --wav-dir")
    parser.add_argument("--wav-dir", default=None,
                        help="where to write one wav per speech output, named ID.wav after the input's id (which "
                             "must then be a plain file name, unique in the file; default: wavs)")
    return parser.parse_args(argv)


def prompt_for(task: str, record: dict, tokenizer) -> tuple[list[int], str]:
    """(prompt ids, modality to generate) for one input record."""
    if task == "tts":
        return tts_prompt(tokenizer, record["text"]), SPEECH
    if task == "asr":
        return asr_prompt(tokenizer, record["units"]), TEXT
    if "units" in record:
        return speech_prompt(tokenizer, record["units"]), SPEECH
    return text_prompt(tokenizer, record["text"]), TEXT


def check_flags(args: argparse.Namespace) -> SamplingConfig:
    """The numbers every generation depends on, before anything is read; the sampling they make."""
    for name in ("batch_size", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise InputError(f"must be >= 1, got {getattr(args, name)}", field="--" + name.replace("_", "-"))
    if args.max_units is not None and args.max_units < 1:
        raise InputError(f"must be >= 1, got {args.max_units}", field="--max-units")
    if args.max_seconds is not None:
        require_positive_finite(args.max_seconds, "--max-seconds")
    if not math.isfinite(args.temperature):
        raise InputError(f"must be a finite number >= 0, got {args.temperature}", field="--temperature")
    with input_errors_from(ValueError):  # names the flag's value: "top_p must lie in (0, 1], got 2.0"
        return SamplingConfig(args.temperature, args.top_k, args.top_p)


@exit_on_input_error  # bad flags, input, vocoder or checkpoint: one line naming file, line and field; exit 2
def main(argv=None) -> int:
    args = parse_args(argv)
    sampling = check_flags(args)
    # the whole input is checked before the checkpoint loads or any output is opened
    records = read_prompt_records(args.input, args.task, names_wavs=bool(args.vocoder))
    vocoder = None
    wav_dir = Path(args.wav_dir or "wavs")
    if args.vocoder:
        from megatron_lst.inference.vocoder import load_vocoder, write_wav

        with input_errors_from(OSError, ValueError, field="--vocoder"):
            vocoder = load_vocoder(args.vocoder)
    from megatron_lst.inference.loading import CheckpointGenerator

    # the checkpoint is verified against its manifest before anything in it is read; a tokenizer
    # that is missing, or differs from the run's, is refused too
    with input_errors_from(FileNotFoundError):  # "SentencePiece model not found: PATH"
        generator = CheckpointGenerator.from_checkpoint(args.checkpoint, args.iteration, args.tokenizer_model,
                                                        use_cache=not args.no_cache)
    tokenizer = generator.tokenizer
    with atomic_file(args.output) as output:  # the output appears whole when every prompt is done
        for start in range(0, len(records), args.batch_size):
            batch = records[start:start + args.batch_size]
            prompts, modalities = zip(*(prompt_for(args.task, prompt.record, tokenizer) for prompt in batch))
            outputs = {}
            for modality in sorted(set(modalities)):
                rows = [i for i, m in enumerate(modalities) if m == modality]
                config = GenerationConfig(
                    max_new_tokens=args.max_new_tokens, max_units=args.max_units, max_seconds=args.max_seconds,
                    modality=modality, restrict_to_modality=not args.no_restrict, sampling=sampling,
                    seed=args.seed + start,
                )
                result = generator.generate([prompts[i] for i in rows], config)
                per_row_seconds = result.seconds / len(rows)
                for row, tokens, reason, steps in zip(rows, result.tokens, result.stop_reasons,
                                                      result.generated_global_positions):
                    out = {"id": batch[row].id, "stop_reason": reason, "global_steps": steps,
                           "seconds": round(per_row_seconds, 4)}
                    if modality == SPEECH:
                        units = generated_units(tokenizer, tokens)
                        out["units"] = units.tolist()
                        if vocoder is not None:
                            audio, rate = vocoder(units)
                            # the id was checked to be a plain file name: the wav stays in wav_dir
                            wav = wav_dir / f"{out['id']}{WAV_SUFFIX}"
                            write_wav(wav, audio, rate)
                            out["wav"] = str(wav)
                    else:
                        out["text"] = generated_text(tokenizer, tokens)
                    outputs[row] = out
            output.writelines(json.dumps(outputs[row]) + "\n" for row in sorted(outputs))
    print(f"{len(records)} generations -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
