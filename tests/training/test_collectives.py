"""Every collective the project issues goes through ``training/collectives.py``, on its group's device.

NCCL takes CUDA tensors only, so a metric or stop flag all-reduced as a CPU tensor passes CPU CI
(gloo) and fails at the first GPU step. Three layers of checks, all on CPU:

- the wrapper itself: under a group whose backend reports ``nccl`` it targets ``cuda:<current>``
  and refuses a CPU tensor before anything reaches torch.distributed;
- a real single-rank training run (train steps, validation, a SIGUSR1 stop, checkpoint save and
  resume) with every ``torch.distributed`` collective replaced by a recorder that calls the real one
  and notes the tensor's device and who issued it: each must come from the wrapper (or from
  megatron-core / torch / another library, which place their own tensors), never from project code
  directly; and the loop's own reductions must be among them (so the recorder sees the loop);
- a source scan: no project file outside ``collectives.py`` calls a torch.distributed collective,
  including code paths a single-rank run does not take (pipeline broadcasts, DeepSpeed).

``CollectiveRecorder`` and ``run_recorded_training`` are reused by ``tests/gpu/test_gpu_paths.py``,
where the same run goes over NCCL and the device comparison is the real one.
"""

from __future__ import annotations

import ast
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d

from megatron_lst.training import collectives
from tests.conftest import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
WRAPPER_FILE = os.path.realpath(REPO_ROOT / "megatron_lst" / "training" / "collectives.py")
TORCH_DISTRIBUTED_DIR = os.path.realpath(Path(dist.__file__).parent) + os.sep
# project sources that may issue collectives at run time (the scan below covers them all)
PROJECT_SOURCES = ("megatron_lst", "tools", "bench", "pretrain_lst.py")


# ------------------------------------------------------------------------------------------- recorder
@dataclass
class RecordedCall:
    """One outermost torch.distributed collective: who issued it and on which devices."""

    name: str
    issuer: str  # "wrapper", "project" (raw call from project code) or "library:<top-level package>"
    site: str  # file:line:function of the frame that called torch.distributed
    project_caller: str  # first project frame outside collectives.py, "loop.py:_reduce_metrics"
    backend: str
    expected: Optional[torch.device]
    devices: list = field(default_factory=list)

    def wrong_devices(self) -> list:
        """The devices of this call's tensors that the group's backend does not take."""
        if self.expected is None:
            return []
        return [d for d in self.devices
                if d.type != self.expected.type or (d.type == "cuda" and d.index != self.expected.index)]


def _is_project_file(path: str) -> bool:
    root = str(REPO_ROOT) + os.sep
    return path.startswith(root) and os.sep + "site-packages" + os.sep not in path and "/.venv/" not in path


def _library_name(path: str) -> str:
    marker = os.sep + "site-packages" + os.sep
    if marker in path:
        return path.split(marker, 1)[1].split(os.sep, 1)[0]
    return "python"


def _tensors_devices(values: Any) -> list:
    if isinstance(values, torch.Tensor):
        return [values.device]
    if isinstance(values, (list, tuple)):
        return [device for value in values for device in _tensors_devices(value)]
    return []


def _group_of(args: tuple, kwargs: dict) -> Optional[dist.ProcessGroup]:
    if kwargs.get("group") is not None:
        return kwargs["group"]
    return next((arg for arg in args if isinstance(arg, dist.ProcessGroup)), None)


