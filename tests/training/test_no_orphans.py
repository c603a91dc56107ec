"""No process a trainer started outlives it, even a trainer SIGKILLed in the middle of a save (issue 14).

Before the fix every ``kill -9`` left dist_checkpointing's spawned queue manager and its resource
tracker running for good. The tests record the trainer's descendants through /proc while it runs
(pid and start time, so a reused pid is not mistaken for a survivor) and check that all are gone soon
after the kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_lst.training import orphans
from tests.conftest import child_env, pretrain_command

Process = tuple[int, int]  # (pid, start time in clock ticks since boot)


def _processes() -> dict[Process, int]:
    """Every live process -> its parent pid, from /proc/*/stat."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        table[(int(entry), int(fields[19]))] = int(fields[1])  # fields 4 (ppid) and 22 (starttime) of stat
    return table


def descendants(root: int) -> set[Process]:
    table = _processes()
    found, frontier = set(), {root}
    while frontier:
        children = {process for process, parent in table.items() if parent in frontier} - found
        found |= children
        frontier = {pid for pid, _ in children}
    return found


def alive(processes: set[Process]) -> set[Process]:
    return set(_processes()) & processes


def kill_mid_save(args: list[str], save: Path, timeout: float = 300) -> set[Process]:
    """Start the trainer, SIGKILL it while a checkpoint is being written (its temp folder exists), and
    return every descendant seen while it ran."""
    trainer = subprocess.Popen(pretrain_command(args), env=child_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    seen: set[Process] = set()
    deadline = time.time() + timeout
    saves: set[str] = set()
    try:
        while time.time() < deadline:
            assert trainer.poll() is None, "the trainer ended before it was killed"
            seen |= descendants(trainer.pid)
            saving = {path.name for path in save.glob("iter_*.tmp-*")}
            saves |= saving
            # the first save starts the queue manager: kill during a later one, with all helpers up
            if saving and len(saves) >= 3:
                break
            time.sleep(0.005)
        else:
            raise TimeoutError("the trainer never saved")
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
    return seen


def assert_all_gone(processes: set[Process], within: float = 10.0) -> None:
    deadline = time.time() + within
    while alive(processes) and time.time() < deadline:
        time.sleep(0.1)
    survivors = alive(processes)
    commands = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200] for pid, _ in survivors]
    for pid, _ in survivors:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not survivors, commands


def trainer_args(base_args: list[str], save: Path, tmp_path: Path, resume: bool) -> list[str]:
    config = tmp_path / "workers.yaml"
    config.write_text("num_workers: 2\n")  # DataLoader workers are children too
    return [*base_args, "--config", str(config), "--train-iters", "100000", "--save", str(save), "--save-interval", "1",
            *(["--load", str(save)] if resume else [])]


def test_sigkilled_trainer_leaves_no_process_behind(base_args, tmp_path):
    save = tmp_path / "ckpt"
    seen = kill_mid_save(trainer_args(base_args, save, tmp_path, resume=False), save)
    assert len(seen) >= 4, seen  # the checkpoint writer's helpers and the DataLoader workers were running
    assert_all_gone(seen)


@pytest.mark.slow
def test_ten_kills_mid_save_leave_no_process_behind(base_args, tmp_path):
    save = tmp_path / "ckpt"
    seen: set[Process] = set()
    for kill in range(10):
        seen |= kill_mid_save(trainer_args(base_args, save, tmp_path, resume=kill > 0), save)
    assert_all_gone(seen)


def test_forked_child_dies_with_its_parent(tmp_path):
    """The mechanism alone: a parent that installed the hook forks a child, which forks a grandchild;
    SIGKILL the parent and both are gone, although neither was signalled."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, time\n"
        "from megatron_lst.training import orphans\n"
        "orphans.install()\n"
        "if os.fork() == 0:\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60); os._exit(0)\n"
        "    time.sleep(60); os._exit(0)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], env=child_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        deadline = time.time() + 10
        while len(seen := descendants(parent.pid)) < 2 and time.time() < deadline:
            time.sleep(0.01)
        assert len(seen) == 2, seen
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert_all_gone(seen, within=5.0)


def test_spawned_child_of_a_dead_parent_exits(monkeypatch):
    """A spawned child whose parent died before it could ask for the signal exits at once."""
    monkeypatch.setenv(orphans.PARENT_PID_ENV, "1" if os.getppid() != 1 else "2")
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            orphans.adopt_spawned_child()
        finally:
            os._exit(0)  # reached only if the child wrongly carried on
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 1
