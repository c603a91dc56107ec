"""Story-completion items and their jsonl file (the format is documented in FORMAT.md).

One item is a prompt and several candidate endings, each given as text, as speech units, or both.
Keeping both modalities on the same item is what lets one file serve all four directions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

TEXT = "text"
SPEECH = "units"


@dataclass(frozen=True)
class Part:
    """A prompt or an ending: its text, its speech units (0-based unit indices), or both."""

    text: Optional[str] = None
    units: Optional[tuple[int, ...]] = None

    def has(self, modality: str) -> bool:
        return (self.text if modality == TEXT else self.units) is not None

    def to_dict(self) -> dict:
        row: dict = {}
        if self.text is not None:
            row["text"] = self.text
        if self.units is not None:
            row["units"] = list(self.units)
        return row

    @classmethod
    def from_dict(cls, row: dict) -> "Part":
        units = row.get("units")
        return cls(text=row.get("text"), units=None if units is None else tuple(int(u) for u in units))


@dataclass(frozen=True)
class Item:
    """One multiple-choice question: ``endings[label]`` is the true continuation of ``prompt``."""

    id: str
    label: int
    prompt: Part
    endings: tuple[Part, ...]

    def __post_init__(self) -> None:
        if len(self.endings) < 2:
            raise ValueError(f"item {self.id}: needs at least 2 endings, got {len(self.endings)}")
        if not 0 <= self.label < len(self.endings):
            raise ValueError(f"item {self.id}: label {self.label} is not an index of its {len(self.endings)} endings")

    def has(self, prompt_modality: str, ending_modality: str) -> bool:
        """True when the prompt and every ending carry the fields a direction reads."""
        return self.prompt.has(prompt_modality) and all(e.has(ending_modality) for e in self.endings)

    def to_dict(self) -> dict:
        return {"id": self.id, "label": self.label, "prompt": self.prompt.to_dict(),
                "endings": [ending.to_dict() for ending in self.endings]}

    @classmethod
    def from_dict(cls, row: dict) -> "Item":
        return cls(id=str(row["id"]), label=int(row["label"]), prompt=Part.from_dict(row["prompt"]),
                   endings=tuple(Part.from_dict(e) for e in row["endings"]))


def read_items(path: str | Path) -> list[Item]:
    """All items of a benchmark file; a bad line is reported with its file and line number."""
    items = []
    with Path(path).open() as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                items.append(Item.from_dict(json.loads(line)))
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{path}:{line_number}: not a benchmark item ({error})") from error
    return items


def write_items(path: str | Path, items: Iterable[Item]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for item in items:
            handle.write(json.dumps(item.to_dict()) + "\n")
