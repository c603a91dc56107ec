#!/usr/bin/env python
"""Audio files (wav, flac, ogg) -> 25 Hz speech units, one jsonl line per file: {"id", "units"}.

    # the demo's log-mel units (the extractor saved by tools/make_demo_corpus.py)
    python tools/extract_units.py --log-mel demo_out/corpus/unit_extractor.npz \
        --output units.jsonl clips/*.wav
    # your own HuBERT checkpoint (Hugging Face folder) and k-means centroids
    python tools/extract_units.py --hubert path/to/hubert --centroids km500.npy --layer 6 \
        --output units.jsonl clips/

Units are not deduplicated. A folder argument means every audio file under it (``.wav``, ``.flac``,
``.ogg``, any case; sorted), so LibriSpeech-style FLAC trees work as they are. Audio is read with
soundfile (libsndfile); without it only WAV can be read (scipy). Multi-channel audio is averaged to
mono; integer PCM is scaled to [-1, 1].
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_lst.demo.hubert_units import FRAME_REDUCTIONS  # noqa: E402
from megatron_lst.utils.atomic import atomic_file  # noqa: E402
from megatron_lst.validation import ArgumentParser, InputError, exit_on_input_error, input_errors_from  # noqa: E402


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate."""
    try:
        import soundfile
    except ImportError:  # WAV only, through scipy
        soundfile = None
    if soundfile is not None:
        data, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        return data.mean(axis=1), int(sample_rate)
    if path.suffix.lower() != ".wav":
        raise ValueError(f"{path}: reading {path.suffix} needs soundfile (pip install soundfile)")
    from scipy.io import wavfile

    sample_rate, data = wavfile.read(path)
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / np.iinfo(data.dtype).max
    data = data.astype(np.float32)
    return (data.mean(axis=1) if data.ndim == 2 else data), int(sample_rate)


def audio_files(inputs: list[str]) -> list[Path]:
    """The files named, and every audio file under each folder named (sorted)."""
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES))
        else:
            files.append(path)
    return files


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="audio files, or folders searched for .wav/.flac/.ogg files")
    parser.add_argument("--output", required=True,
                        help="jsonl to write: one {\"id\": file stem, \"units\": [...]} per file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--log-mel", metavar="NPZ",
                        help="unit_extractor.npz saved by make_demo_corpus.py (the demo's units)")
    source.add_argument("--hubert", metavar="DIR",
                        help="local Hugging Face HuBERT checkpoint folder (needs transformers)")
    parser.add_argument("--centroids", metavar="NPY",
                        help="with --hubert: k-means centroids, shape (num_units, hidden_size)")
    parser.add_argument("--layer", type=int, default=6,
                        help="with --hubert: hidden layer to quantise (0 = CNN features; "
                             "default 6, the usual one for HuBERT base)")
    parser.add_argument("--frame-reduction", choices=FRAME_REDUCTIONS, default="average",
                        help="with --hubert: how two 50 Hz HuBERT frames become one 25 Hz unit: "
                             "average the pair of features, or keep every second frame's unit")
    parser.add_argument("--device", default="cpu", help="with --hubert: torch device (cpu, cuda)")
    args = parser.parse_args(argv)
    if args.hubert and not args.centroids:
        parser.error("--hubert needs --centroids")
    return args


@exit_on_input_error  # a missing input, extractor or unreadable audio file: one line naming it, exit 2, nothing written
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = audio_files(args.inputs)
    missing = [str(path) for path in files if not path.is_file()]
    if missing or not files:
        raise InputError("no such file" if missing else f"no audio files ({', '.join(AUDIO_SUFFIXES)}) found",
                         file=missing[0] if missing else " ".join(args.inputs))
    if args.log_mel:
        from megatron_lst.demo.units import LogMelUnitExtractor

        with input_errors_from(OSError, ValueError, KeyError, field="--log-mel"):
            extractor = LogMelUnitExtractor.load(args.log_mel)
    else:
        from megatron_lst.demo.hubert_units import HubertUnitExtractor

        with input_errors_from(OSError, ValueError, field="--hubert"):
            extractor = HubertUnitExtractor(args.hubert, args.centroids, args.layer,
                                            args.frame_reduction, args.device)
    total_units = 0
    with atomic_file(args.output) as out:  # appears whole, or leaves an earlier output as it was
        for path in tqdm(files, unit="file", desc="units"):
            # unreadable audio: scipy's "not understood", libsndfile's errors (RuntimeError subclasses)
            with input_errors_from(OSError, EOFError, ValueError, RuntimeError, file=path):
                waveform, sample_rate = read_audio(path)
            units = extractor.transform(waveform, sample_rate)
            total_units += len(units)
            out.write(json.dumps({"id": path.stem, "units": units.tolist()}) + "\n")
    print(f"{len(files)} files, {total_units} units ({total_units / 25 / 3600:.3f} h at 25 Hz) "
          f"-> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
