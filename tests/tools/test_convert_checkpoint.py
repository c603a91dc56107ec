"""tools/convert_checkpoint.py: megatron <-> safetensors round trips give identical logits; DeepSpeed -> safetensors."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tests.conftest import free_port, run_pretrain


@pytest.fixture
def single_process_env(monkeypatch):
    """The converter sets MASTER_*/RANK/WORLD_SIZE; monkeypatch restores them for later subprocess tests."""
    for name, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(free_port())), ("RANK", "0"),
                        ("WORLD_SIZE", "1")):
        monkeypatch.setenv(name, value)


def checkpoint_logits(root, model_name: str, tokens: torch.Tensor) -> torch.Tensor:
    """Load a checkpoint into a fresh TP=1 model and return its logits on ``tokens`` (N+1 per row)."""
    from megatron.core import dist_checkpointing

    from megatron_lst.training.checkpointing import iteration_dir, load_checkpoint, read_latest_iteration
    from megatron_lst.training.initialize import destroy_distributed
    from megatron_lst.training.checkpoint_loading import initialize_single_process
    from tools.convert_checkpoint import build_model, single_process_config

    common = dist_checkpointing.load_common_state_dict(str(iteration_dir(root, read_latest_iteration(root))))
    config = single_process_config(common["config"])
    initialize_single_process(config.data.seed, backend="gloo")
    try:
        model = build_model(config).eval()
        load_checkpoint(root, model, load_rng=False)
        inputs = tokens[:, :-1]
        with torch.no_grad():
            if model_name == "baseline":
                positions = torch.arange(inputs.shape[1]).expand_as(inputs)
                return model(inputs, positions, None)
            return model(inputs, torch.ones_like(tokens))
    finally:
        destroy_distributed()


def round_trip(base_args, tmp_path, model_name: str) -> None:
    from safetensors.torch import load_file

    from tools.convert_checkpoint import main

    first = tmp_path / "trained"
    run_pretrain([*base_args, "--model", model_name, "--train-iters", "2", "--save", str(first)])
    consolidated, second = tmp_path / "consolidated", tmp_path / "converted_back"
    assert main(["to-safetensors", "--load", str(first), "--output", str(consolidated)]) == 0
    meta = json.loads((consolidated / "config.json").read_text())
    assert meta["progress"]["iteration"] == 2 and meta["config"]["train"]["model"] == model_name
    assert all(t.dtype == torch.float32 for t in load_file(str(consolidated / "model.safetensors")).values())
    assert main(["from-safetensors", "--input", str(consolidated), "--save", str(second)]) == 0
    assert (second / "latest_checkpointed_iteration.txt").read_text() == "2"
    tokens = torch.randint(0, 200, (2, 17), generator=torch.Generator().manual_seed(0))
    original = checkpoint_logits(first, model_name, tokens)
    converted = checkpoint_logits(second, model_name, tokens)
    assert torch.isfinite(original).all()
    assert torch.equal(original, converted)
    assert_evaluates_the_same(first, second, tmp_path)


def assert_evaluates_the_same(original_root, converted_root, tmp_path) -> None:
    """tools/evaluate.py reads the converted checkpoint and scores every ending as the original does."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT, child_env

    benchmark = tmp_path / "benchmark.jsonl"
    stories = [("the minister said the plan", ["would cost more", "the dog barked"]),
               ("police said the fire", ["started at night", "three four five"])]
    benchmark.write_text("".join(json.dumps({"id": str(i), "label": 0, "prompt": {"text": prompt},
                                             "endings": [{"text": e} for e in endings]}) + "\n"
                                 for i, (prompt, endings) in enumerate(stories)))
    env = {k: v for k, v in child_env().items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    scores = []
    for root in (original_root, converted_root):
        output = tmp_path / f"{root.name}.json"
        result = subprocess.run([sys.executable, "tools/evaluate.py", "--checkpoint", str(root), "--benchmark",
                                 str(benchmark), "--directions", "tt", "--output", str(output)],
                                cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        scores.append(json.loads(output.read_text())["results"]["T->T"]["items"])
    assert scores[0] == scores[1]


def test_saved_config_rebuilds_for_one_process_and_drops_unknown_keys():
    from megatron_lst.training.arguments import parse_args
    from tools.convert_checkpoint import single_process_config

    trained = parse_args(["--model-flavour", "420m", "--model", "lst", "--tensor-model-parallel-size", "2",
                          "--patch-size", "3", "--save", "ckpt"])
    saved = trained.to_dict()
    saved["train"]["field_from_a_newer_release"] = 1
    rebuilt = single_process_config(saved, tokenizer_model="other.model")
    assert rebuilt.model_config == trained.model_config and rebuilt.patching == trained.patching
    assert rebuilt.parallel.tensor_model_parallel_size == 1 and rebuilt.checkpoint.save is None
    assert rebuilt.data.tokenizer_model == "other.model"


@pytest.mark.slow
def test_megatron_safetensors_round_trip_gives_identical_logits(base_args, tmp_path, single_process_env):
    round_trip(base_args, tmp_path, "baseline")


@pytest.mark.slow
def test_lst_round_trip_gives_identical_logits(base_args, tmp_path, single_process_env):
    round_trip(base_args, tmp_path, "lst")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_deepspeed_checkpoint_to_safetensors(base_args, tmp_path, single_process_env, monkeypatch):
    """ZeRO-1 on 2 ranks -> one file whose tensors are the engine's full fp32 weights."""
    from safetensors.torch import load_file

    from tools.convert_checkpoint import main

    monkeypatch.setenv("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    ds_root, consolidated, back = tmp_path / "ds", tmp_path / "consolidated", tmp_path / "megatron"
    run_pretrain([*base_args, "--train-iters", "2", "--engine", "deepspeed", "--deepspeed-config",
                  "examples/deepspeed/zero1.json", "--save", str(ds_root)], nproc=2)
    assert main(["deepspeed-to-safetensors", "--load", str(ds_root), "--output", str(consolidated)]) == 0
    weights = load_file(str(consolidated / "model.safetensors"))
    module = torch.load(ds_root / "iter_0000002" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    for name, value in weights.items():
        assert torch.equal(value, module[name].float()), name
    assert main(["from-safetensors", "--input", str(consolidated), "--save", str(back)]) == 0
    tokens = torch.randint(0, 200, (2, 17), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(checkpoint_logits(back, "baseline", tokens)).all()
