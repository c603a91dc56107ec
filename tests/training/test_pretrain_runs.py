"""End-to-end runs of pretrain_lst.py on the real text corpus: parallel equivalence, exact resume,
crash safety of checkpoints, preemption and NaN handling (issue 2's acceptance tests)."""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import time
from pathlib import Path


from tests.conftest import child_env, pretrain_command, read_metrics, run_pretrain, signal_after_two_logged_steps


def losses(path: Path) -> dict[int, float]:
    return {it: row["lm_loss"] for it, row in read_metrics(path).items()}


def assert_close(reference: dict, other: dict, iterations, rel: float) -> None:
    for it in iterations:
        assert math.isclose(reference[it], other[it], rel_tol=rel), (it, reference[it], other[it])


def test_tensor_parallel_matches_single_rank(base_args, tmp_path):
    run_pretrain([*base_args, "--train-iters", "5", "--log-json", str(tmp_path / "tp1.jsonl")])
    run_pretrain([*base_args, "--train-iters", "5", "--tensor-model-parallel-size", "2",
                  "--log-json", str(tmp_path / "tp2.jsonl")], nproc=2)
    assert_close(losses(tmp_path / "tp1.jsonl"), losses(tmp_path / "tp2.jsonl"), range(1, 6), 1e-5)


def test_pipeline_parallel_1f1b_matches_single_rank(base_args, tmp_path):
    args = [*base_args, "--train-iters", "5", "--global-batch-size", "8"]  # 4 micro-batches: real 1F1B
    run_pretrain([*args, "--log-json", str(tmp_path / "pp1.jsonl")])
    run_pretrain([*args, "--pipeline-model-parallel-size", "2", "--log-json", str(tmp_path / "pp2.jsonl")], nproc=2)
    assert_close(losses(tmp_path / "pp1.jsonl"), losses(tmp_path / "pp2.jsonl"), range(1, 6), 1e-5)


def _wait_for_latest(save_dir: Path, iteration: int, process: subprocess.Popen, timeout: float = 300) -> None:
    latest = save_dir / "latest_checkpointed_iteration.txt"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if latest.is_file() and latest.read_text().strip() == str(iteration):
            return
        assert process.poll() is None, "training ended before the checkpoint appeared"
        time.sleep(0.01)
    raise TimeoutError(f"no checkpoint {iteration} in {save_dir}")


def test_resume_after_sigkill_is_bitwise_exact(base_args, tmp_path):
    # 8 micro-batches per step keeps a step long enough to SIGKILL between checkpoints 10 and 20
    args = [*base_args, "--train-iters", "20", "--global-batch-size", "16"]
    run_pretrain([*args, "--log-json", str(tmp_path / "straight.jsonl")])

    save = tmp_path / "ckpt"
    killed = subprocess.Popen(
        pretrain_command([*args, "--save", str(save), "--save-interval", "10",
                          "--log-json", str(tmp_path / "killed.jsonl")]),
        env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    _wait_for_latest(save, 10, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "10"

    run_pretrain([*args, "--load", str(save), "--save", str(save), "--log-json", str(tmp_path / "resumed.jsonl")])
    straight, resumed = losses(tmp_path / "straight.jsonl"), losses(tmp_path / "resumed.jsonl")
    assert sorted(resumed) == list(range(11, 21))
    for it in range(11, 21):
        assert straight[it] == resumed[it], (it, straight[it], resumed[it])


def test_half_written_checkpoint_is_never_loaded(base_args, tmp_path):
    save = tmp_path / "ckpt"
    run_pretrain([*base_args, "--train-iters", "4", "--save", str(save), "--save-interval", "2"])
    # what a crash during the save of iteration 6 leaves behind: a temp folder with part of the files
    partial = save / "iter_0000006.tmp-crashed"
    shutil.copytree(save / "iter_0000004", partial)
    for index, path in enumerate(sorted(p for p in partial.rglob("*") if p.is_file())):
        if index % 2 == 0:
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    result = run_pretrain([*base_args, "--train-iters", "6", "--load", str(save), "--override-opt-param-scheduler",
                           "--log-json", str(tmp_path / "r.jsonl")])
    assert "iter_0000004 at iteration 4" in result.stdout
    assert sorted(losses(tmp_path / "r.jsonl")) == [5, 6]


def test_tp2_checkpoint_loads_at_tp1_with_same_validation_loss(base_args, tmp_path):
    save = tmp_path / "ckpt"
    run_pretrain([*base_args, "--train-iters", "3", "--eval-interval", "3", "--eval-iters", "2",
                  "--tensor-model-parallel-size", "2", "--save", str(save),
                  "--log-json", str(tmp_path / "tp2.jsonl")], nproc=2)
    run_pretrain([*base_args, "--train-iters", "3", "--eval-iters", "2", "--load", str(save), "--no-load-optim",
                  "--skip-train", "--log-json", str(tmp_path / "tp1.jsonl")])
    tp2 = read_metrics(tmp_path / "tp2.jsonl", "valid")[3]["lm_loss"]
    tp1 = read_metrics(tmp_path / "tp1.jsonl", "valid")[3]["lm_loss"]
    assert math.isclose(tp1, tp2, rel_tol=1e-5), (tp1, tp2)


def test_sigterm_saves_a_loadable_checkpoint_and_exits_zero(base_args, tmp_path):
    save = tmp_path / "ckpt"
    log = tmp_path / "run.jsonl"
    returncode, output = signal_after_two_logged_steps(
        [*base_args, "--train-iters", "100000", "--save", str(save), "--log-json", str(log)], log)
    assert returncode == 0, output[-3000:]
    assert "received SIGTERM" in output
    saved_at = int((save / "latest_checkpointed_iteration.txt").read_text())
    result = run_pretrain([*base_args, "--train-iters", str(saved_at + 1), "--load", str(save),
                           "--override-opt-param-scheduler"])
    assert f"at iteration {saved_at}" in result.stdout


def test_injected_nan_is_reported_and_skipped(base_args, tmp_path):
    log = tmp_path / "nan.jsonl"
    result = run_pretrain([*base_args, "--train-iters", "5", "--debug-inject-nan-iter", "3", "--log-json", str(log)])
    assert "iteration 3: loss is nan (NaN/Inf); skipping this step" in result.stdout
    rows = read_metrics(log)
    assert [rows[it]["skipped"] for it in range(1, 6)] == [0, 0, 1, 0, 0]
    assert all(math.isfinite(rows[it]["lm_loss"]) for it in (4, 5))

    stopped = run_pretrain([*base_args, "--train-iters", "5", "--debug-inject-nan-iter", "3",
                            "--nan-policy", "stop"], check=False)
    assert stopped.returncode != 0
    assert "non-finite loss at iteration 3" in stopped.stderr
