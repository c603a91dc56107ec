#!/usr/bin/env python
"""Adopt a checkpoint folder written before checkpoints carried a manifest (or by another tool).

    python tools/write_checkpoint_manifest.py runs/base/iter_0000100

Loading refuses a checkpoint folder without ``manifest.json`` (megatron_lst/training/checkpoint_manifest.py):
nothing would prove that its files are the ones that were written, and loading runs torch's
unpickler on them. Run this only on a checkpoint you trust as it is now: it records the current
size and SHA-256 of every file, so later corruption or tampering is caught. It refuses a folder
that already has a manifest (that one proves more than a new one would).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_lst.training.checkpoint_manifest import MANIFEST_NAME, write_manifest  # noqa: E402
from megatron_lst.validation import ArgumentParser  # noqa: E402


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
        print(f"wrote {write_manifest(folder)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
