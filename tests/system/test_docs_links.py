"""The documentation's relative links and anchors lead somewhere, and cite nothing that is not
shipped: README.md and docs/*.md, with anchors as GitHub renders them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks (a link or heading in code is not one)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces to
    hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[`*_]", "", text.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(page.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[str]:
    found = []
    for line in _prose(page.read_text(encoding="utf-8")):
        line = re.sub(r"`[^`]*`", "", line)  # inline code
        for m in LINK.finditer(line):
            found.append(m.group(1) or m.group(2))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
        if ROOT not in dest.parents and dest != ROOT:
            broken.append(f"{target}: outside the repository")
    assert not broken, broken


USER_FACING = [*PAGES, *sorted((ROOT / "ops").rglob("*.yml"))]


@pytest.mark.parametrize("page", USER_FACING, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_cites_a_document_the_repository_does_not_ship(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert "SPEC §" not in text and "SPEC.md" not in text and "../shared" not in text


def test_every_page_under_docs_is_in_the_index() -> None:
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "README.md":
            assert f"]({page.name})" in index, page.name


def test_every_metric_the_workers_export_is_documented() -> None:
    """Each `engage_` metric registered in the code is named in metrics.md or kpis.md (a
    summary's or histogram's `_sum`/`_count`/`_bucket` by its base name)."""
    docs = "".join(
        (ROOT / "docs" / n).read_text(encoding="utf-8") for n in ("metrics.md", "kpis.md")
    )
    names: set[str] = set()
    for path in (ROOT / "stream").rglob("*.py"):
        names |= set(re.findall(r'"(engage_[a-z0-9_]+)"', path.read_text(encoding="utf-8")))
    missing = []
    for name in sorted(names):
        base = re.sub(r"_(sum|count|bucket)$", "", name)
        if f"`{name}" not in docs and f"`{base}`" not in docs and f"`{base}{{" not in docs:
            missing.append(name)
    assert not missing, missing
