"""Megatron-LM's flags with Megatron-LM's meaning (--min-lr, --train-samples, --exit-duration-in-mins,
--valid-data-path, --tokenizer-type, --use-checkpoint-args, --overlap-*), a clean --help, and
Megatron-LM's TensorBoard tags, TFLOP/s per GPU and timestamps in the logs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_lst.training.arguments import parse_args
from megatron_lst.training.run_config import config_from_saved
from tests.conftest import read_metrics, run_pretrain

REPO = Path(__file__).resolve().parents[2]
TIMESTAMP = r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] "


def test_help_shows_real_defaults_and_positive_booleans():
    result = subprocess.run([sys.executable, str(REPO / "pretrain_lst.py"), "--help"], capture_output=True,
                            text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "", "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # flags and their help on one line, however argparse wrapped them
    assert "(default: None)" not in text and "--no-no-" not in text
    assert "--load-optim, --no-load-optim" in text
    assert re.search(r"--lr LR peak learning rate \(paper: 4e-4\) \(default: 0\.0004\)", text)
    assert ("--load-optim, --no-load-optim load the optimizer state with the weights (--no-load-optim: weights "
            "only) (default: on)") in text
    assert "--num-layers NUM_LAYERS global transformer layers (default: 2)" in text  # the debug flavour's
    assert ("--min-lr MIN_LR the floor the LR decays to (Megatron-LM's default is 0.0; here, when not given: --lr x "
            "--min-lr-ratio, the paper's 1% of the peak) --min-lr-ratio") in text  # None: no "(default: ...)"


def test_no_load_optim_keeps_its_old_spelling_and_old_saved_configs_read():
    assert parse_args(["--no-load-optim"]).checkpoint.load_optim is False
    assert parse_args([]).checkpoint.load_optim is True
    old = parse_args([]).to_dict()
    del old["checkpoint"]["load_optim"]
    old["checkpoint"]["no_load_optim"] = True
    assert config_from_saved(old).checkpoint.load_optim is False


def test_min_lr_is_the_decay_floor_and_defaults_to_the_papers_one_percent():
    from megatron_lst.training.engine import build_scheduler

    def final_lr(argv):
        config = parse_args(["--train-iters", "10", "--lr-warmup-iters", "2", "--lr", "1e-3", *argv])
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
        scheduler = build_scheduler(optimizer, config)
        scheduler.step(increment=10 * config.data.global_batch_size)
        return optimizer.param_groups[0]["lr"]

    assert final_lr([]) == pytest.approx(1e-5)  # 1% of the peak
    assert final_lr(["--min-lr", "0"]) == 0.0  # Megatron-LM's default, asked for
    assert final_lr(["--min-lr", "2e-4", "--min-lr-ratio", "0.5"]) == pytest.approx(2e-4)  # --min-lr wins


def test_train_samples_sets_the_iterations_and_excludes_train_iters(capsys):
    from megatron_lst.training.dry_run import planned_steps
    from megatron_lst.training.train_state import TrainState

    config = parse_args(["--train-samples", "42", "--global-batch-size", "8"])
    assert config.train.train_iters == 5  # 42 // 8, as Megatron-LM
    assert planned_steps(config).describe() == "5 steps (ends on --train-samples 42)"
    assert TrainState(iteration=5).budget_reached(config.train) == "reached --train-samples 42 (5 iterations)"
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--train-samples", "42", "--train-iters", "3"])
    assert exit_info.value.code == 2 and "exclude each other" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--train-samples", "4", "--global-batch-size", "8"])
    assert "less than one global batch" in capsys.readouterr().err


def test_overlap_flags_need_their_partners_a_gpu_and_the_megatron_engine(capsys):
    from megatron_lst.training.hardware import hardware_problems

    config = parse_args(["--overlap-grad-reduce"])
    problems = hardware_problems(config)
    if not torch.cuda.is_available():
        assert any(p.startswith("--overlap-grad-reduce") and "needs a GPU" in p for p in problems)
    with pytest.raises(SystemExit):
        parse_args(["--overlap-param-gather", "--overlap-grad-reduce"])
    assert "--overlap-param-gather needs --use-distributed-optimizer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--overlap-grad-reduce", "--engine", "deepspeed"])
    assert "overlap_comm" in capsys.readouterr().err


def test_megatron_engine_hands_the_overlap_flags_to_megatron_core(monkeypatch):
    """What reaches ``DistributedDataParallelConfig`` (the GPU run itself is tests/gpu's)."""
    from megatron_lst.training import megatron_engine

    seen = {}

    class Recorder:
        def __init__(self, **kwargs):
            seen.update(kwargs)
            raise RuntimeError("recorded")

    monkeypatch.setattr(megatron_engine, "DistributedDataParallelConfig", Recorder)
    engine = object.__new__(megatron_engine.MegatronEngine)
    engine.config = parse_args(["--overlap-grad-reduce", "--overlap-param-gather", "--use-distributed-optimizer"])

    class Task:
        def build_model(self, config, pre_process, post_process):
            module = torch.nn.Linear(2, 2)
            module.config = None
            return module

    engine.task = Task()
    monkeypatch.setattr(megatron_engine.parallel_state, "is_pipeline_first_stage", lambda: True)
    monkeypatch.setattr(megatron_engine.parallel_state, "is_pipeline_last_stage", lambda: True)
    with pytest.raises(RuntimeError, match="recorded"):
        engine._build_model()
    assert seen["overlap_grad_reduce"] and seen["overlap_param_gather"] and seen["use_distributed_optimizer"]


def test_tokenizer_type_reaches_the_tokenizer_and_the_saved_config(tmp_path):
    """A Hugging Face tokenizer.json saved under a SentencePiece-looking name: ``auto`` guesses from
    the name and fails; ``--tokenizer-type huggingface`` reads it, and the run config keeps the type."""
    from megatron_lst.choices import TokenizerType, literal_choices
    from megatron_lst.tokenizer import TEXT_MODEL_TYPES
    from megatron_lst.training.task_common import load_tokenizer
    from tests.test_tokenizer import hf_tokenizer_json

    assert literal_choices(TokenizerType) == TEXT_MODEL_TYPES  # the flag's choices are what the reader takes

    corpus = ["the cat sat on the mat", "a dog ran in the park"] * 30
    model = tmp_path / "text.model"
    model.write_bytes(Path(hf_tokenizer_json(tmp_path / "hf", corpus, vocab_size=200)).read_bytes())
    config = parse_args(["--tokenizer-model", str(model), "--tokenizer-type", "huggingface"])
    assert load_tokenizer(config).text_model.describe()["type"] == "huggingface"
    assert config_from_saved(config.to_dict()).data.tokenizer_type == "huggingface"
    with pytest.raises(Exception):  # noqa: B017 - SentencePiece's own parse error
        load_tokenizer(parse_args(["--tokenizer-model", str(model)]))


def test_a_timed_run_stops_saves_validates_on_its_own_blend_and_logs_megatron_tags(base_args, text_corpus, tmp_path,
                                                                                     capsys):
    """--exit-duration-in-mins stops (and saves) after the first step past it; --valid-data-path gives
    a validation to a run whose --split keeps none; TensorBoard holds Megatron-LM's tags; every
    line starts with the time; then --use-checkpoint-args takes the model from that checkpoint."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    save, board = tmp_path / "ckpt", tmp_path / "tb"
    result = run_pretrain([*base_args, "--train-iters", "50", "--exit-duration-in-mins", "0.0001",
                           "--save", str(save), "--split", "100,0,0", "--valid-data-path", text_corpus.data_prefix,
                           "--eval-interval", "1", "--tensorboard-dir", str(board),
                           "--log-json", str(tmp_path / "run.jsonl"), "--num-layers", "3"])
    assert "ran past --exit-duration-in-mins 0.0001: saved a checkpoint to" in result.stdout
    assert (save / "iter_0000001").is_dir() and not (save / "iter_0000002").exists()
    assert read_metrics(tmp_path / "run.jsonl", "valid")[1]["lm_loss"] > 0  # read from --valid-data-path
    lines = [line for line in result.stdout.splitlines() if "iteration" in line]
    assert lines and all(re.match(TIMESTAMP, line) for line in lines), lines
    assert re.search(r"\| [0-9.e+-]+ TFLOP/s/GPU \|", result.stdout)
    events = EventAccumulator(str(board))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("lm loss", "lm loss vs samples", "learning-rate", "learning-rate vs samples", "grad-norm",
                "batch-size", "iteration-time", "throughput", "throughput vs samples", "lm loss validation",
                "lm loss validation ppl", "train/lm_loss"):
        assert tag in tags, (tag, sorted(tags))
    assert events.Scalars("throughput")[0].value > 0
    assert events.Scalars("lm loss vs samples")[0].step == 4  # one global batch consumed

    config = parse_args([*base_args, "--load", str(save), "--use-checkpoint-args", "--num-layers", "5",
                         "--model-flavour", "demo", "--tokenizer-type", "auto"])
    assert config.model_config.num_layers == 3 and config.model_config.hidden_size == 64  # the checkpoint's
    err = capsys.readouterr().err
    assert "--num-layers 5 -> 3" in err and "--model-flavour is ignored" in err
    tuned = run_pretrain([*base_args, "--load", str(save), "--use-checkpoint-args", "--finetune", "--num-layers", "5",
                          "--train-iters", "1"])  # builds the checkpoint's 3 layers, so its weights load
    assert "loaded" in tuned.stdout and "--num-layers 5 -> 3" in tuned.stderr
    with pytest.raises(SystemExit):
        parse_args(["--use-checkpoint-args"])
    assert "give --load" in capsys.readouterr().err
