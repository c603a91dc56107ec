"""The packages import only downwards: data, patching, models, training, inference, then evaluation
(which scores with inference's cached steppers); tools and pretrain_lst.py on top. An upward import
(a training module reaching into evaluation, inference borrowing from evaluation) is named with its
file and line."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "megatron_lst"

# Each unit of megatron_lst (a subpackage, or a top-level module) and its layer; a unit may import
# units of lower layers only, and of its own layer only itself.
LAYERS = {
    "__init__": 0, "_indexed_builder": 0, "_patching": 0, "choices": 0, "utils": 0, "validation": 0, "tokenizer": 0,
    "data": 1,
    "patching": 2, "unit_bpe_tokenizer": 2,  # the unit BPE reads its pieces with data/unit_bpe.py
    "models": 3, "demo": 3, "export": 3,  # export reads run configs as dicts; training loads exported folders
    "training": 4,
    "inference": 5,
    "evaluation": 6,  # the prompt cache steps inference's KV-cached models
}


def unit_of(path: Path, package: Path) -> str:
    parts = path.relative_to(package).parts
    return parts[0] if len(parts) > 1 else path.stem


def imported_units(path: Path):
    """(unit, line) of every megatron_lst import in ``path``, at module level or inside functions."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names
                                     if node.module == "megatron_lst"]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "megatron_lst" and len(parts) > 1:
                yield parts[1], node.lineno


def upward_imports(package: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        unit, where = unit_of(path, package), path.relative_to(package.parent)
        assert unit in LAYERS, f"{where}: unit {unit!r} has no layer in tests/test_layering.py"
        for imported, line in imported_units(path):
            if imported == unit:
                continue
            assert imported in LAYERS, f"{where}:{line}: imports unknown unit {imported!r}"
            if LAYERS[imported] >= LAYERS[unit]:
                problems.append(f"{where}:{line}: {unit} (layer {LAYERS[unit]}) imports "
                                f"{imported} (layer {LAYERS[imported]})")
    return problems


def test_no_package_imports_upwards_or_sideways():
    assert upward_imports() == []


def test_no_tool_or_bench_imports_the_launcher():
    """pretrain_lst.py is the top: a tool that needs a model asks the registry, not the launcher."""
    problems = []
    for path in [REPO / "pretrain_lst.py", *sorted((REPO / "tools").glob("*.py")), *sorted((REPO / "bench").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("pretrain_lst",):
                problems.append(f"{path.relative_to(REPO)}:{node.lineno}: imports {node.module}")
            if isinstance(node, ast.Import) and any(alias.name == "pretrain_lst" for alias in node.names):
                problems.append(f"{path.relative_to(REPO)}:{node.lineno}: imports pretrain_lst")
    assert problems == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The check itself can fail: an evaluation import inside a training function is reported."""
    fake = tmp_path / "megatron_lst"
    (fake / "training").mkdir(parents=True)
    (fake / "training" / "bad.py").write_text("def f():\n    from megatron_lst.evaluation import scoring\n")
    (fake / "inference").mkdir()
    (fake / "inference" / "side.py").write_text("import megatron_lst.evaluation.model_scorer\n")
    assert upward_imports(fake) == [
        "megatron_lst/inference/side.py:1: inference (layer 5) imports evaluation (layer 6)",
        "megatron_lst/training/bad.py:2: training (layer 4) imports evaluation (layer 6)",
    ]
