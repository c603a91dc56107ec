"""Issue 14's bad inputs, from the command line: exit 2, one line naming the file, line and field, no
traceback, and nothing written or overwritten.

Each case runs a tool (or pretrain_lst.py) on one bad input and checks the same four things: the
exit status is 2; stderr is exactly one non-empty line, ``error: ...``, holding what names the
problem (file, line, field or flag), after at most some ``note:`` lines printed before the problem
was met; no traceback; every file the case could touch (its folder with an earlier output in it, the
shared checkpoint and data) is byte-identical afterwards and nothing new appeared.

Cases marked to run in a subprocess start the real entry point in a fresh interpreter: the cheap
tools, and every case that builds a model. The rest call the tool's ``main`` in this process (the
code behind ``sys.exit(main())``), which saves a few seconds of imports per case; pretrain_lst.py's
``train`` runs under the same ``exit_on_input_error`` wrapper as its ``main``, without the
process-wide orphan hook ``main`` installs.

Where the issue's cases are tested elsewhere (their behaviour needs more than a refusal):

==================================================  ==============================================
issue 14 case                                       test
==================================================  ==============================================
pickle payload in rng/rank_0.pt during --load       test_resume_skips_garbage_latest_and_a_pickle_payload
                                                    (here), training/test_checkpoint_trust.py
payload in .metadata during evaluate.py             test_checkpoint_trust::test_evaluate_refuses_a_tampered...;
                                                    every checkpoint tool x every refusal: here (CHECKPOINT_TOOLS)
generate.py ids ``../x`` and absolute               tools/test_generate_ids.py
bit flip in a shard: refused, resume falls back     test_checkpoint_trust::test_resume_falls_back_past_a_bit...
truncated shard/common.pt/.metadata/RNG, missing    test_checkpoint_trust::test_truncated_files..., ::test_missing...
fresh run into a --save with later checkpoints      test_checkpoint_trust::test_fresh_run_into_a_folder...
interrupted .tmp-* saves; --keep-last               test_checkpoint_trust::test_interrupted_saves..., ::test_keep_last...
--train-iters 10 -> 20 keeps the finished schedule  test_checkpoint_trust::test_a_changed_schedule..., ::test_keep_last_and_schedule_flags_end_to_end (slow)
synthesize_benchmark bad --voice truncates output   evaluation/test_synthesize_benchmark.py (needs espeak-ng)
tool outputs not atomic                             utils/test_atomic.py, tools/test_tool_outputs.py
orphans after kill -9 (1 kill; 10 kills: slow)      training/test_no_orphans.py
preprocess: disk full                               tools/test_preprocess_validation.py (a full disk, simulated)
SIGTERM without --save says "saving"                training/test_signals.py
every field of a benchmark item                     evaluation/test_item_validation.py; readers fuzzed in test_validation_fuzz.py
==================================================  ==============================================
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from megatron_lst.data.synthetic import random_aligned_records
from megatron_lst.training.checkpoint_manifest import MANIFEST_NAME, write_manifest
from megatron_lst.training.checkpointing import LATEST_FILE, iteration_dir
from megatron_lst.training.run_config import decode_saved, encode_saved
from megatron_lst.validation import exit_on_input_error
from tests.conftest import REPO_ROOT, child_env, run_pretrain
from tests.tools.test_preprocess_data import preprocess_data, text_records, write_jsonl


# ----------------------------------------------------------------------------- the shared world
@dataclass
class World:
    """What the cases read and must never change: data, tokenizers and one trained checkpoint."""

    root: Path
    tokenizer: str
    other_tokenizer: str  # same size, other pieces
    text_prefix: str
    speech_prefix: str
    checkpoint: Path  # a baseline run's --save: iterations 2 and 4
    heldout: Path  # aligned speech records (held-out file of the ASR/TTS and switch-token tools)

    def train_args(self, *extra: str) -> list[str]:
        """A tiny baseline run on the shared text data."""
        return ["--model-flavour", "debug", "--model", "baseline", "--data-path", self.text_prefix,
                "--tokenizer-model", self.tokenizer, "--data-cache-path", str(self.root / "index_cache"),
                "--seq-length", "64", "--micro-batch-size", "2", "--global-batch-size", "4", "--lr", "1e-3",
                "--lr-warmup-iters", "1", "--eval-interval", "1000", "--eval-iters", "1", "--seed", "7", *extra]

    def copy_checkpoint(self, folder: Path) -> Path:
        copy = folder / "ckpt"
        shutil.copytree(self.checkpoint, copy)
        return copy


@pytest.fixture(scope="module")
def world(tmp_path_factory, sentencepiece_model, other_sentencepiece_model) -> World:
    root = tmp_path_factory.mktemp("bad_inputs")
    for name, records in (("text", text_records(200, seed=4)), ("speech", random_aligned_records(6, seed=3))):
        source = write_jsonl(root / f"{name}.jsonl", records)
        assert preprocess_data.main(["--input", str(source), "--output-prefix", str(root / name),
                                     "--tokenizer-model", sentencepiece_model, "--append-eod", "--quiet"]) == 0
    heldout = write_jsonl(root / "heldout.jsonl", random_aligned_records(3, seed=9))
    built = World(root, sentencepiece_model, other_sentencepiece_model, str(root / "text_text_document"),
                  str(root / "speech_speech_document"), root / "ckpt", heldout)
    run_pretrain(built.train_args("--train-iters", "4", "--save", str(built.checkpoint), "--save-interval", "2"))
    return built


def tree_digest(*folders: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under the folders (what a case must leave as it was)."""
    digest = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                digest[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


# ----------------------------------------------------------------------------- the inputs
EARLIER = "an earlier run's output\n"


def earlier_output(folder: Path, name: str = "out.json") -> str:
    """An output file a refused run must leave byte-identical."""
    path = folder / name
    path.write_text(EARLIER)
    return str(path)


def good_item(item_id: str = "a") -> dict:
    return {"id": item_id, "label": 1, "prompt": {"text": "once upon", "units": [1, 2]},
            "endings": [{"text": "a time", "units": [3]}, {"text": "the end", "units": [4, 5]}]}


def good_bench_in(folder: Path) -> Path:
    """``folder/bench.jsonl`` holding one good item (the folder is made)."""
    folder.mkdir()
    return write_jsonl(folder / "bench.jsonl", [good_item()])


def bench_with(folder: Path, change: Callable[[dict], None] | None = None, raw_line: str | None = None,
               extra_rows: list[dict] = ()) -> Path:
    """A benchmark file whose second line is a good item changed by ``change`` (or ``raw_line``)."""
    row = good_item("b")
    if change is not None:
        change(row)
    lines = [json.dumps(good_item("a")), raw_line if raw_line is not None else json.dumps(row)]
    lines += [json.dumps(extra) for extra in extra_rows]
    path = folder / "bench.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def tampered(world: World, folder: Path, how: str) -> tuple[Path, Path]:
    """A copy of the checkpoint whose iteration 4 was tampered with; (root, the file changed)."""
    root = world.copy_checkpoint(folder)
    iteration = iteration_dir(root, 4)
    if how == "bit flip":
        target = sorted(iteration.glob("*.distcp"))[0]
        data = bytearray(target.read_bytes())
        data[1000:5096] = bytes(b ^ 0xFF for b in data[1000:5096])
        target.write_bytes(bytes(data))
    elif how == "truncated common.pt":
        target = iteration / "common.pt"
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif how == "truncated rng":
        target = iteration / "rng" / "rank_0.pt"
        target.write_bytes(target.read_bytes()[:100])
    elif how == "pickle in .metadata":
        target = iteration / ".metadata"
        target.write_bytes(pickle.dumps(Payload(folder / "payload_ran")))
    elif how == "garbage latest":
        target = root / LATEST_FILE
        target.write_text("garbage\n")
    elif how == "missing":
        shutil.rmtree(root)
        target = root
    else:
        raise ValueError(how)
    return root, target


class Payload:
    """A pickle that creates ``marker`` when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def other_shape(world: World, folder: Path) -> tuple[Path, str]:
    """A checkpoint whose recorded run config builds another model (an edited config, or another
    version's defaults), with a manifest that verifies: only the tensor shapes tell."""
    root = world.copy_checkpoint(folder)
    iteration = iteration_dir(root, 4)
    common = torch.load(iteration / "common.pt", weights_only=True)
    config = decode_saved(common["config"])
    config["model_config"]["ffn_hidden_size"] = 96
    common["config"] = encode_saved(config)
    torch.save(common, iteration / "common.pt")
    (iteration / MANIFEST_NAME).unlink()
    write_manifest(iteration)
    return root, "checkpoint shape"


# ----------------------------------------------------------------------------- the cases
# Each case: (tool, subprocess?, builder). A builder gets the world and the case's folder, writes
# what the case needs there, and returns (argv, the texts its one error line must hold).
Builder = Callable[[World, Path], tuple[list[str], list[str]]]


def preprocess_case(records: list | bytes | None, *flags: str, expect: Callable[[Path], list[str]],
                    tokenizer: str | None = None) -> Builder:
    def build(world: World, folder: Path):
        source = folder / "in.jsonl"
        if isinstance(records, bytes):
            source.write_bytes(records)
        elif records is not None:
            write_jsonl(source, records)
        (folder / "out_text_document.bin").write_text(EARLIER)  # an earlier run's dataset
        return (["--input", str(source), "--output-prefix", str(folder / "out"), "--tokenizer-model",
                 tokenizer or world.tokenizer, "--quiet", *flags], expect(source))
    return build


def evaluate_case(change: Callable[[dict], None] | None = None, raw_line: str | None = None,
                  extra_rows: list[dict] = (), expect: tuple[str, ...] = ()) -> Builder:
    def build(world: World, folder: Path):
        bench = bench_with(folder, change, raw_line, extra_rows)
        return (["--checkpoint", str(world.checkpoint), "--benchmark", str(bench), "--directions", "tt",
                 "--output", earlier_output(folder)], [f"{bench}:2: ", *expect])
    return build


def checkpoint_case(tool_args: Callable[[World, Path, Path], list[str]], how: str,
                    expect: Callable[[Path], list[str]]) -> Builder:
    def build(world: World, folder: Path):
        root, target = tampered(world, folder, how)
        return tool_args(world, folder, root), expect(target)
    return build


def pretrain_case(data_path: Callable[[World, Path], list[str]], *flags: str, expect: Callable[[World, Path], list[str]],
                  tokenizer: Callable[[World], str] | None = None) -> Builder:
    def build(world: World, folder: Path):
        args = world.train_args("--train-iters", "1", "--save", str(folder / "ckpt"), *flags)
        args[args.index("--data-path") + 1: args.index("--data-path") + 2] = data_path(world, folder)
        if tokenizer is not None:
            args[args.index("--tokenizer-model") + 1] = tokenizer(world)
        return args, expect(world, folder)
    return build


def evaluate_args(world, folder, root):
    bench = bench_with(folder)
    return ["--checkpoint", str(root), "--benchmark", str(bench), "--directions", "tt",
            "--output", earlier_output(folder)]


def generate_args(world, folder, root):
    prompts = write_jsonl(folder / "prompts.jsonl", [{"id": "a", "text": "once upon"}])
    return ["continue", "--checkpoint", str(root), "--input", str(prompts), "--output", earlier_output(folder, "o.jsonl")]


def asr_tts_args(world, folder, root):
    return ["--task", "asr", "--checkpoint", str(root), "--heldout", str(world.heldout), "--output",
            earlier_output(folder)]


def switch_args(world, folder, root):
    return ["--checkpoint", str(root), "--heldout", str(world.heldout), "--output", earlier_output(folder)]


def convert_args(world, folder, root):
    output = folder / "export"
    output.mkdir()
    (output / "model.safetensors").write_text(EARLIER)  # an earlier export
    return ["to-safetensors", "--load", str(root), "--output", str(output)]


def speech_line(units) -> dict:
    record = random_aligned_records(1, seed=2)[0]
    return {**record, "units": units}


CASES: dict[str, tuple[str, bool, Builder]] = {
    # --- preprocess ---------------------------------------------------------------------------
    "preprocess --unit-rate 0": ("preprocess_data.py", True, preprocess_case(
        random_aligned_records(2, seed=1), "--unit-rate", "0", expect=lambda s: ["--unit-rate: ", "got 0"])),
    "preprocess --unit-rate nan": ("preprocess_data.py", False, preprocess_case(
        random_aligned_records(2, seed=1), "--unit-rate", "nan", expect=lambda s: ["--unit-rate: ", "nan"])),
    "preprocess --unit-rate -25": ("preprocess_data.py", False, preprocess_case(
        random_aligned_records(2, seed=1), "--unit-rate", "-25", expect=lambda s: ["--unit-rate: ", "-25"])),
    "preprocess empty input": ("preprocess_data.py", False, preprocess_case(
        b"\n\n", expect=lambda s: [f"{s}: no documents"])),
    "preprocess non-UTF-8 byte in a string": ("preprocess_data.py", False, preprocess_case(
        b'{"text": "fine"}\n{"id": "x", "text": "caf\xe9 au lait"}\n',
        expect=lambda s: [f"{s}:2: text: invalid UTF-8 byte 0xe9"])),
    "preprocess speech record after a text record": ("preprocess_data.py", False, preprocess_case(
        [*text_records(2), {**random_aligned_records(1, seed=2)[0], "text": "spoken"}],
        expect=lambda s: [f"{s}:3: units: a speech record in a file detected as text"])),
    "preprocess --workers 0": ("preprocess_data.py", False, preprocess_case(
        text_records(2), "--workers", "0", expect=lambda s: ["--workers: must be >= 1"])),
    "preprocess --segment-words -1": ("preprocess_data.py", False, preprocess_case(
        random_aligned_records(2), "--segment-words", "-1", expect=lambda s: ["--segment-words: must be >= 0"])),
    "preprocess missing input": ("preprocess_data.py", False, preprocess_case(
        None, expect=lambda s: [f"{s}: no such file"])),
    "preprocess missing tokenizer": ("preprocess_data.py", False, preprocess_case(
        text_records(2), expect=lambda s: ["--tokenizer-model: cannot load the tokenizer", "nothing.model"],
        tokenizer="/nonexistent/nothing.model")),
    # --- benchmarks (tools/evaluate.py): each refused before any model is built ----------------
    "benchmark units as a string": ("evaluate.py", False, evaluate_case(
        raw_line=json.dumps(good_item("b")).replace("[1, 2]", '"123"'), expect=("prompt.units: must be a list",))),
    "benchmark float unit": ("evaluate.py", False, evaluate_case(
        lambda row: row["endings"][0].update(units=[2.9]), expect=("endings[0].units[0]: must be an integer",))),
    "benchmark unit outside the codebook": ("evaluate.py", False, evaluate_case(
        lambda row: row["endings"][1].update(units=[4, 10 ** 6]), expect=("endings[1].units[1]: 1000000 is outside",))),
    "benchmark label 1.7": ("evaluate.py", False, evaluate_case(
        lambda row: row.update(label=1.7), expect=("label: must be an integer, got the number 1.7",))),
    "benchmark label '1'": ("evaluate.py", False, evaluate_case(
        lambda row: row.update(label="1"), expect=("label: must be an integer, got the string '1'",))),
    "benchmark label true": ("evaluate.py", False, evaluate_case(
        lambda row: row.update(label=True), expect=("label: must be an integer, got a boolean",))),
    "benchmark duplicate id": ("evaluate.py", False, evaluate_case(
        lambda row: row.update(id="a"), expect=("id: 'a' is already the id of line 1",))),
    "benchmark text not a string": ("evaluate.py", False, evaluate_case(
        lambda row: row["prompt"].update(text=["a", "b"]), expect=("prompt.text: must be a string",))),
    "benchmark empty ending": ("evaluate.py", False, evaluate_case(
        lambda row: row["endings"].__setitem__(1, {"text": ""}), expect=("endings[1]: is empty",))),
    # --- checkpoints that differ from what the run wrote or built -------------------------------
    "evaluate a checkpoint of another shape": ("evaluate.py", True, lambda world, folder: (
        lambda root_and_expect: (evaluate_args(world, folder, root_and_expect[0]),
                                 [str(iteration_dir(root_and_expect[0], 4)), ".mlp.linear_fc",
                                  root_and_expect[1]])
    )(other_shape(world, folder))),
    "evaluate a tokenizer of the same size but other pieces": ("evaluate.py", True, lambda world, folder: (
        [*evaluate_args(world, folder, world.checkpoint), "--tokenizer-model", world.other_tokenizer],
        ["--tokenizer-model: the text tokenizer differs", "pieces_sha256"])),
    "generate a tokenizer of the same size but other pieces": ("generate.py", True, lambda world, folder: (
        [*generate_args(world, folder, world.checkpoint), "--tokenizer-model", world.other_tokenizer],
        ["--tokenizer-model: the text tokenizer differs", "pieces_sha256"])),
    "convert into a --save that holds checkpoints": ("convert_checkpoint.py", False, lambda world, folder: (
        ["from-safetensors", "--input", str(folder / "export"), "--save", str(world.copy_checkpoint(folder))],
        ["--save: ", "already holds checkpoint(s) 2, 4"])),
    # --- tool flags and inputs ------------------------------------------------------------------
    "benchmark without items": ("evaluate.py", False, lambda world, folder: (
        ["--checkpoint", str(world.checkpoint), "--benchmark", str(write_jsonl(folder / "bench.jsonl", [""])),
         "--output", earlier_output(folder)], [f"{folder / 'bench.jsonl'}: no items"])),
    "evaluate several benchmarks into one --output": ("evaluate.py", False, lambda world, folder: (
        ["--checkpoint", str(world.checkpoint), "--benchmark", str(bench_with(folder)), str(bench_with(folder)),
         "--output", earlier_output(folder)], ["--output names one benchmark's results", "use --output-dir"])),
    "evaluate benchmarks of one stem into --output-dir": ("evaluate.py", False, lambda world, folder: (
        ["--checkpoint", str(world.checkpoint), "--benchmark", str(bench_with(folder)),
         str(good_bench_in(folder / "other")), "--output-dir", str(folder)],
        ["share the stem 'bench'"])),
    "evaluate a malformed second benchmark": ("evaluate.py", False, lambda world, folder: (
        ["--checkpoint", str(world.checkpoint), "--benchmark", str(write_jsonl(folder / "good.jsonl", [good_item()])),
         str(bench_with(folder, lambda row: row.__setitem__("label", 1.7))), "--directions", "tt",
         "--output-dir", str(folder)], [f"{folder / 'bench.jsonl'}:2: "])),
    "generate without prompts": ("generate.py", False, lambda world, folder: (
        ["continue", "--checkpoint", str(world.checkpoint), "--input", str(write_jsonl(folder / "p.jsonl", ["  "])),
         "--output", earlier_output(folder, "o.jsonl")], [f"{folder / 'p.jsonl'}: no prompts"])),
    "generate --batch-size 0": ("generate.py", False, lambda world, folder: (
        [*generate_args(world, folder, world.checkpoint), "--batch-size", "0"], ["--batch-size: must be >= 1"])),
    "generate --temperature nan": ("generate.py", False, lambda world, folder: (
        [*generate_args(world, folder, world.checkpoint), "--temperature", "nan"], ["--temperature: ", "nan"])),
    "generate a missing vocoder": ("generate.py", False, lambda world, folder: (
        ["tts", *generate_args(world, folder, world.checkpoint)[1:], "--vocoder", "demo:nothing.npz",
         "--wav-dir", str(folder / "wavs")], ["--vocoder: ", "nothing.npz"])),
    "evaluate_asr_tts --segment-words 0": ("evaluate_asr_tts.py", False, lambda world, folder: (
        [*asr_tts_args(world, folder, world.checkpoint), "--segment-words", "0"], ["--segment-words: must be >= 1"])),
    "evaluate_switch_tokens no segment": ("evaluate_switch_tokens.py", False, lambda world, folder: (
        [*switch_args(world, folder, world.checkpoint), "--segment-words", "1000"],
        [f"{world.heldout}: no segment of 1000 words"])),
    "evaluate_switch_tokens a bad held-out line": ("evaluate_switch_tokens.py", False, lambda world, folder: (
        [*switch_args(world, folder, world.checkpoint)[:2], "--heldout",
         str(write_jsonl(folder / "held.jsonl", [speech_line([1, "2"])])), "--output", earlier_output(folder)],
        [f"{folder / 'held.jsonl'}:1: units[1]"])),
    "train_unit_bpe a bad units line": ("train_unit_bpe.py", True, lambda world, folder: (
        ["--input", str(write_jsonl(folder / "s.jsonl", [speech_line([1, 2]), speech_line([3, -4])])),
         "--output-prefix", str(folder / "bpe"), "--vocab-size", "8"], [f"{folder / 's.jsonl'}:2: units[1]"])),
    "train_unit_bpe a missing input": ("train_unit_bpe.py", False, lambda world, folder: (
        ["--input", str(folder / "nothing.jsonl"), "--output-prefix", str(folder / "bpe")],
        [f"{folder / 'nothing.jsonl'}: cannot read"])),
    "extract_units a missing wav": ("extract_units.py", True, lambda world, folder: (
        [str(folder / "nothing.wav"), "--output", earlier_output(folder, "units.jsonl"), "--log-mel", "x.npz"],
        [f"{folder / 'nothing.wav'}: no such file"])),
    "extract_units a missing extractor": ("extract_units.py", False, lambda world, folder: (
        [str(world.heldout), "--output", earlier_output(folder, "units.jsonl"), "--log-mel", "x.npz"],
        ["--log-mel: ", "x.npz"])),
    "make_demo_corpus --hours -1": ("make_demo_corpus.py", True, lambda world, folder: (
        ["--out", str(folder / "corpus"), "--hours", "-1"], ["--hours: must be a positive finite number"])),
    "evaluate without --benchmark (argparse)": ("evaluate.py", False, lambda world, folder: (
        ["--checkpoint", str(world.checkpoint), "--output", earlier_output(folder)],
        ["the following arguments are required: --benchmark"])),
    # --- training --------------------------------------------------------------------------------
    "pretrain --seq-length 0": ("pretrain_lst.py", False, pretrain_case(
        lambda world, folder: [world.text_prefix], "--seq-length", "0",
        expect=lambda world, folder: ["--seq-length must be >= 1, got 0"])),
    "pretrain --lr nan": ("pretrain_lst.py", False, pretrain_case(
        lambda world, folder: [world.text_prefix], "--lr", "nan",
        expect=lambda world, folder: ["--lr must be a finite number >= 0, got nan"])),
    "pretrain an unknown flag (argparse)": ("pretrain_lst.py", False, pretrain_case(
        lambda world, folder: [world.text_prefix], "--no-such-flag", "3",
        expect=lambda world, folder: ["unrecognized arguments: --no-such-flag 3"])),
    "pretrain a negative blend weight": ("pretrain_lst.py", False, pretrain_case(
        lambda world, folder: ["0.5", world.text_prefix, "-0.3", world.text_prefix],
        expect=lambda world, folder: [f"--data-path: weight '-0.3' of '{world.text_prefix}'"])),
    "pretrain a NaN blend weight": ("pretrain_lst.py", False, pretrain_case(
        lambda world, folder: ["nan", world.text_prefix],
        expect=lambda world, folder: [f"--data-path: weight 'nan' of '{world.text_prefix}'"])),
    "pretrain an inf blend weight": ("pretrain_lst.py", False, pretrain_case(
        lambda world, folder: ["1", world.text_prefix, "inf", world.text_prefix],
        expect=lambda world, folder: [f"--data-path: weight 'inf' of '{world.text_prefix}'"])),
    "pretrain a data prefix that does not exist": ("pretrain_lst.py", False, pretrain_case(
        lambda world, folder: [str(folder / "nothing_text_document")],
        expect=lambda world, folder: [f"has no {folder / 'nothing_text_document'}.bin"])),
    "pretrain speech data of another text tokenizer": ("pretrain_lst.py", False, pretrain_case(
        lambda world, folder: [world.speech_prefix], "--model", "lst", tokenizer=lambda world: world.other_tokenizer,
        expect=lambda world, folder: [f"{world.speech_prefix}.json: text_model: preprocessed with another text "
                                      "tokenizer", "pieces_sha256"])),
    "pretrain speech data of another codebook": ("pretrain_lst.py", False, pretrain_case(
        lambda world, folder: [world.speech_prefix], "--model", "lst", "--num-units", "100",
        expect=lambda world, folder: [f"{world.speech_prefix}.json: num_units: 501", "--num-units 100"])),
}


# every tool that reads a checkpoint, on every way a checkpoint can be refused
CHECKPOINT_TOOLS = {"evaluate.py": evaluate_args, "generate.py": generate_args, "evaluate_asr_tts.py": asr_tts_args,
                    "evaluate_switch_tokens.py": switch_args, "convert_checkpoint.py": convert_args}
REFUSALS = {
    "bit flip": lambda target: [str(target), "its SHA-256 does not match"],
    "truncated common.pt": lambda target: [str(target), "truncated after the write"],
    "truncated rng": lambda target: [str(target), "truncated after the write"],
    "pickle in .metadata": lambda target: [str(target), "manifest.json"],
    "garbage latest": lambda target: [str(target), "expected an iteration number, found 'garbage'"],
    "missing": lambda target: [f"{target}: no such checkpoint folder"],
}
CASES.update({f"{tool[:-3]} {how}": (tool, False, checkpoint_case(args, how, expect))
              for tool, args in CHECKPOINT_TOOLS.items() for how, expect in REFUSALS.items()})


def run_tool(tool: str, argv: list[str], in_subprocess: bool, folder: Path, capsys) -> tuple[int, str]:
    """(exit status, stderr) of one run of ``tools/<tool>`` (or pretrain_lst.py)."""
    path = REPO_ROOT / tool if tool == "pretrain_lst.py" else REPO_ROOT / "tools" / tool
    if in_subprocess:
        result = subprocess.run([sys.executable, str(path), *argv], env=child_env(), capture_output=True, text=True,
                                timeout=300, cwd=folder)
        return result.returncode, result.stderr
    if tool == "pretrain_lst.py":
        # main() is exit_on_input_error(orphans.install(); train()): the hook would outlive this test
        # in pytest's process, so run train() under the same wrapper
        import pretrain_lst

        main = exit_on_input_error(pretrain_lst.train)
    else:
        main = importlib.import_module(f"tools.{path.stem}").main
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse, or a tool that exits itself
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line_and_changes_nothing(world, tmp_path, capsys, monkeypatch, name):
    tool, in_subprocess, build = CASES[name]
    folder = tmp_path / "case"
    folder.mkdir()
    monkeypatch.chdir(folder)  # a tool that writes relative to the working folder writes here
    argv, expected = build(world, folder)
    shared = (world.checkpoint, Path(world.text_prefix).parent)
    before = tree_digest(folder, *shared)

    code, stderr = run_tool(tool, argv, in_subprocess, folder, capsys)

    # notes the tool printed before it met the problem (evaluate.py's patching choice) are not errors
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("note: ")]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, stderr[-3000:])
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert tree_digest(folder, *shared) == before  # nothing written, replaced or removed
    assert not (folder / "payload_ran").exists()


# ----------------------------------------------------------------------------- resume falls back
def test_resume_skips_garbage_latest_and_a_pickle_payload(world, tmp_path):
    """A ``latest`` pointer holding garbage and an RNG file replaced by a pickle payload after the
    write: --load names both, falls back to iteration 2, and the payload never runs."""
    root = world.copy_checkpoint(tmp_path)
    rng_file = iteration_dir(root, 4) / "rng" / "rank_0.pt"
    torch.save({"world_size": 1, "state": Payload(tmp_path / "payload_ran")}, rng_file)
    (root / LATEST_FILE).write_text("4x")
    result = run_pretrain(world.train_args("--train-iters", "3", "--load", str(root), "--save", str(root),
                                           "--override-opt-param-scheduler"))
    assert f"ignoring {root / LATEST_FILE}: expected an iteration number, found '4x'" in result.stdout
    assert f"refusing checkpoint {iteration_dir(root, 4)}: {rng_file}" in result.stdout
    assert f"falling back to {iteration_dir(root, 2)}" in result.stdout
    assert not (tmp_path / "payload_ran").exists()
    assert (root / LATEST_FILE).read_text() == "3"
