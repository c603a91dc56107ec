"""End-to-end LST runs of pretrain_lst.py --model lst: tensor- and pipeline-parallel equivalence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.conftest import read_metrics, run_pretrain


def lst_args(base_args: list[str]) -> list[str]:
    args = [*base_args, "--model", "lst", "--local-window-size", "16"]
    return args


def losses(path: Path) -> dict[int, float]:
    return {it: row["lm_loss"] for it, row in read_metrics(path).items()}


def assert_close(reference: dict, other: dict, iterations, rel: float) -> None:
    for it in iterations:
        assert math.isclose(reference[it], other[it], rel_tol=rel), (it, reference[it], other[it])


@pytest.mark.slow
def test_lst_tensor_parallel_matches_single_rank_and_its_checkpoint_reshards(base_args, tmp_path):
    args = [*lst_args(base_args), "--train-iters", "3", "--eval-interval", "3", "--eval-iters", "2"]
    save = tmp_path / "ckpt"
    run_pretrain([*args, "--log-json", str(tmp_path / "tp1.jsonl")])
    run_pretrain([*args, "--tensor-model-parallel-size", "2", "--save", str(save),
                  "--log-json", str(tmp_path / "tp2.jsonl")], nproc=2)
    reference = losses(tmp_path / "tp1.jsonl")
    assert all(math.isfinite(value) for value in reference.values())
    assert_close(reference, losses(tmp_path / "tp2.jsonl"), range(1, 4), 1e-5)
    # the TP=2 checkpoint (dist_checkpointing, sharded_state_dict) loads at TP=1
    run_pretrain([*args, "--load", str(save), "--no-load-optim", "--skip-train",
                  "--log-json", str(tmp_path / "loaded.jsonl")])
    tp2 = read_metrics(tmp_path / "tp2.jsonl", "valid")[3]["lm_loss"]
    loaded = read_metrics(tmp_path / "loaded.jsonl", "valid")[3]["lm_loss"]
    assert math.isclose(loaded, tp2, rel_tol=1e-5), (loaded, tp2)


@pytest.mark.slow
def test_lst_pipeline_parallel_1f1b_matches_single_rank(base_args, tmp_path):
    """Local widths differ from the global one, so the boundary tensor is padded and split; the
    first stage (with the encoder) gets 1 of the 3 global layers."""
    args = [*lst_args(base_args), "--train-iters", "3", "--global-batch-size", "8",  # 4 micro-batches: 1F1B
            "--encoder-hidden-size", "32", "--decoder-hidden-size", "48", "--num-layers", "3"]
    run_pretrain([*args, "--log-json", str(tmp_path / "pp1.jsonl")])
    run_pretrain([*args, "--pipeline-model-parallel-size", "2", "--decoder-first-pipeline-num-layers", "1",
                  "--log-json", str(tmp_path / "pp2.jsonl")], nproc=2)
    assert_close(losses(tmp_path / "pp1.jsonl"), losses(tmp_path / "pp2.jsonl"), range(1, 4), 1e-5)


@pytest.fixture(scope="module")
def speech_text_prefix(tmp_path_factory, text_corpus) -> str:
    """A small aligned speech-text corpus, preprocessed with the text corpus's tokenizer."""
    import importlib.util
    import json

    from megatron_lst.data.synthetic import random_aligned_records

    tool_path = Path(__file__).resolve().parents[2] / "tools" / "preprocess_data.py"
    spec = importlib.util.spec_from_file_location("preprocess_data_for_lst", tool_path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    root = tmp_path_factory.mktemp("speech_corpus")
    source = root / "speech.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in random_aligned_records(80, seed=3)))
    assert tool.main(["--input", str(source), "--output-prefix", str(root / "sp"),
                      "--tokenizer-model", str(text_corpus.tokenizer_model), "--append-eod", "--quiet"]) == 0
    return str(root / "sp_speech_document")


@pytest.mark.slow
def test_lst_on_speech_text_with_mixed_patching_pipeline_matches_single_rank(base_args, speech_text_prefix, tmp_path):
    """Variable patch counts per micro-batch cross the PP boundary; text and speech losses are logged."""
    args = [*lst_args(base_args), "--data-path", "0.5", speech_text_prefix, "0.5", base_args[base_args.index("--data-path") + 1],
            "--patching", "mixed", "--patch-size", "4", "--train-iters", "2", "--global-batch-size", "8"]
    run_pretrain([*args, "--log-json", str(tmp_path / "pp1.jsonl")])
    run_pretrain([*args, "--pipeline-model-parallel-size", "2", "--log-json", str(tmp_path / "pp2.jsonl")], nproc=2)
    reference = read_metrics(tmp_path / "pp1.jsonl")
    assert {"speech_loss", "text_loss"} <= set(reference[1])
    assert_close(losses(tmp_path / "pp1.jsonl"), losses(tmp_path / "pp2.jsonl"), range(1, 3), 1e-5)


@pytest.mark.slow
def test_lst_curriculum_on_speech_text_resumes_exactly(base_args, speech_text_prefix, tmp_path):
    """Stop at 6 (a checkpoint), resume to 12: curriculum patch choices, data and RNG replay bitwise."""
    text_prefix = base_args[base_args.index("--data-path") + 1]
    args = [*lst_args(base_args), "--data-path", "0.5", speech_text_prefix, "0.5", text_prefix, "--train-iters", "12",
            "--patching", "curriculum", "--curriculum-tau1", "0.25", "--curriculum-tau2", "0.75"]
    run_pretrain([*args, "--log-json", str(tmp_path / "straight.jsonl")])
    save = tmp_path / "ckpt"
    run_pretrain([*args, "--save", str(save), "--exit-interval", "6", "--log-json", str(tmp_path / "first.jsonl")])
    run_pretrain([*args, "--load", str(save), "--log-json", str(tmp_path / "resumed.jsonl")])
    straight, resumed = losses(tmp_path / "straight.jsonl"), losses(tmp_path / "resumed.jsonl")
    assert sorted(resumed) == list(range(7, 13))
    for iteration in range(7, 13):
        assert straight[iteration] == resumed[iteration], (iteration, straight[iteration], resumed[iteration])
