"""Atomic outputs: a failed or interrupted write leaves the old file (or nothing) under the final name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from megatron_lst.utils.atomic import atomic_file, atomic_folder, write_text_atomic
from tests.conftest import child_env


def test_a_finished_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out" / "result.json"
    write_text_atomic(target, "old")
    with atomic_file(target) as handle:
        handle.write("new")
        assert target.read_text() == "old"  # nothing visible until the block ends
    assert target.read_text() == "new"
    assert os.listdir(target.parent) == ["result.json"]


def test_an_error_keeps_the_old_file_byte_identical(tmp_path):
    target = tmp_path / "result.bin"
    target.write_bytes(b"\x00previous run\xff")
    with pytest.raises(RuntimeError):
        with atomic_file(target, "wb") as handle:
            handle.write(b"half")
            raise RuntimeError("bad record on line 3")
    assert target.read_bytes() == b"\x00previous run\xff"
    assert os.listdir(tmp_path) == ["result.bin"]


def test_a_killed_writer_leaves_no_partial_file_under_the_final_name(tmp_path):
    target = tmp_path / "big.jsonl"
    script = ("import sys, time\n"
              "from megatron_lst.utils.atomic import atomic_file\n"
              "with atomic_file(sys.argv[1]) as handle:\n"
              "    handle.write('x' * 100000); handle.flush()\n"
              "    print('written', flush=True); time.sleep(60)\n")
    writer = subprocess.Popen([sys.executable, "-c", script, str(target)], env=child_env(), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout.readline().strip() == "written"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert not target.exists()
    leftovers = os.listdir(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".big.jsonl.tmp-")  # hidden, never the final name


def test_a_folder_appears_whole_or_keeps_the_old_one(tmp_path):
    target = tmp_path / "export"
    with atomic_folder(target) as folder:
        (folder / "weights").write_text("v1")
        (folder / "config.json").write_text("{}")
        assert not target.exists()
    assert sorted(os.listdir(target)) == ["config.json", "weights"]
    with pytest.raises(KeyError):
        with atomic_folder(target) as folder:
            (folder / "weights").write_text("v2 half")
            raise KeyError("missing tensor")
    assert (target / "weights").read_text() == "v1" and os.listdir(tmp_path) == ["export"]
    with atomic_folder(target) as folder:
        (folder / "weights").write_text("v2")
    assert os.listdir(target) == ["weights"] and (target / "weights").read_text() == "v2"
    assert os.listdir(tmp_path) == ["export"]


def test_only_whole_file_modes():
    with pytest.raises(ValueError):
        with atomic_file("never", "a"):
            pass
