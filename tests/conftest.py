"""Shared fixtures: a small real text corpus, and a runner for pretrain_lst.py (1 or N ranks)."""

from __future__ import annotations

import json
import os
import socket
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_command(script: str | Path, args: list[str], nproc: int) -> list[str]:
    """``script args`` under torchrun with ``nproc`` local ranks on a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(script), *args]


def pretrain_command(args: list[str], nproc: int = 1) -> list[str]:
    script = str(REPO_ROOT / "pretrain_lst.py")
    if nproc == 1:
        return [sys.executable, script, *args]
    return torchrun_command(script, args, nproc)


def run_tensor_parallel_worker(script: str | Path, output: Path, nproc: int = 2, timeout: int = 600) -> dict:
    """Run a test's worker script under torchrun; returns the JSON it wrote to ``output`` (rank 0)."""
    result = subprocess.run(torchrun_command(script, [str(output)], nproc), env=child_env(), capture_output=True,
                            text=True, timeout=timeout, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    return json.loads(Path(output).read_text())


def worst_over_ranks(differences: dict[str, float]) -> dict[str, float]:
    """A worker's fast-vs-reference differences as the worst rank has them: the largest difference,
    and the smallest ``gradient_scale`` (which shows the comparison was not of zeros)."""
    import torch

    worst = {}
    for name, value in differences.items():
        sign = -1.0 if name == "gradient_scale" else 1.0
        reduced = torch.tensor([sign * value], dtype=torch.float64)
        torch.distributed.all_reduce(reduced, op=torch.distributed.ReduceOp.MAX)
        worst[name] = sign * float(reduced)
    return worst


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_pretrain(args: list[str], nproc: int = 1, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(pretrain_command(args, nproc), env=child_env(), capture_output=True, text=True,
                            timeout=timeout, cwd=REPO_ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"pretrain failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def signal_after_two_logged_steps(args: list[str], log: Path, sig: int = signal.SIGTERM) -> tuple[int, str]:
    """Start ``pretrain_lst.py args`` (which must log to ``--log-json log``), send ``sig`` once two
    steps are logged, and return (exit code, combined output)."""
    process = subprocess.Popen(pretrain_command(args), env=child_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (log.is_file() and log.read_text().count("\n") >= 2):
        assert process.poll() is None and time.time() < deadline, "training did not start"
        time.sleep(0.05)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


def read_metrics(path: Path, kind: str = "train") -> dict[int, dict]:
    """iteration -> metrics of that kind, from a --log-json file."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return {row["iteration"]: row for row in rows if row["kind"] == kind}


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory):
    from megatron_lst.demo.text_corpus import build_text_corpus

    return build_text_corpus(tmp_path_factory.mktemp("text_corpus"))


@pytest.fixture
def base_args(text_corpus, tmp_path) -> list[str]:
    """A tiny baseline run on the real text corpus."""
    return [
        "--model-flavour", "debug", "--model", "baseline",
        "--data-path", text_corpus.data_prefix, "--tokenizer-model", str(text_corpus.tokenizer_model),
        "--data-cache-path", str(tmp_path / "index_cache"),
        "--seq-length", "64", "--micro-batch-size", "2", "--global-batch-size", "4",
        "--lr", "1e-3", "--lr-warmup-iters", "2", "--log-interval", "1",
        "--eval-interval", "1000", "--eval-iters", "1", "--seed", "7",
    ]


@pytest.fixture(scope="module")
def single_rank_parallel_state():
    """A one-rank gloo group with megatron's model-parallel state, torn down after the module.

    The rendezvous goes through ``init_method`` rather than MASTER_* variables, which would leak
    into the environment of the subprocess runs of other tests.
    """
    import torch
    from megatron.core import parallel_state, tensor_parallel

    from megatron_lst.training.cpu_compat import apply_cpu_patches

    apply_cpu_patches()
    created = not torch.distributed.is_initialized()
    if created:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    tensor_parallel.model_parallel_cuda_manual_seed(3, inference_rng_tracker=True)
    yield
    parallel_state.destroy_model_parallel()
    if created:
        torch.distributed.destroy_process_group()
