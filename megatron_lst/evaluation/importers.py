"""Benchmark files as people hold them -> our items (``tools/evaluate.py --format``; FORMAT.md).

* ``storycloze-csv``: the Story Cloze Test release CSV (``InputStoryid``, ``InputSentence1``-``4``,
  ``RandomFifthSentenceQuiz1``/``2``, ``AnswerRightEnding`` 1 or 2): text items, T->T.
* ``hellaswag``: the HellaSwag jsonl (``ctx`` or ``ctx_a`` + ``ctx_b``, ``endings``, ``label``;
  ``activity_label`` prefixes the context as ``"<activity>: "``, as lm-eval's prompt does;
  ``ind`` is the id when present): text items, T->T. The unlabelled test split is refused.
* ``slamkit``: the spoken StoryCloze layout of slamkit and the "Textually Pretrained Speech
  Language Models" release (sStoryCloze, tStoryCloze): one audio file per whole story (its four
  sentences and one ending, spoken together), named ``<n>_<anything>.wav``; ordered by the integer
  ``n``, each consecutive pair is (true story, false story). Audio is not read here: the units of
  every file come from a units jsonl (``tools/extract_units.py`` over the folder writes one
  ``{"id": file stem, "units": [...]}`` line per file). An item has an empty prompt and the two
  whole stories as endings (S->S only); ``seq_nll`` / ``mean`` are the slamkit comparison.

Every problem is an InputError naming the file, line (or row) and field.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Optional

from megatron_lst.evaluation.items import Item, Part, read_items
from megatron_lst.validation import InputError, at_line, is_int, json_type, read_jsonl, require_field, \
    require_int_list, require_str

FORMATS = ("jsonl", "storycloze-csv", "hellaswag", "slamkit")
STORYCLOZE_COLUMNS = ("InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
                      "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding")


def read_storycloze_csv(path: str | Path) -> list[Item]:
    try:
        handle = Path(path).open(newline="", encoding="utf-8")
    except OSError as error:
        raise InputError(f"cannot read: {error.strerror or error}", file=path) from None
    items = []
    with handle:
        reader = csv.DictReader(handle)
        missing = [column for column in STORYCLOZE_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"not a Story Cloze CSV: no column {missing[0]!r} in the header", file=path, line=1)
        for row in reader:
            with at_line(path, reader.line_num):
                answer = row["AnswerRightEnding"].strip()
                if answer not in ("1", "2"):
                    raise InputError(f"must be 1 or 2, got {answer!r}", field="AnswerRightEnding")
                for column in STORYCLOZE_COLUMNS[:7]:
                    if not (row[column] or "").strip():
                        raise InputError("is empty", field=column)
                prompt = " ".join(row[f"InputSentence{i}"].strip() for i in range(1, 5))
                items.append(Item(row["InputStoryid"].strip(), int(answer) - 1, Part(text=prompt),
                                  (Part(text=row["RandomFifthSentenceQuiz1"].strip()),
                                   Part(text=row["RandomFifthSentenceQuiz2"].strip()))))
    return _unique(items, path)


def read_hellaswag(path: str | Path) -> list[Item]:
    items = []
    for line, row in read_jsonl(path):
        with at_line(path, line):
            if "ctx" in row:
                context = require_str(row["ctx"], "ctx", non_empty=True)
            else:
                context = f"{require_str(require_field(row, 'ctx_a'), 'ctx_a')} " \
                          f"{require_str(require_field(row, 'ctx_b'), 'ctx_b')}".strip()
            activity = row.get("activity_label")
            if activity is not None:
                context = f"{require_str(activity, 'activity_label').strip()}: {context}"
            endings = require_field(row, "endings")
            if not isinstance(endings, list):
                raise InputError(f"must be a list of strings, got {json_type(endings)}", field="endings")
            for index, ending in enumerate(endings):
                require_str(ending, f"endings[{index}]", non_empty=True)
            label = require_field(row, "label")
            # the release writes an integer, the Hugging Face copy a string of one digit; the
            # unlabelled test split has "" and cannot be scored
            if isinstance(label, str) and label.isdigit():
                label = int(label)
            if not is_int(label):
                raise InputError(f"must be an ending index, got {json_type(label)} (the test split has no labels)",
                                 field="label")
            item_id = row.get("ind", line)
            try:
                items.append(Item(str(item_id), label, Part(text=context), tuple(Part(text=e) for e in endings)))
            except ValueError as error:
                raise InputError(str(error).split(": ", 1)[-1], field="label") from None
    return _unique(items, path)


def _stem_index(stem: str) -> Optional[int]:
    match = re.match(r"(\d+)_", stem)
    return None if match is None else int(match.group(1))


def read_slamkit_units(path: str | Path, num_units: Optional[int] = None) -> list[Item]:
    """Items from the units jsonl of a spoken StoryCloze folder (see the module docstring)."""
    files: dict[int, tuple[str, list[int], int]] = {}
    for line, row in read_jsonl(path):
        with at_line(path, line):
            stem = require_str(require_field(row, "id"), "id", non_empty=True)
            units = require_int_list(require_field(row, "units"), "units", 0, num_units)
            if not units:
                raise InputError("is empty: the file gave no units", field="units")
            index = _stem_index(stem)
            if index is None:
                raise InputError(f"{stem!r} is not named <n>_<anything> (the spoken StoryCloze layout orders "
                                 "files by n)", field="id")
            if index in files:
                raise InputError(f"{stem!r} and {files[index][0]!r} (line {files[index][2]}) share the index {index}: "
                                 "the layout needs one file per index", field="id")
            files[index] = (stem, units, line)
    ordered = [files[index] for index in sorted(files)]
    if len(ordered) % 2:
        raise InputError(f"{len(ordered)} files: the layout pairs a true and a false story, so the count must be even "
                         f"(the last is {ordered[-1][0]!r})", file=path)
    items = []
    for pair in range(len(ordered) // 2):
        (true_stem, true_units, _), (false_stem, false_units, _) = ordered[2 * pair], ordered[2 * pair + 1]
        endings = [Part(units=tuple(true_units)), Part(units=tuple(false_units))]
        label = pair % 2  # alternate the true story's place, so a tie (the first wins) favours neither
        if label:
            endings.reverse()
        items.append(Item(f"{true_stem}|{false_stem}", label, Part(units=()), tuple(endings)))
    return items


def _unique(items: list[Item], path: str | Path) -> list[Item]:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise InputError(f"{item.id!r} is the id of two items", file=path, field="id")
        seen.add(item.id)
    return items


def read_benchmark(path: str | Path, format: str = "jsonl", num_units: Optional[int] = None) -> list[Item]:
    """The items of ``path`` read as ``format`` (one of FORMATS)."""
    if format == "jsonl":
        return read_items(path, num_units=num_units)
    if format == "storycloze-csv":
        return read_storycloze_csv(path)
    if format == "hellaswag":
        return read_hellaswag(path)
    if format == "slamkit":
        return read_slamkit_units(path, num_units)
    raise ValueError(f"unknown benchmark format {format!r}: choose from {FORMATS}")


def default_task_name(path: str | Path, format: str) -> str:
    """lm-eval task prefix: the benchmark's name for the text formats, else the file's stem."""
    return {"storycloze-csv": "storycloze", "hellaswag": "hellaswag"}.get(format, Path(path).stem)
