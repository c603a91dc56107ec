#!/usr/bin/env python
"""Adopt a checkpoint folder written before checkpoints carried a manifest (or by another tool).

    python tools/write_checkpoint_manifest.py runs/base/iter_0000100

Loading refuses a checkpoint folder without ``manifest.json`` (megatron_lst/training/checkpoint_manifest.py):
nothing would prove that its files are the ones that were written, and loading runs torch's
unpickler on them. Run this only on a checkpoint you trust as it is now: it records the current
size and SHA-256 of every file, so later corruption or tampering is caught. It refuses a folder
that already has a manifest (that one proves more than a new one would).

Checkpoints from before the manifest also recorded their run config and vocabulary layout as a
Python ``repr``; those two records in ``common.pt`` are rewritten as JSON first (parsed as
literals, never executed), since the library reads JSON only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_lst.training.checkpoint_manifest import MANIFEST_NAME, write_manifest  # noqa: E402
from megatron_lst.validation import ArgumentParser  # noqa: E402

RECORDS = ("config", "vocab_layout")  # the common state's mappings, JSON text since the manifest exists


def records_as_json(folder: Path) -> list[str]:
    """Rewrite ``common.pt``'s run config and vocabulary layout as JSON where they are an older
    version's Python repr; returns the records rewritten."""
    import ast
    import json

    import torch

    path = folder / "common.pt"
    if not path.is_file():  # not a megatron dist checkpoint (DeepSpeed keeps its records elsewhere)
        return []
    common = torch.load(path, weights_only=True)
    rewritten = []
    for name in RECORDS:
        text = common.get(name)
        if not isinstance(text, str):
            continue
        try:
            json.loads(text)
        except json.JSONDecodeError:
            common[name] = json.dumps(ast.literal_eval(text), sort_keys=True)  # literals only: nothing runs
            rewritten.append(name)
    if rewritten:
        torch.save(common, path.with_name(path.name + ".tmp"))
        path.with_name(path.name + ".tmp").replace(path)
    return rewritten


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="checkpoint folders (iter_NNNNNNN) to adopt")
    args = parser.parse_args(argv)
    for folder in map(Path, args.folders):
        if not folder.is_dir():
            print(f"error: {folder}: not a folder", file=sys.stderr)
            return 2
        if (folder / MANIFEST_NAME).exists():
            print(f"error: {folder / MANIFEST_NAME} already exists; it is not replaced", file=sys.stderr)
            return 2
    for folder in map(Path, args.folders):
        rewritten = records_as_json(folder)
        if rewritten:
            print(f"rewrote {', '.join(rewritten)} in {folder / 'common.pt'} as JSON")
        print(f"wrote {write_manifest(folder)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
