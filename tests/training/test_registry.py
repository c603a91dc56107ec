"""The model registry: every --model has a task, a step-FLOPs function and capabilities, and nothing
outside the registry dispatches on a model's name."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest

from megatron_lst.training.arguments import build_parser, parse_args
from megatron_lst.training.registry import MODELS, ModelName, model_spec

REPO = Path(__file__).resolve().parents[2]
NAME_TEST = re.compile(r"""[!=]=\s*["'](?:%s)["']|["'](?:%s)["']\s*[!=]=""" % (("|".join(map(re.escape, MODELS)),) * 2))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_entry_resolves_to_its_task_and_flops(name):
    from megatron_lst.training.registry import _resolve

    spec = model_spec(name)
    assert _resolve(spec.task).name == name  # the task class knows its registry name
    flops = spec.flops_per_step(parse_args(["--model", name, *(["--unit-bpe", "x.model"] if spec.unit_bpe else [])]),
                                1024)
    assert flops["total"] > 0
    assert spec.units_per_step(4) == (4 if spec.patched else 1)
    assert spec.generates == (spec.generation_refusal is None)


def test_the_flag_offers_exactly_the_registered_models():
    action = next(action for action in build_parser()._actions if action.dest == "model")
    assert tuple(action.choices) == tuple(MODELS) == get_args(ModelName)
    with pytest.raises(ValueError, match="unknown model 'gpt2'; known: baseline, lst, bpe-baseline"):
        model_spec("gpt2")


def test_capabilities_decide_the_plan():
    from megatron_lst.training.dry_run import parameter_counts, speech_compression

    lst, baseline = parse_args(["--model", "lst"]), parse_args(["--model", "baseline"])
    assert "encoder" in parameter_counts(lst, 1024) and "encoder" not in parameter_counts(baseline, 1024)
    assert speech_compression(lst) > 1.0 == speech_compression(baseline)


def test_nothing_outside_the_registry_tests_a_models_name():
    """Code asks the registry entry for a capability; tools/run_demo.py may name the models it runs."""
    files = [REPO / "pretrain_lst.py", *(REPO / "megatron_lst").rglob("*.py"), *(REPO / "tools").glob("*.py"),
             *(REPO / "bench").glob("*.py")]
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for path in files if path.name != "run_demo.py"
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
             if NAME_TEST.search(line)]
    assert found == []
    assert NAME_TEST.search('if config.train.model == "lst":') and NAME_TEST.search("'baseline' != model")
