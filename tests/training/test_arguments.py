"""Flags, YAML configs and flavours resolve to the right config objects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from megatron_lst.training.arguments import build_parser, parse_args

REPO = Path(__file__).resolve().parents[2]


def test_help_explains_every_flag():
    parser = build_parser()
    undocumented = [a.option_strings for a in parser._actions if a.option_strings and not a.help]
    assert undocumented == []
    result = subprocess.run([sys.executable, str(REPO / "pretrain_lst.py"), "--help"], capture_output=True,
                            text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert result.returncode == 0
    for flag in ("--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--micro-batch-size",
                 "--global-batch-size", "--seq-length", "--lr", "--train-iters", "--save", "--load",
                 "--save-interval", "--tensorboard-dir", "--data-path"):
        assert flag in result.stdout


def test_precedence_default_flavour_yaml_cli(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("model_flavour: 1b\ntrain:\n  train_iters: 50\noptimizer:\n  lr: 1.0e-3\n")
    config = parse_args(["--config", str(config_file), "--lr", "2e-3", "--num-layers", "3"])
    assert config.model_config.hidden_size == 2048  # from the 1b flavour
    assert config.model_config.num_layers == 3  # command line over flavour
    assert config.train.train_iters == 50  # YAML over default
    assert config.optimizer.lr == 2e-3  # command line over YAML
    assert config.optimizer.weight_decay == 0.1 and config.optimizer.adam_beta2 == 0.95  # paper defaults


def test_weighted_data_path_is_kept_in_order():
    config = parse_args(["--data-path", "0.33", "speech", "0.67", "text"])
    assert config.data.data_path == ["0.33", "speech", "0.67", "text"]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "examples" / "configs").glob("*.yaml")))
def test_shipped_configs_parse(name):
    parse_args(["--config", str(REPO / "examples" / "configs" / name)])


def test_bad_settings_are_refused_with_the_reason(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--global-batch-size", "10", "--micro-batch-size", "4"])
    assert "--global-batch-size 10 is not divisible by --micro-batch-size x data-parallel size = 4 x 1" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_flag: 3\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(bad)])
    assert "unknown configuration keys: ['no_such_flag']" in capsys.readouterr().err


def test_every_literal_field_is_a_flag_with_its_choices_and_is_checked_on_construction(tmp_path, capsys):
    import dataclasses
    import typing

    from megatron_lst.choices import literal_choices
    from megatron_lst.training.arguments import SECTIONS, config_from_values

    actions = {action.dest: action for action in build_parser()._actions}
    checked = 0
    for cls in SECTIONS.values():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            choices = literal_choices(hints[field.name])
            if choices is None:
                continue
            assert tuple(actions[field.name].choices) == choices, field.name
            with pytest.raises(ValueError, match=f"--{field.name.replace('_', '-')} must be one of"):
                config_from_values({field.name: "no-such-choice"})
            checked += 1
    assert checked >= 12  # model, engine, data_mode, patching, ... are all Literal-typed
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  data_mode: asr_tts\n")  # YAML bypasses argparse's choices, not the check
    with pytest.raises(SystemExit):
        parse_args(["--config", str(bad)])
    assert "--data-mode must be one of interleaved, speech, text, asr, tts, got 'asr_tts'" in capsys.readouterr().err


def test_data_loader_settings_are_data_flags():
    config = parse_args(["--num-workers", "2", "--bucket-window", "4"])
    assert (config.data.num_workers, config.data.bucket_window) == (2, 4)
    with pytest.raises(SystemExit):
        parse_args(["--num-workers", "-1"])


def test_the_batch_check_is_one_function_that_names_the_flags():
    from megatron_lst.training.arguments import micro_batches_per_step

    assert micro_batches_per_step(16, 2, 4) == 2
    with pytest.raises(ValueError, match="--global-batch-size 16 is not divisible .* = 3 x 2"):
        micro_batches_per_step(16, 3, 2)
    assert parse_args(["--global-batch-size", "8", "--micro-batch-size", "2"]).data.micro_batches_per_step(2) == 2


CURRICULUM = ["--model", "lst", "--patching", "curriculum"]


def test_curriculum_fractions_are_of_the_steps_the_run_is_planned_to_take():
    from megatron_lst.training.arguments import run_patching_config
    from megatron_lst.training.dry_run import flops_per_step, planned_steps, vocab_size

    config = parse_args([*CURRICULUM, "--curriculum-tau1", "0.25", "--curriculum-tau2", "0.5", "--train-iters", "1000"])
    patching = run_patching_config(config)
    assert (patching.tau1, patching.tau2) == (250, 500)
    # a FLOPs budget that lasts 400 steps ends the run before --train-iters 1000: fractions are of 400
    per_step = flops_per_step(config, vocab_size(config)[0])["total"]
    budgeted = parse_args([*CURRICULUM, "--curriculum-tau1", "0.25", "--curriculum-tau2", "0.5", "--train-iters", "1000",
                           "--train-flops", str(400 * per_step)])
    assert planned_steps(budgeted).steps == 400 and planned_steps(budgeted).estimated
    assert (run_patching_config(budgeted).tau1, run_patching_config(budgeted).tau2) == (100, 200)


def test_a_curriculum_that_never_reaches_static_patching_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args([*CURRICULUM, "--curriculum-tau1", "100", "--curriculum-tau2", "3000", "--train-iters", "2000"])
    error = capsys.readouterr().err
    assert "reaches static patching at step 3000" in error and "2000 steps (ends on --train-iters 2000)" in error


def test_a_budget_that_may_end_before_the_static_phase_is_warned_with_the_numbers(capsys):
    from megatron_lst.training.dry_run import flops_per_step, vocab_size

    per_step = flops_per_step(parse_args(CURRICULUM), vocab_size(parse_args(CURRICULUM))[0])["total"]
    parse_args([*CURRICULUM, "--curriculum-tau1", "100", "--curriculum-tau2", "300", "--train-iters", "2000",
                "--train-flops", str(250 * per_step)])
    warning = capsys.readouterr().err
    assert "warning: the curriculum reaches static patching at step 300" in warning
    assert "about 250 steps (ends on --train-flops" in warning
