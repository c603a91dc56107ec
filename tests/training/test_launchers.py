"""The launchers in examples/launch/ run in dry-run mode: layout, budgets and refusals."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_lst.training.arguments import parse_args
from megatron_lst.training.dry_run import plan

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCH = REPO_ROOT / "examples" / "launch"
PAPER_STEPS = {"420m": 100000, "1b": 200000, "7b": 25000}


def launch(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHON=sys.executable, PYTHONWARNINGS="ignore",
                    PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run(["bash", str(LAUNCH / script), *args], env=full_env, capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)


def budgets(size: str) -> tuple[float, float]:
    text = (LAUNCH / "train.sh").read_text()
    line = next(line for line in text.splitlines() if line.strip().startswith(f"{size})"))
    flops = float(re.search(r"FLOPS_BUDGET=([0-9.e+]+)", line).group(1))
    tokens = float(re.search(r"TOKENS_BUDGET=([0-9.e+]+)", line).group(1))
    return flops, tokens


@pytest.mark.parametrize("size", sorted(PAPER_STEPS))
def test_budgets_are_the_baselines_paper_run(size):
    """Compute budget = baseline FLOPs over the paper's steps; data budget = its raw tokens."""
    config = parse_args(["--config", f"examples/configs/{size}.yaml", "--model", "baseline"])
    result = plan(config, world_size=config.parallel.tensor_model_parallel_size)
    flops, tokens = budgets(size)
    assert flops == pytest.approx(result["flops_per_step"]["total"] * PAPER_STEPS[size], rel=1e-3)
    assert tokens == pytest.approx(result["tokens_per_step"] * PAPER_STEPS[size], rel=1e-6)


def test_compute_controlled_pair_plans_equal_iterations():
    """The paper's compute-controlled runs: the same steps (and positions per step) for both models."""
    result = launch("1b_compute_controlled.sh", DRY_RUN="1", NNODES="4", NODE_RANK="0",
                    MASTER_ADDR="10.0.0.1", GPUS_PER_NODE="8")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "launch: 1b_baseline_compute on 4 node(s) x 8 GPUs" in out and "launch: 1b_lst_compute" in out
    assert out.count("world 32 = TP 1 x PP 1 x DP 32") == 2
    assert out.count("batch: global 128 samples x 4096 positions") == 2
    planned = re.findall(r"planned steps: (.*)", out)
    assert planned == [f"{PAPER_STEPS['1b']} steps (ends on --train-iters {PAPER_STEPS['1b']})"] * 2
    assert "--train-flops" not in out


def test_flops_matched_pair_stops_lst_earlier_on_the_baselines_flops():
    steps = {}
    for model in ("baseline", "lst"):
        result = launch("train.sh", "1b", model, "flops", DRY_RUN="1", NNODES="4", GPUS_PER_NODE="8")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "--train-flops 9.696e+20 lasts about" in result.stdout
        steps[model] = int(re.search(r"planned steps: about (\d+) steps \(ends on --train-flops", result.stdout).group(1))
    assert steps["baseline"] == pytest.approx(PAPER_STEPS["1b"], rel=1e-3)
    assert steps["lst"] < steps["baseline"]  # the local modules cost FLOPs on top of the same global positions


def test_slurm_script_plans_outside_an_allocation():
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    result = subprocess.run(
        ["bash", str(LAUNCH / "slurm_7b.sbatch"), "lst", "data"], capture_output=True, text=True, timeout=300,
        cwd=REPO_ROOT, env=dict(env, PYTHON=sys.executable, PYTHONWARNINGS="ignore", DRY_RUN="1",
                                PYTHONPATH=str(REPO_ROOT)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world 128 = TP 4 x PP 1 x DP 32 (sequence parallel)" in result.stdout
    assert "--train-tokens 1.049e+11 lasts about" in result.stdout


def test_impossible_layout_exits_with_the_reason():
    result = launch("train.sh", "7b", "lst", "iters", DRY_RUN="1", NNODES="1", GPUS_PER_NODE="6")
    assert result.returncode == 2
    assert "world size 6 is not divisible by TP x PP = 4 x 1" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(path.name for path in LAUNCH.glob("*_controlled.sh")))
def test_every_pair_script_dry_runs(script):
    size = script.split("_")[0]
    nodes = "16" if size == "7b" else "4"
    result = launch(script, DRY_RUN="1", NNODES=nodes, GPUS_PER_NODE="8")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("parallel layout: world") == 2


@pytest.mark.slow
@pytest.mark.parametrize("size", sorted(PAPER_STEPS))
def test_every_slurm_script_dry_runs(size):
    result = launch(f"slurm_{size}.sbatch", "baseline", "compute", DRY_RUN="1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parallel layout: world" in result.stdout


def test_usage_errors_name_the_choices():
    result = launch("train.sh", "3b", "lst", "compute", DRY_RUN="1")
    assert result.returncode == 2 and "420m, 1b or 7b" in result.stderr
    result = launch("train.sh", "1b", "lst", "budget", DRY_RUN="1")
    assert result.returncode == 2 and "compute, flops or data" in result.stderr
    result = launch("train.sh", "1b", "bpe-baseline", "compute", DRY_RUN="1")
    assert result.returncode == 2 and "needs UNIT_BPE" in result.stderr


def test_bpe_baseline_plans_the_same_iterations_as_the_pair():
    result = launch("train.sh", "1b", "bpe-baseline", "compute", DRY_RUN="1", UNIT_BPE="runs/unit_bpe.model")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dry run: --model bpe-baseline" in result.stdout
    assert f"planned steps: {PAPER_STEPS['1b']} steps" in result.stdout
