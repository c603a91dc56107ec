#!/usr/bin/env python
"""Audio files (wav) -> 25 Hz speech units, one jsonl line per file: {"id", "units"}.

    # the demo's log-mel units (the extractor saved by tools/make_demo_corpus.py)
    python tools/extract_units.py --log-mel demo_out/corpus/unit_extractor.npz \
        --output units.jsonl clips/*.wav
    # your own HuBERT checkpoint (Hugging Face folder) and k-means centroids
    python tools/extract_units.py --hubert path/to/hubert --centroids km500.npy --layer 6 \
        --output units.jsonl clips/

Units are not deduplicated. A folder argument means every *.wav under it (sorted). Multi-channel
audio is averaged to mono; integer PCM is scaled to [-1, 1].
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


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate."""
    from scipy.io import wavfile

    sample_rate, data = wavfile.read(path)
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / np.iinfo(data.dtype).max
    data = data.astype(np.float32)
    return (data.mean(axis=1) if data.ndim == 2 else data), int(sample_rate)


def wav_files(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        files.extend(sorted(path.rglob("*.wav")) if path.is_dir() else [path])
    return files


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="wav files, or folders searched for *.wav")
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


@exit_on_input_error  # a missing input, extractor or unreadable wav: one line naming it, exit 2, nothing written
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = wav_files(args.inputs)
    missing = [str(path) for path in files if not path.is_file()]
    if missing or not files:
        raise InputError("no such file" if missing else "no wav files found",
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
            with input_errors_from(OSError, EOFError, ValueError, file=path):  # scipy: "not understood"
                waveform, sample_rate = read_wav(path)
            units = extractor.transform(waveform, sample_rate)
            total_units += len(units)
            out.write(json.dumps({"id": path.stem, "units": units.tolist()}) + "\n")
    print(f"{len(files)} files, {total_units} units ({total_units / 25 / 3600:.3f} h at 25 Hz) "
          f"-> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
