"""Checkpoints you can trust (issue 14): a manifest verified before torch reads anything, fallback to
the newest checkpoint that verifies, no code from pickles, --save folders that are never silently
overwritten, interrupted saves removed, --keep-last, and Megatron-LM's scheduler override flags."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_lst.training.checkpoint_folder import (complete_iterations, prune_checkpoints,
                                                     remove_interrupted_saves)
from megatron_lst.training.checkpoint_manifest import MANIFEST_NAME, CheckpointError, verify_checkpoint
from megatron_lst.training.checkpointing import LATEST_FILE, iteration_dir, load_common_state, resolve_iteration
from tests.conftest import REPO_ROOT, child_env, run_pretrain


@pytest.fixture(scope="module")
def module_args(text_corpus, tmp_path_factory) -> list[str]:
    """conftest's tiny baseline run, with one index cache for the whole module."""
    cache = tmp_path_factory.mktemp("index_cache")
    return [
        "--model-flavour", "debug", "--model", "baseline",
        "--data-path", text_corpus.data_prefix, "--tokenizer-model", str(text_corpus.tokenizer_model),
        "--data-cache-path", str(cache), "--seq-length", "64", "--micro-batch-size", "2", "--global-batch-size", "4",
        "--lr", "1e-3", "--lr-warmup-iters", "2", "--log-interval", "1", "--eval-interval", "1000",
        "--eval-iters", "1", "--seed", "7",
    ]


@pytest.fixture(scope="module")
def trained(module_args, tmp_path_factory) -> Path:
    """Checkpoints at iterations 2 and 4 of a 4-step run (never modified: tests work on copies)."""
    save = tmp_path_factory.mktemp("trained") / "ckpt"
    run_pretrain([*module_args, "--train-iters", "4", "--save", str(save), "--save-interval", "2"])
    return save


@pytest.fixture
def ckpt(trained, tmp_path) -> Path:
    copy = tmp_path / "ckpt"
    shutil.copytree(trained, copy)
    return copy


