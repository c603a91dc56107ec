"""Tool outputs are atomic: a failed export or evaluation leaves the earlier output byte-identical, and
an --output the tool would have to destroy is refused before any work (issue 14)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch


def test_convert_refuses_an_output_folder_with_other_files(tmp_path, capsys):
    from tools.convert_checkpoint import main

    output = tmp_path / "mine"
    output.mkdir()
    (output / "notes.txt").write_text("keep me")
    assert main(["to-safetensors", "--load", str(tmp_path / "no_ckpt"), "--output", str(output)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "notes.txt" in error[0] and str(output) in error[0]
    assert os.listdir(output) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    assert main(["deepspeed-to-safetensors", "--load", str(tmp_path), "--output", str(tmp_path / "file")]) == 2


def test_a_failed_export_leaves_the_earlier_one_intact(tmp_path, monkeypatch):
    import safetensors.torch

    from tools.convert_checkpoint import CONFIG_FILE, WEIGHTS_FILE, write_consolidated

    output = tmp_path / "export"
    model = torch.nn.Linear(3, 2)
    config = SimpleNamespace(to_dict=lambda: {"model": "tiny"})
    write_consolidated(model, config, output, {"iteration": 1}, "first")
    before = {name: (output / name).read_bytes() for name in (WEIGHTS_FILE, CONFIG_FILE)}

    def save_half_then_fail(tensors, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_consolidated(torch.nn.Linear(3, 2), config, output, {"iteration": 2}, "second")
    assert {name: (output / name).read_bytes() for name in before} == before
    assert os.listdir(tmp_path) == ["export"]