class CollectiveRecorder:
    """Replaces every ``torch.distributed`` collective by a recorder that calls the real function.

    Only the outermost call is recorded (``broadcast_object_list`` issues a ``broadcast`` inside
    torch), and frames inside torch.distributed (its checkpoint planner, its logging decorators) are
    skipped when looking for the issuer, so megatron-core's dist_checkpointing counts as megatron.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[RecordedCall] = []
        self._state = threading.local()
        for module in (dist, distributed_c10d):
            for name in collectives.TORCH_COLLECTIVES:
                real = getattr(module, name, None)
                real = getattr(real, "_recorded_real", real)  # a second recorder wraps the real function
                if callable(real):
                    monkeypatch.setattr(module, name, self._recording(name, real))

    def _recording(self, name: str, real: Callable) -> Callable:
        def recorded(*args, **kwargs):
            depth = getattr(self._state, "depth", 0)
            if depth == 0:
                self._record(name, args, kwargs, sys._getframe(1))
            self._state.depth = depth + 1
            try:
                return real(*args, **kwargs)
            finally:
                self._state.depth = depth

        recorded._recorded_real = real
        return recorded

    def _record(self, name: str, args: tuple, kwargs: dict, frame) -> None:
        while frame is not None and os.path.realpath(frame.f_code.co_filename).startswith(TORCH_DISTRIBUTED_DIR):
            frame = frame.f_back
        path = os.path.realpath(frame.f_code.co_filename) if frame is not None else "?"
        site = f"{path}:{frame.f_lineno}:{frame.f_code.co_name}" if frame is not None else "?"
        if path == WRAPPER_FILE:
            issuer = "wrapper"
        elif _is_project_file(path):
            issuer = "project"
        else:
            issuer = "library:" + _library_name(path)
        caller = frame
        while caller is not None and (os.path.realpath(caller.f_code.co_filename) == WRAPPER_FILE
                                      or not _is_project_file(os.path.realpath(caller.f_code.co_filename))):
            caller = caller.f_back
        project_caller = f"{Path(caller.f_code.co_filename).name}:{caller.f_code.co_name}" if caller else "-"
        group = _group_of(args, kwargs)
        try:
            expected = collectives.group_device(group)
            backend = collectives.group_backend(group)
        except Exception:  # a group this rank is not in, or no default group yet
            expected, backend = None, "?"
        devices = _tensors_devices(list(args) + [v for k, v in kwargs.items() if k != "group"])
        if name.endswith("_object_list") and issuer == "wrapper":
            # objects travel as pickled byte tensors on the device the caller names
            devices.append(torch.device(kwargs["device"]) if kwargs.get("device") is not None else torch.device("cpu"))
        if name == "barrier" and kwargs.get("device_ids"):
            devices += [torch.device("cuda", index) for index in kwargs["device_ids"]]
        self.calls.append(RecordedCall(name, issuer, site, project_caller, backend, expected, devices))

    def raw_project_calls(self) -> list[RecordedCall]:
        return [call for call in self.calls if call.issuer == "project"]

    def calls_on_wrong_devices(self) -> list[RecordedCall]:
        return [call for call in self.calls if call.wrong_devices()]

    def wrapper_callers(self) -> set[str]:
        return {call.project_caller for call in self.calls if call.issuer == "wrapper"}


def describe(calls: list[RecordedCall]) -> str:
    return "\n".join(f"  {c.name} from {c.site} (backend {c.backend}, devices {c.devices}, "
                     f"group takes {c.expected})" for c in calls)


def run_recorded_training(args: list[str], monkeypatch: pytest.MonkeyPatch, signal_during_step: int):
    """Train in this process with every collective recorded; SIGUSR1 arrives during step ``signal_during_step``.

    The loop must then stop after that step and save (``--save`` in ``args``). Returns
    (recorder, final TrainState).
    """
    from megatron_lst.training.arguments import parse_args
    from megatron_lst.training.initialize import destroy_distributed
    from megatron_lst.training.loop import Trainer
    from megatron_lst.training.registry import build_task

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    config = parse_args(args)
    recorder = CollectiveRecorder(monkeypatch)
    try:
        trainer = Trainer(config, build_task)
        real_step = trainer.train_step

        def step_with_signal():
            result = real_step()
            if trainer.state.iteration + 1 == signal_during_step:  # the loop advances the state afterwards
                os.kill(os.getpid(), signal.SIGUSR1)
            return result

        trainer.train_step = step_with_signal
        state = trainer.train()
    finally:
        destroy_distributed()
    return recorder, state


def training_args(base_args: list[str], tmp_path: Path, model: str, extra: list[str] = ()) -> list[str]:
    """base_args (the debug baseline on the real text corpus) for ``model``, with validation and saves."""
    args = [*base_args, "--train-iters", "4", "--eval-interval", "1", "--eval-iters", "1",
            "--save", str(tmp_path / "ckpt"), "--save-interval", "1000", *extra]
    args[args.index("--model") + 1] = model
    return args


# -------------------------------------------------------------------------------- the wrapper itself
@pytest.fixture
def nccl_backend(monkeypatch):
    """torch.distributed reports NCCL for every group and CUDA device 1 as this rank's device; any
    collective that reaches torch.distributed fails the test (the checks must come first)."""
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    reached = []
    for name in ("all_reduce", "broadcast", "broadcast_object_list", "barrier"):
        monkeypatch.setattr(dist, name, lambda *a, _name=name, **k: reached.append((_name, a, k)))
    return reached


@pytest.mark.parametrize("backend, expected", [
    ("nccl", torch.device("cuda", 1)),
    ("cpu:gloo,cuda:nccl", torch.device("cuda", 1)),
    ("gloo", torch.device("cpu")),
    ("GLOO", torch.device("cpu")),
])
def test_group_device_follows_the_backend(monkeypatch, backend, expected):
    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert collectives.group_device() == expected
    assert collectives.uses_cuda() == (expected.type == "cuda")


def test_wrapper_refuses_a_cpu_tensor_on_an_nccl_group(nccl_backend):
    flag = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"the stop flag is on cpu .*'nccl'.*cuda:1"):
        collectives.all_reduce(flag, what="the stop flag")
    with pytest.raises(RuntimeError, match=r"metric sums is on cpu .*'nccl'"):
        collectives.broadcast(flag, src=0, what="metric sums")
    assert nccl_backend == []  # refused before torch.distributed saw it


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU machine can make the CUDA tensor: tests/gpu covers it")
def test_wrapper_moves_host_values_to_cuda_before_an_nccl_collective(nccl_backend):
    # a CPU build cannot make the CUDA tensor: the error proves the move is attempted first
    with pytest.raises((AssertionError, RuntimeError), match="CUDA"):
        collectives.all_reduce_values([1.0, 2.0])
    with pytest.raises((AssertionError, RuntimeError), match="CUDA"):
        collectives.zeros((2, 2))
    assert nccl_backend == []


def test_object_broadcast_and_barrier_name_the_cuda_device_under_nccl(nccl_backend):
    assert collectives.broadcast_object(["lm loss"], src=0) == ["lm loss"]
    collectives.barrier()
    (name, _, object_kwargs), (barrier_name, _, barrier_kwargs) = nccl_backend
    assert (name, object_kwargs["device"]) == ("broadcast_object_list", torch.device("cuda", 1))
    assert (barrier_name, barrier_kwargs["device_ids"]) == ("barrier", [1])


def test_wrapper_refuses_a_non_cpu_tensor_on_gloo(monkeypatch):
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    with pytest.raises(RuntimeError, match=r"is on meta .*'gloo'.*cpu"):
        collectives.check_device(torch.zeros(1, device="meta"))
    collectives.check_device(torch.zeros(1))  # the right device passes


# ----------------------------------------------------------------------------- a real training run
@pytest.mark.parametrize("model", ["baseline", "lst"])
def test_training_issues_every_collective_through_the_wrapper(base_args, tmp_path, monkeypatch, model):
    args = training_args(base_args, tmp_path, model)
    recorder, state = run_recorded_training(args, monkeypatch, signal_during_step=2)
    assert state.iteration == 2  # SIGUSR1 during step 2: stop and save right after it
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text() == "2"

    raw = recorder.raw_project_calls()
    assert not raw, ("project code called torch.distributed directly; use megatron_lst.training.collectives "
                     "(NCCL needs CUDA tensors):\n" + describe(raw))
    wrong = recorder.calls_on_wrong_devices()
    assert not wrong, "collectives on a device their group's backend does not take:\n" + describe(wrong)
    # the recorder saw the loop's own reductions, the stop signal's and the checkpoint's rendezvous
    callers = recorder.wrapper_callers()
    assert {"loop.py:_reduce_metrics", "loop.py:train_step", "signals.py:should_stop"} <= callers, callers
    assert any(caller.startswith("checkpointing.py:") for caller in callers), callers

    # resuming from the checkpoint (load, one more step) issues nothing raw either
    resumed, state = run_recorded_training([*args, "--load", str(tmp_path / "ckpt"), "--train-iters", "3",
                                            "--override-opt-param-scheduler"],
                                           monkeypatch, signal_during_step=0)
    assert state.iteration == 3
    assert not resumed.raw_project_calls(), describe(resumed.raw_project_calls())
    assert not resumed.calls_on_wrong_devices(), describe(resumed.calls_on_wrong_devices())


def _raw_should_stop(handler) -> bool:
    """The signal check as it was before collectives.py: a CPU tensor straight to torch.distributed."""
    flag = torch.tensor([1 if handler.received else 0], dtype=torch.int32)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def test_a_raw_cpu_all_reduce_in_the_loop_is_caught(base_args, tmp_path, monkeypatch):
    """The check above can fail: put the old, raw all-reduce back into the signal check of the loop."""
    from megatron_lst.training.signals import PreemptionHandler

    monkeypatch.setattr(PreemptionHandler, "should_stop", _raw_should_stop)
    recorder, _ = run_recorded_training(training_args(base_args, tmp_path, "baseline", ["--train-iters", "2"]),
                                        monkeypatch, signal_during_step=0)
    raw = recorder.raw_project_calls()
    assert [(call.name, call.project_caller) for call in raw] == [
        ("all_reduce", "test_collectives.py:_raw_should_stop")] * 2  # once per step
    assert raw[0].site.startswith(str(Path(__file__).resolve()))


# ------------------------------------------------------------------------------------ source scan
def _distributed_aliases(tree: ast.Module) -> tuple[set[str], set[str]]:
    """Names bound to the torch.distributed module, and names bound to its collective functions."""
    modules, functions = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in ("torch.distributed", "torch.distributed.distributed_c10d") and alias.asname:
                    modules.add(alias.asname)
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.distributed"):
            for alias in node.names:
                if node.module == "torch" and alias.name == "distributed":
                    modules.add(alias.asname or alias.name)
                elif node.module == "torch.distributed" and alias.name == "distributed_c10d":
                    modules.add(alias.asname or alias.name)
                elif node.module == "torch.distributed" and alias.name in collectives.TORCH_COLLECTIVES:
                    functions.add(alias.asname or alias.name)
    return modules, functions


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def raw_collective_calls(path: Path) -> list[str]:
    """``file:line: call`` for every torch.distributed collective called in ``path``'s source."""
    tree = ast.parse(path.read_text(), filename=str(path))
    modules, functions = _distributed_aliases(tree)
    modules |= {"torch.distributed", "torch.distributed.distributed_c10d"}
    label = os.path.relpath(path, REPO_ROOT)
    found = []
    for node in sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call)), key=lambda n: (n.lineno, n.col_offset)):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in collectives.TORCH_COLLECTIVES:
            if _dotted(func.value) in modules:
                found.append(f"{label}:{node.lineno}: {_dotted(func)}")
        elif isinstance(func, ast.Name) and func.id in functions:
            found.append(f"{label}:{node.lineno}: {func.id}")
    return found


def project_python_files() -> list[Path]:
    files = []
    for name in PROJECT_SOURCES:
        path = REPO_ROOT / name
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return [path for path in files if os.path.realpath(path) != WRAPPER_FILE]


def test_no_project_file_calls_a_torch_distributed_collective_directly():
    found = [hit for path in project_python_files() for hit in raw_collective_calls(path)]
    assert not found, ("torch.distributed collectives outside megatron_lst/training/collectives.py "
                       "(route them through it: NCCL needs CUDA tensors):\n" + "\n".join(found))


def test_the_source_scan_sees_every_spelling(tmp_path):
    source = tmp_path / "spellings.py"
    source.write_text(
        "import torch\nimport torch.distributed as dist\nfrom torch import distributed as d2\n"
        "from torch.distributed import barrier as wait_all\n"
        "torch.distributed.all_reduce(x)\ndist.broadcast_object_list(h, src=0)\nd2.all_gather(a, b)\n"
        "wait_all()\ntorch.distributed.get_rank()\nself.all_reduce(x)\n"
    )
    hits = [hit.split(": ", 1)[1] for hit in raw_collective_calls(source)]
    assert hits == ["torch.distributed.all_reduce", "dist.broadcast_object_list", "d2.all_gather", "wait_all"]
