"""--dry-run: the plan's numbers (layout, parameters, FLOPs, memory) and its refusals."""

from __future__ import annotations

import pytest

from megatron_lst.training.arguments import parse_args
from megatron_lst.training.dry_run import LayoutError, padded_vocab_size, parameter_counts, plan, resolve_layout


def config_for(*flags: str):
    return parse_args(["--model-flavour", "debug", *flags])


def test_layout_from_world_size_and_micro_batches():
    config = config_for("--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                        "--micro-batch-size", "2", "--global-batch-size", "16")
    layout = resolve_layout(config, world_size=8)
    assert (layout.tensor, layout.pipeline, layout.data) == (2, 2, 2)
    assert layout.micro_batches_per_step == 4


@pytest.mark.parametrize(
    "flags, world, message",
    [
        (["--tensor-model-parallel-size", "3"], 6, "global attention heads (4) are not divisible by TP=3"),
        (["--pipeline-model-parallel-size", "3"], 3, "global layers (2) are not divisible by PP=3"),
        (["--tensor-model-parallel-size", "2"], 3, "world size 3 is not divisible by TP x PP = 2 x 1"),
        (["--micro-batch-size", "4", "--global-batch-size", "8"], 4, "--global-batch-size 8 is not divisible by --micro-batch-size x data-parallel size = 4 x 4"),
        (["--model", "lst", "--encoder-num-attention-heads", "3", "--tensor-model-parallel-size", "2"], 2,
         "encoder attention heads (3) are not divisible by TP=2"),
        (["--engine", "deepspeed", "--tensor-model-parallel-size", "2"], 2, "--engine deepspeed is data parallel only"),
    ],
)
def test_impossible_layouts_are_refused_with_the_reason(flags, world, message):
    with pytest.raises(LayoutError, match="impossible parallel layout") as error:
        resolve_layout(config_for(*flags), world_size=world)
    assert message in str(error.value)


def test_baseline_parameter_count_matches_the_built_model(text_corpus, monkeypatch):
    """The analytic count is exact for the baseline: pinned against megatron's GPTModel."""
    from megatron_lst.training.baseline_task import BaselineTask
    from megatron_lst.training.initialize import destroy_distributed, initialize_distributed
    from tests.conftest import free_port

    # monkeypatch restores MASTER_*, so they do not leak into other tests' subprocess runs
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    config = config_for("--tokenizer-model", str(text_corpus.tokenizer_model), "--num-layers", "3")
    initialize_distributed(1, 1, seed=1)
    try:
        model = BaselineTask(config).build_model(config, True, True)
        built = sum(p.numel() for p in model.parameters())
    finally:
        destroy_distributed()
    result = plan(config, world_size=1)
    assert result["parameters"]["total"] == built


def test_padding_matches_the_model_builder():
    from megatron_lst.models.baseline import padded_vocab_size as builder_padding

    for vocab, tp in ((32507, 1), (32507, 4), (1000, 2), (128, 1)):
        assert padded_vocab_size(vocab, tp) == builder_padding(vocab, tp)


def test_paper_sizes_plan_and_lst_counts_local_modules():
    baseline = plan(parse_args(["--config", "examples/configs/1b.yaml", "--model", "baseline"]), world_size=32)
    lst = plan(parse_args(["--config", "examples/configs/1b.yaml", "--model", "lst"]), world_size=32)
    assert 1.0e9 < baseline["parameters"]["total"] < 1.6e9
    assert set(lst["flops_per_step"]) == {"encoder", "global", "decoder", "total"}
    assert lst["tokens_per_step"] > baseline["tokens_per_step"]  # speech compression: more raw tokens per step
    memory = baseline["memory_gib"]
    assert memory["total_distributed"] < memory["total"]
    assert memory["optimizer_distributed"] == pytest.approx(memory["optimizer"] / 32)


def test_recompute_and_sequence_parallel_shrink_activations():
    base = ["--config", "examples/configs/7b.yaml", "--model", "baseline"]
    plain = plan(parse_args(base), world_size=32)["memory_gib"]["activations"]
    parallel = plan(parse_args([*base, "--sequence-parallel"]), world_size=32)["memory_gib"]["activations"]
    full = plan(parse_args([*base, "--recompute-granularity", "full"]), world_size=32)["memory_gib"]["activations"]
    assert full < parallel < plain


def test_dry_run_flag_prints_the_plan_without_training(capsys):
    from pretrain_lst import main

    assert main(["--config", "examples/configs/420m.yaml", "--model", "lst", "--dry-run", "--world-size", "32",
                 "--train-flops", "1e20"]) == 0
    out = capsys.readouterr().out
    assert "world 32 = TP 1 x PP 1 x DP 32" in out
    assert "1 micro-batches of 4 per DP rank" in out
    assert "--train-flops 1e+20 lasts about" in out
    assert main(["--config", "examples/configs/7b.yaml", "--dry-run", "--world-size", "6"]) == 2
    assert "not divisible by TP x PP = 4 x 1" in capsys.readouterr().out


@pytest.mark.parametrize("layers, pp, first, last, ok", [
    (4, 2, None, None, True), (3, 2, None, None, False),
    (3, 2, 1, None, True),  # the first stage (with the patch encoder) takes 1, the last 2
    (3, 2, 1, 1, False), (4, 3, 1, 1, True), (5, 3, 1, 1, True), (5, 4, 1, 1, False), (1, 2, 2, None, False),
])
def test_uneven_pipeline_stages_follow_megatron_cores_rule(layers, pp, first, last, ok):
    from megatron_lst.training.dry_run import pipeline_layer_problems

    assert (pipeline_layer_problems(layers, pp, first, last) == []) == ok
