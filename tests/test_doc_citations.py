"""Every document the code cites is in the repository, and every cited section (``docs/x.md §N``) exists.

A citation is a path ending in ``.md`` in a .py, .md, .sh, .cpp or .h file; it resolves from the
repository root or from the citing file's folder (``FORMAT.md`` next to the module that reads
the format). Files a tool writes (the demo's report) are not citations.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = (".py", ".md", ".sh", ".cpp", ".h")
SKIPPED_FOLDERS = {".git", ".venv", "build", "dist", "node_modules", "__pycache__"}
WRITTEN_BY_TOOLS = {"report.md", "demo_out/report.md"}  # tools/run_demo.py's output, not a document
CITATION = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.md)(?:\s*§\s*(\d+))?")
SECTION_HEADING = re.compile(r"^#+\s*§\s*(\d+)\b", re.MULTILINE)


def repository_files() -> list[Path]:
    """The files to check; this one is left out (its examples cite missing files on purpose)."""
    return [path for path in sorted(REPO.rglob("*")) if path.suffix in SUFFIXES and path.is_file()
            and not SKIPPED_FOLDERS.intersection(path.relative_to(REPO).parts) and path != Path(__file__).resolve()]


def citations(text: str) -> list[tuple[str, str | None, int]]:
    """(path, section or None, line) of every ``*.md`` citation in ``text``."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for match in CITATION.finditer(line):
            found.append((match.group(1), match.group(2), number))
    return found


def resolve(cited: str, citing: Path) -> Path | None:
    for base in (REPO, citing.parent):
        if (base / cited).is_file():
            return base / cited
    return None


def broken_citations(files: list[Path]) -> list[str]:
    problems = []
    for path in files:
        for cited, section, line in citations(path.read_text(encoding="utf-8", errors="replace")):
            if cited in WRITTEN_BY_TOOLS:
                continue
            where = f"{path.relative_to(REPO)}:{line}"
            target = resolve(cited, path)
            if target is None:
                problems.append(f"{where}: cites {cited}, which is not in the repository")
            elif section is not None and section not in SECTION_HEADING.findall(target.read_text(encoding="utf-8")):
                problems.append(f"{where}: cites {cited} §{section}, which has no such section")
    return problems


def test_every_cited_document_and_section_exists():
    files = repository_files()
    assert len(files) > 100  # the walk found the repository
    assert broken_citations(files) == []


def test_the_check_finds_missing_files_and_sections(tmp_path):
    citing = REPO / "megatron_lst" / "__init__.py"  # any real file: only its folder matters
    text = "see docs/absent_page.md and docs/method.md §2, docs/method.md §42 and docs/design.md"
    assert citations(text) == [("docs/absent_page.md", None, 1), ("docs/method.md", "2", 1), ("docs/method.md", "42", 1),
                               ("docs/design.md", None, 1)]
    assert resolve("docs/absent_page.md", citing) is None
    assert resolve("docs/method.md", citing) == REPO / "docs" / "method.md"
    assert "2" in SECTION_HEADING.findall((REPO / "docs" / "method.md").read_text(encoding="utf-8"))
    assert "42" not in SECTION_HEADING.findall((REPO / "docs" / "method.md").read_text(encoding="utf-8"))
