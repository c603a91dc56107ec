#!/usr/bin/env python
"""Turn jsonl into Megatron indexed datasets: text -> GPT dataset, aligned speech -> speech-text.

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \
        --tokenizer-model text.model --workers 4

Text lines ({"text": ...}) become {prefix}_{key}_document.bin/.idx, the files megatron-core's
GPTDataset reads. Aligned speech lines ({"units": [...], "words": [...]}) become
{prefix}_speech_document.bin/.idx/.json (megatron_lst/data/FORMATS.md). Output appears only when
complete (written under temporary names, renamed at the end); with --on-error fail (default) a bad
line stops the run with exit status 2, one error line naming the file, line and field, and no files.
Input is read strictly: UTF-8 only, one JSON object per line; a file detected as text (its first
record has no "units") may not hold speech records. An input with no documents, a bad --unit-rate or
--num-units, and a full disk are errors (exit 2) too.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_lst.data.indexed_writer import AtomicFiles, IndexedWriter, writing  # noqa: E402
from megatron_lst.data.jsonl_records import (  # noqa: E402
    SPEECH_FORMAT,
    TEXT_FORMAT,
    RecordError,
    detect_format,
    load_json_object,
)
from megatron_lst.data.preprocess import (  # noqa: E402
    LineEncoder,
    LineResult,
    PreprocessConfig,
    encode_chunk,
    init_worker,
)
from megatron_lst.data.run_summary import RunSummary  # noqa: E402
from megatron_lst.data.segments import SegmentConfig  # noqa: E402
from megatron_lst.data.speech_layout import (  # noqa: E402
    METADATA_FORMAT,
    METADATA_VERSION,
    metadata_path,
    speech_dataset_prefix,
)
from megatron_lst.validation import ArgumentParser, InputError, report  # noqa: E402

EXIT_BAD_INPUT = 2
CHUNK_LINES = 64
MAX_REPORTED_ERRORS = 20


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="jsonl file, one document per line")
    parser.add_argument("--output-prefix", required=True, help="path prefix of the output files")
    parser.add_argument("--tokenizer-model", required=True,
                        help="text tokenizer: SentencePiece .model or .tiktoken rank file")
    parser.add_argument("--format", choices=[TEXT_FORMAT, SPEECH_FORMAT], default=None,
                        help="force the input format (default: speech if the first record has 'units')")
    parser.add_argument("--json-keys", nargs="+", default=["text"],
                        help="text format: the fields to tokenise, one dataset each (default: text)")
    parser.add_argument("--append-eod", action="store_true",
                        help="text format: end every document with the joint EOS id")
    parser.add_argument("--workers", type=int, default=1, help="tokenising processes (default 1)")
    parser.add_argument("--num-units", type=int, default=501,
                        help="speech unit codebook size; ids outside [0, N) are errors (default 501)")
    parser.add_argument("--unit-rate", type=float, default=25.0,
                        help="speech units per second, for start_s/end_s and the hours (default 25)")
    parser.add_argument("--unit-bpe", default=None, metavar="MODEL",
                        help="map each segment's units through this SentencePiece model "
                             "(tools/train_unit_bpe.py): the BPE SpeechLLM baseline")
    parser.add_argument("--segment-words", type=int, default=0, metavar="N",
                        help="speech: cut each utterance at word boundaries into documents of N words "
                             "(a shorter remainder is kept if it has at least N/2 words); for ASR/TTS "
                             "fine-tuning, where speech and transcript must fit in one sample (default: off)")
    parser.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                        help="bad lines: fail = stop, exit 2, write nothing (default); "
                             "skip = report, count and leave them out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def read_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines, as bytes, with 1-based line numbers; each is decoded strictly as UTF-8 by
    the line's parser (megatron_lst/validation.py), so a bad byte is an error naming its field."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line


def detect_input_format(path: str) -> str:
    """Speech if the first parseable record has units, text otherwise (also for an empty file)."""
    for _, line in read_lines(path):
        try:
            return detect_format(load_json_object(line))
        except RecordError:
            continue
    return TEXT_FORMAT


def chunks(lines: Iterator[tuple[int, str]]) -> Iterator[list[tuple[int, str]]]:
    while chunk := list(itertools.islice(lines, CHUNK_LINES)):
        yield chunk


class OutputDatasets:
    """The writers of one run and the metadata they publish together on success."""

    def __init__(self, config: PreprocessConfig, output_prefix: str, encoder: LineEncoder):
        self.config = config
        tokenizer = encoder.tokenizer
        self.text_writers: dict[str, IndexedWriter] = {}
        self.speech_writer: IndexedWriter | None = None
        self.metadata_files: AtomicFiles | None = None
        if config.input_format == TEXT_FORMAT:
            for key in config.json_keys:
                self.text_writers[key] = IndexedWriter(f"{output_prefix}_{key}_document", tokenizer.vocab_size)
            return
        unit_vocab = encoder.unit_bpe.vocab_size if encoder.unit_bpe else config.num_units
        self.prefix = speech_dataset_prefix(output_prefix)
        self.speech_writer = IndexedWriter(
            self.prefix, max(tokenizer.vocab.text_vocab_size, unit_vocab), multimodal=True
        )
        self.metadata = {
            "format": METADATA_FORMAT,
            "version": METADATA_VERSION,
            "text_model": tokenizer.text_model.describe(),
            "text_vocab_size": tokenizer.vocab.text_vocab_size,
            "num_units": config.num_units,
            "unit_vocab_size": unit_vocab,
            "unit_bpe": config.unit_bpe_model,
            "unit_rate": config.unit_rate,
        }
        self.metadata_files = AtomicFiles([metadata_path(self.prefix)])

    def add(self, results: list[LineResult]) -> None:
        for key, writer in self.text_writers.items():
            ids = [result.text_ids[key] for result in results]
            if ids:
                writer.add_documents(
                    np.concatenate(ids), np.asarray([len(x) for x in ids], dtype=np.int64),
                    np.ones(len(ids), dtype=np.int64),
                )
        if self.speech_writer is not None and any(result.speech for result in results):
            documents = [document for result in results for document in result.speech]
            self.speech_writer.add_documents(
                np.concatenate([doc.ids for doc in documents]),
                np.concatenate([doc.lengths for doc in documents]),
                np.asarray([len(doc.lengths) for doc in documents], dtype=np.int64),
                np.concatenate([doc.modes for doc in documents]),
            )

    def writers(self) -> list[IndexedWriter]:
        return list(self.text_writers.values()) + ([self.speech_writer] if self.speech_writer else [])

    def commit(self, summary: RunSummary) -> None:
        for writer in self.writers():
            writer.finalize()
        if self.metadata_files is not None:
            self.metadata["summary"] = summary.as_dict()
            temp = self.metadata_files.temp(metadata_path(self.prefix))
            with writing(metadata_path(self.prefix)):
                Path(temp).write_text(json.dumps(self.metadata, indent=2) + "\n", encoding="utf-8")
        for writer in self.writers():
            writer.commit()
        if self.metadata_files is not None:
            self.metadata_files.commit()

    def abort(self) -> None:
        for writer in self.writers():
            writer.abort()
        if self.metadata_files is not None:
            self.metadata_files.abort()


def encoded_results(
    input_path: str, config: PreprocessConfig, workers: int, encoder: LineEncoder
) -> Iterator[list[LineResult]]:
    """Encoded chunks in input order, in this process or in a pool of ``workers``."""
    lines = read_lines(input_path)
    if workers <= 1:
        for chunk in chunks(lines):
            yield [encoder.encode_line(number, line) for number, line in chunk]
        return
    with multiprocessing.get_context("spawn").Pool(workers, init_worker, (config,)) as pool:
        yield from pool.imap(encode_chunk, chunks(lines), chunksize=4)


def process(args: argparse.Namespace, config: PreprocessConfig, encoder: LineEncoder,
            outputs: OutputDatasets, summary: RunSummary) -> None:
    progress = tqdm(unit=" docs", disable=args.quiet, file=sys.stderr, mininterval=0.5)
    for results in encoded_results(args.input, config, args.workers, encoder):
        good = []
        for result in results:
            if result.error is None:
                good.append(result)
                continue
            message = f"{args.input}:{result.line_number}: {result.error}"
            if args.on_error == "fail":
                raise InputError(f"{result.error} (nothing written; --on-error skip leaves bad lines out)",
                                 file=args.input, line=result.line_number)
            summary.skipped_lines += 1
            if summary.skipped_lines <= MAX_REPORTED_ERRORS:
                tqdm.write(f"skipped {message}", file=sys.stderr)
        outputs.add(good)
        summary.add(good)
        progress.update(len(results))
    progress.close()
    if summary.documents == 0:
        skipped = f" ({summary.skipped_lines} bad lines skipped)" if summary.skipped_lines else ""
        raise InputError(f"no documents: the file has no records{skipped}; nothing written", file=args.input)


def check_flags(args: argparse.Namespace) -> None:
    """Numbers every record's conversion depends on; a bad one would corrupt every document."""
    if not (math.isfinite(args.unit_rate) and args.unit_rate > 0):
        raise InputError(f"must be a positive finite number of units per second, got {args.unit_rate}",
                         field="--unit-rate")
    if args.num_units < 1:
        raise InputError(f"must be >= 1 (the speech unit codebook size), got {args.num_units}", field="--num-units")
    if args.workers < 1:
        raise InputError(f"must be >= 1, got {args.workers}", field="--workers")
    if args.segment_words < 0:
        raise InputError(f"must be >= 0 (0: whole utterances), got {args.segment_words}", field="--segment-words")
    if not Path(args.input).is_file():
        raise InputError("no such file" if not Path(args.input).exists() else "not a file", file=args.input)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_flags(args)
    except InputError as error:
        report(error)
        return EXIT_BAD_INPUT
    config = PreprocessConfig(
        input_format=args.format or detect_input_format(args.input),
        reject_units=args.format is None,
        tokenizer_model=args.tokenizer_model,
        json_keys=tuple(args.json_keys),
        append_eod=args.append_eod,
        num_units=args.num_units,
        unit_rate=args.unit_rate,
        unit_bpe_model=args.unit_bpe,
        segment=SegmentConfig.for_words(args.segment_words) if args.segment_words > 0 else None,
    )
    try:
        encoder = LineEncoder(config)
    except (OSError, ValueError, RuntimeError) as error:  # a missing or unreadable model (or unit BPE)
        report(InputError(f"cannot load the tokenizer: {error}", field="--tokenizer-model"))
        return EXIT_BAD_INPUT
    summary = RunSummary(config.input_format, config.unit_rate)
    outputs: OutputDatasets | None = None
    try:
        outputs = OutputDatasets(config, args.output_prefix, encoder)
        process(args, config, encoder, outputs, summary)
        outputs.commit(summary)
    except (InputError, OSError) as error:  # a bad line or no documents; a full disk (OutputWriteError)
        if outputs is not None:
            outputs.abort()
        report(error)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, Exception):
        if outputs is not None:
            outputs.abort()
        raise
    print(summary.render(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
