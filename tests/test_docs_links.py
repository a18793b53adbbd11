"""Every relative link in the README and docs/, and every `docs/X.md#anchor` the code or the
committed schemas name (an editor shows the schema's on hover), reaches a file and a heading."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
NAMED = re.compile(r"\b(docs/[\w.-]+\.md)#([\w-]+)")


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as
    hyphens, a repeated one numbered."""
    seen: Counter[str] = Counter()
    found = set()
    fenced = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"#{1,6} (.+)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            found.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
            seen[slug] += 1
    return found


def problem(target: Path, anchor: str) -> str | None:
    if not target.exists():
        return f"{target.relative_to(ROOT)} does not exist"
    if anchor and target.suffix == ".md" and anchor not in anchors(target):
        return f"{target.relative_to(ROOT)} has no heading #{anchor}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_of_a_page_resolves(page: Path) -> None:
    broken = []
    for link in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if why := problem(target, anchor):
            broken.append(f"{link}: {why}")
    assert broken == []


def test_every_docs_anchor_the_code_and_schemas_name_resolves() -> None:
    sources = [
        *sorted((ROOT / "soundtrack").rglob("*.py")),
        *sorted((ROOT / "flows").glob("*.py")),
        ROOT / "manifests" / "soundtrack.schema.json",
        ROOT / "docs" / "sidecar.schema.json",
    ]
    named = {
        (path, anchor) for source in sources for path, anchor in NAMED.findall(source.read_text())
    }
    assert named, "the pattern finds the references"
    broken = [f"{p}#{a}: {why}" for p, a in sorted(named) if (why := problem(ROOT / p, a))]
    assert broken == []