class Payload:
    """A pickle that creates ``marker`` when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def flip_bytes(path: Path, offset: int, count: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    for index in range(offset, min(offset + count, len(data))):
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def refusals(root: Path) -> tuple[int | None, list[str]]:
    lines: list[str] = []
    return resolve_iteration(root, fallback=True, log=lines.append), lines


# ----------------------------------------------------------------------------- the manifest
def test_manifest_lists_every_file_with_size_and_sha256(trained):
    folder = iteration_dir(trained, 4)
    files = json.loads((folder / MANIFEST_NAME).read_text())["files"]
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {MANIFEST_NAME}
    assert set(files) == on_disk and {".metadata", "common.pt", "rng/rank_0.pt"} <= on_disk
    assert not list(trained.glob("*.tmp-*"))
    verify_checkpoint(folder)


def test_bit_flip_in_a_shard_is_refused_naming_it_and_load_falls_back(ckpt):
    shard = sorted(iteration_dir(ckpt, 4).glob("*.distcp"))[0]
    flip_bytes(shard, 1000)
    with pytest.raises(CheckpointError, match=f"{shard.name}: its SHA-256 does not match"):
        verify_checkpoint(iteration_dir(ckpt, 4))
    chosen, lines = refusals(ckpt)
    assert chosen == 2
    assert "refusing checkpoint" in lines[0] and shard.name in lines[0]
    assert "falling back to" in lines[1] and "iter_0000002" in lines[1]


@pytest.mark.parametrize("name", ["__0_0.distcp", "common.pt", ".metadata", "rng/rank_0.pt"])
def test_truncated_files_are_refused_and_load_falls_back(ckpt, name):
    truncate(iteration_dir(ckpt, 4) / name)
    chosen, lines = refusals(ckpt)
    assert chosen == 2
    assert f"{name}: " in lines[0] and "truncated after the write" in lines[0]


def test_a_tool_asked_for_one_checkpoint_does_not_fall_back(ckpt):
    truncate(iteration_dir(ckpt, 4) / "common.pt")
    with pytest.raises(CheckpointError, match="common.pt: .* bytes, but manifest.json says"):
        resolve_iteration(ckpt)  # no fallback: evaluation, generation, conversion
    with pytest.raises(CheckpointError, match="common.pt"):
        load_common_state(ckpt)


def test_a_garbage_latest_pointer_falls_back_to_the_newest_folder_or_is_refused(ckpt):
    (ckpt / LATEST_FILE).write_text("4\x00junk")
    chosen, lines = refusals(ckpt)
    assert chosen == 4 and f"ignoring {ckpt / LATEST_FILE}: expected an iteration number" in lines[0]
    with pytest.raises(CheckpointError, match=f"{LATEST_FILE}: expected an iteration number"):
        resolve_iteration(ckpt)  # a tool asked for the latest checkpoint does not guess


def test_missing_and_added_files_are_refused(ckpt):
    (iteration_dir(ckpt, 4) / "rng" / "rank_0.pt").unlink()
    with pytest.raises(CheckpointError, match="rank_0.pt: listed in manifest.json but missing"):
        verify_checkpoint(iteration_dir(ckpt, 4))
    (iteration_dir(ckpt, 2) / "extra.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="extra.pt: not listed in manifest.json"):
        verify_checkpoint(iteration_dir(ckpt, 2))
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* verifies \(newest refused: .*rank_0.pt"):
        resolve_iteration(ckpt, fallback=True, log=lambda line: None)


def test_pickle_payload_in_metadata_never_runs(ckpt, tmp_path):
    marker = tmp_path / "payload_ran"
    metadata = iteration_dir(ckpt, 4) / ".metadata"
    metadata.write_bytes(pickle.dumps(Payload(marker)))
    # the control: torch's distributed-checkpoint reader does unpickle .metadata (checkpoints are code)
    control = tmp_path / "control"
    shutil.copytree(iteration_dir(ckpt, 4), control)
    (control / ".metadata").write_bytes(pickle.dumps(Payload(tmp_path / "control_ran")))
    try:
        torch.distributed.checkpoint.FileSystemReader(str(control)).read_metadata()
    except Exception:  # noqa: BLE001 - the payload returns a file object, not Metadata
        pass
    assert (tmp_path / "control_ran").exists()

    with pytest.raises(CheckpointError, match=r"\.metadata: .*manifest.json"):
        load_common_state(ckpt, 4)
    assert resolve_iteration(ckpt, fallback=True, log=lambda line: None) == 2
    assert not marker.exists()


def test_pickle_payload_in_rng_file_never_runs(ckpt, tmp_path):
    from megatron_lst.training.checkpoint_manifest import write_manifest
    from megatron_lst.training.checkpointing import load_rng_file

    marker = tmp_path / "payload_ran"
    rng_file = iteration_dir(ckpt, 4) / "rng" / "rank_0.pt"
    torch.save({"world_size": 1, "state": Payload(marker)}, rng_file)
    with pytest.raises(CheckpointError, match="rank_0.pt"):  # placed after the write: the manifest refuses it
        verify_checkpoint(iteration_dir(ckpt, 4))
    write_manifest(iteration_dir(ckpt, 4))  # even one the writer itself put there: weights_only refuses to run it
    with pytest.raises(CheckpointError, match="rank_0.pt: not a readable RNG state file"):
        load_rng_file(rng_file)
    assert not marker.exists()


def test_rng_files_hold_only_what_weights_only_reads(trained):
    saved = torch.load(iteration_dir(trained, 4) / "rng" / "rank_0.pt", weights_only=True)
    assert saved["world_size"] == 1 and isinstance(saved["state"]["numpy"]["keys"], torch.Tensor)


def test_rng_state_round_trips(single_rank_parallel_state, tmp_path):
    import random

    import numpy as np

    from megatron_lst.training.checkpointing import load_rng_file, save_rng_file, set_rng_state

    save_rng_file(tmp_path / "rng.pt", 1)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_rng_file(tmp_path / "rng.pt")["state"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_checkpoint_without_manifest_is_refused_until_adopted(ckpt):
    from tools.write_checkpoint_manifest import main

    folder = iteration_dir(ckpt, 4)
    (folder / MANIFEST_NAME).unlink()
    with pytest.raises(CheckpointError, match="no manifest.json.*tools/write_checkpoint_manifest.py"):
        resolve_iteration(ckpt)
    assert main([str(folder)]) == 0
    assert resolve_iteration(ckpt) == 4
    assert main([str(folder)]) == 2  # an existing manifest is never replaced


def test_adopting_an_older_checkpoint_rewrites_its_repr_records_as_json(ckpt):
    """Older versions recorded the run config as a Python repr (and wrote no manifest): adoption
    turns it into JSON, which is all the library reads, then records the manifest."""
    from megatron_lst.training.checkpoint_loading import config_from_checkpoint
    from megatron_lst.training.run_config import decode_saved
    from tools.write_checkpoint_manifest import main

    folder = iteration_dir(ckpt, 4)
    common = torch.load(folder / "common.pt", weights_only=True)
    expected = config_from_checkpoint(ckpt)
    legacy = dict(common, config=repr(decode_saved(common["config"])),
                  vocab_layout=repr(decode_saved(common["vocab_layout"], "vocab_layout")))
    torch.save(legacy, folder / "common.pt")
    (folder / MANIFEST_NAME).unlink()
    assert main([str(folder)]) == 0
    assert config_from_checkpoint(ckpt) == expected


# ----------------------------------------------------------------------------- the --save folder
def fake_checkpoints(root: Path, iterations, temps=()) -> None:
    for iteration in iterations:
        iteration_dir(root, iteration).mkdir(parents=True)
    for name in temps:
        (root / name).mkdir(parents=True)


def test_interrupted_saves_are_removed(tmp_path):
    fake_checkpoints(tmp_path, [2], temps=["iter_0000004.tmp-1a2b3c4d"])
    lines: list[str] = []
    removed = remove_interrupted_saves(tmp_path, log=lines.append)
    assert [p.name for p in removed] == ["iter_0000004.tmp-1a2b3c4d"] and "iter_0000004.tmp-1a2b3c4d" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000002"]


def test_keep_last_never_removes_the_newest_nor_the_loaded_one(tmp_path):
    fake_checkpoints(tmp_path, [1, 2, 3, 4, 5])
    folder_of = lambda it: iteration_dir(tmp_path, it)  # noqa: E731
    assert prune_checkpoints(tmp_path, 2, folder_of, protect=[1], log=lambda line: None) == [2, 3]
    assert complete_iterations(tmp_path) == [1, 4, 5]
    assert prune_checkpoints(tmp_path, 1, folder_of, log=lambda line: None) == [1, 4]
    assert complete_iterations(tmp_path) == [5]


# ----------------------------------------------------------------------------- the LR schedule on resume
def scheduler(decay_iters: int):
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return OptimizerParamScheduler(optimizer, init_lr=0.0, max_lr=1e-3, min_lr=1e-5, lr_warmup_steps=8,
                                   lr_decay_steps=decay_iters * 4, lr_decay_style="cosine", start_wd=0.1,
                                   end_wd=0.1, wd_incr_steps=decay_iters * 4, wd_incr_style="constant")


def finished_schedule() -> dict:
    trained = scheduler(10)
    trained.step(increment=40)
    return trained.state_dict()


def test_a_changed_schedule_is_an_error_naming_values_and_flags():
    from megatron_lst.training.scheduler_resume import load_scheduler_state

    with pytest.raises(CheckpointError) as error:
        load_scheduler_state(scheduler(20), finished_schedule(), override=False, use_checkpoint=False)
    message = str(error.value)
    assert "lr_decay_steps" in message and "checkpoint 40, command line 80" in message
    assert "--override-opt-param-scheduler" in message and "--use-checkpoint-opt-param-scheduler" in message
    load_scheduler_state(scheduler(10), finished_schedule(), override=False, use_checkpoint=False)  # same: fine


@pytest.mark.parametrize("override,decay_steps,lr_above_floor", [(True, 80, True), (False, 40, False)])
def test_override_uses_the_command_line_and_use_checkpoint_the_checkpoint(override, decay_steps, lr_above_floor):
    from megatron_lst.training.scheduler_resume import load_scheduler_state

    resumed, lines = scheduler(20), []
    load_scheduler_state(resumed, finished_schedule(), override=override, use_checkpoint=not override,
                         log=lines.append)
    assert resumed.lr_decay_steps == decay_steps and resumed.num_steps == 40
    assert (resumed.get_lr(resumed.optimizer.param_groups[0]) > 1e-5 * 1.01) == lr_above_floor
    assert ("the command line's" if override else "the checkpoint's") in lines[0]


# ----------------------------------------------------------------------------- end to end
def test_resume_falls_back_past_a_bit_flipped_checkpoint(module_args, ckpt, tmp_path):
    shard = sorted(iteration_dir(ckpt, 4).glob("*.distcp"))[0]
    flip_bytes(shard, 1000)
    result = run_pretrain([*module_args, "--train-iters", "4", "--load", str(ckpt), "--save", str(ckpt)])
    assert f"refusing checkpoint {iteration_dir(ckpt, 4)}: {shard}: its SHA-256 does not match" in result.stdout
    assert "iter_0000002 at iteration 2" in result.stdout
    verify_checkpoint(iteration_dir(ckpt, 4))  # re-saved at 4 by the resumed run


def test_fresh_run_into_a_folder_with_later_checkpoints_is_refused_then_allowed(module_args, ckpt):
    before = ((ckpt / LATEST_FILE).read_bytes(), sorted(p.relative_to(ckpt) for p in ckpt.rglob("*")))
    refused = run_pretrain([*module_args, "--train-iters", "2", "--save", str(ckpt)], check=False)
    assert refused.returncode == 2, refused.stderr[-2000:]
    error_lines = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "already holds checkpoint(s) 2, 4" in error_lines[0]
    assert "Traceback" not in refused.stderr
    assert ((ckpt / LATEST_FILE).read_bytes(), sorted(p.relative_to(ckpt) for p in ckpt.rglob("*"))) == before

    (ckpt / "iter_0000006.tmp-deadbeef").mkdir()
    allowed = run_pretrain([*module_args, "--train-iters", "2", "--save", str(ckpt), "--overwrite-save"])
    assert "removed checkpoint(s) 2, 4" in allowed.stdout and "interrupted save" in allowed.stdout
    assert (ckpt / LATEST_FILE).read_text() == "2" and complete_iterations(ckpt) == [2]
    assert not (ckpt / "iter_0000006.tmp-deadbeef").exists()


@pytest.mark.slow
def test_keep_last_and_schedule_flags_end_to_end(module_args, ckpt):
    args = [*module_args, "--train-iters", "6", "--load", str(ckpt), "--save", str(ckpt), "--save-interval", "1"]
    refused = run_pretrain(args, check=False)
    assert refused.returncode == 2 and "--override-opt-param-scheduler" in refused.stderr
    run_pretrain([*args, "--override-opt-param-scheduler", "--keep-last", "1"])
    assert complete_iterations(ckpt) == [4, 6]  # 4 was loaded by the run: kept while it lasts


def test_evaluate_refuses_a_tampered_checkpoint_in_one_line(ckpt, tmp_path):
    marker = tmp_path / "payload_ran"
    (iteration_dir(ckpt, 4) / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    benchmark = tmp_path / "bench.jsonl"
    benchmark.write_text(json.dumps({"id": "a", "prompt": {"text": "a b"}, "endings": [{"text": "c"}, {"text": "d"}],
                                     "label": 0}) + "\n")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "evaluate.py"), "--checkpoint", str(ckpt),
                             "--benchmark", str(benchmark), "--directions", "tt"],
                            env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and ".metadata" in result.stderr
    assert "Traceback" not in result.stderr and not marker.exists()
