"""Cross-references between the README, docs/ and the sources point at what exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "src" / "mvxray").rglob("*.py")),
]


def _flat(text: str) -> str:
    """One line: a reference may wrap, in prose or in a ``#`` comment."""
    return re.sub(r"\s*\n\s*(?:#:?\s*)?", " ", text)


def _section_refs(text: str) -> list[tuple[str, str]]:
    """``(file, section)`` of every ``docs/name.md, "Section"`` (a link or plain text)."""
    pattern = r"((?:docs/)?[a-z-]+\.md)(?:\]\([^)]*\))?[`)]?, \"([^\"]+)\""
    return re.findall(pattern, _flat(text))


def _has_section(doc: str, section: str) -> bool:
    """A heading or a bold paragraph lead that starts with ``section``."""
    return bool(re.search(r"^#+ " + re.escape(section), doc, re.M)) or (
        "**" + section in _flat(doc)
    )


def test_section_refs_are_found_by_the_pattern() -> None:
    text = 'see [docs/a.md](docs/a.md), "Scale" and (docs/b-c.md, "A CT\n#: of yours")'
    assert _section_refs(text) == [("docs/a.md", "Scale"), ("docs/b-c.md", "A CT of yours")]
    assert _has_section("## Scale\n", "Scale") and _has_section(
        "**A CT\nof yours** x", "A CT of yours"
    )
    assert not _has_section("Scale is mentioned\n", "Scale")


def test_links_and_section_references_resolve() -> None:
    missing = []
    for path in SOURCES:
        text = path.read_text()
        where = path.relative_to(ROOT)
        for link in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", text):
            if not (path.parent / link).exists():
                missing.append(f"{where}: {link}")
        for name, section in _section_refs(text):
            doc = ROOT / "docs" / Path(name).name
            if not (doc.exists() and _has_section(doc.read_text(), section)):
                missing.append(f'{where}: {name}, "{section}"')
    assert not missing, f"references to what does not exist: {missing}"
