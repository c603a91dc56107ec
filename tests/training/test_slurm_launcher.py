"""examples/launch/slurm.sbatch under a fake SLURM: ranks come from srun, the time-limit signal
reaches the trainer itself, and only a run stopped by it is requeued.

``srun`` and ``scontrol`` are stand-ins on PATH; the "trainer" (PYTHON) records its rank variables
and exits 0 on SIGUSR1 as pretrain_lst.py does after saving.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

FAKE_SRUN = """#!/usr/bin/env bash
while [[ "$1" == --* ]]; do shift; done  # srun's own options
export SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NTASKS=1 SLURM_NODEID=0
exec "$@"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "$*" >> "$LOG_DIR/scontrol"
[[ "$1" == show ]] && echo node-a
exit 0
"""
FAKE_TRAINER = """#!/usr/bin/env bash
echo "RANK=$RANK LOCAL_RANK=$LOCAL_RANK WORLD_SIZE=$WORLD_SIZE MASTER_ADDR=$MASTER_ADDR" > "$LOG_DIR/trainer_env"
printf '%s\\n' "$@" > "$LOG_DIR/trainer_args"
trap 'echo USR1 > "$LOG_DIR/trainer_signal"; exit 0' USR1
touch "$LOG_DIR/started"
for _ in $(seq "$TRAINER_TICKS"); do sleep 0.1; done
echo finished > "$LOG_DIR/trainer_done"
"""


def fake_slurm(tmp_path: Path, ticks: int) -> tuple[dict, Path]:
    bin_dir, logs = tmp_path / "bin", tmp_path / "logs"
    bin_dir.mkdir()
    logs.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("trainer", FAKE_TRAINER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHON=str(bin_dir / "trainer"),
               LOG_DIR=str(logs), TRAINER_TICKS=str(ticks), RUN_DIR=str(tmp_path / "runs"), SLURM_JOB_ID="4242",
               SLURM_JOB_NODELIST="node-a", SLURM_NNODES="1", SLURM_SUBMIT_DIR=str(REPO_ROOT))
    env.pop("DRY_RUN", None)
    return env, logs


def start(env: dict) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(REPO_ROOT / "examples/launch/slurm.sbatch"), "1b", "lst", "compute"],
                            env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} never appeared")
        time.sleep(0.05)


def test_time_limit_signal_reaches_the_rank_and_requeues(tmp_path):
    env, logs = fake_slurm(tmp_path, ticks=300)
    job = start(env)
    wait_for(logs / "started")
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 does near the time limit
    _, stderr = job.communicate(timeout=30)
    assert job.returncode == 0, stderr
    assert (logs / "trainer_signal").read_text().strip() == "USR1", "the rank itself got the signal"
    assert not (logs / "trainer_done").exists()
    assert (logs / "trainer_env").read_text().split() == ["RANK=0", "LOCAL_RANK=0", "WORLD_SIZE=1",
                                                          "MASTER_ADDR=node-a"]
    args = (logs / "trainer_args").read_text().split("\n")
    assert args[0].endswith("pretrain_lst.py") and "--load" in args, "no torchrun: the trainer is the task"
    assert "requeue 4242" in (logs / "scontrol").read_text().splitlines()
    assert "requeueing job 4242" in stderr


def test_a_run_that_finishes_is_not_requeued(tmp_path):
    env, logs = fake_slurm(tmp_path, ticks=2)
    job = start(env)
    _, stderr = job.communicate(timeout=30)
    assert job.returncode == 0, stderr
    assert (logs / "trainer_done").exists()
    calls = (logs / "scontrol").read_text().splitlines()  # the master's hostname lookup only
    assert calls == ["show hostnames node-a"]
