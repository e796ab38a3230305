"""The docs link only inside the repository, and every link resolves.

Checks README.md, docs/**/*.md, sql/README.md and client_js/README.md: each relative markdown
link names a file or folder of the repository (and, for a markdown page, a heading that exists
there); no link leaves the repository; no page points at the design brief that used to live
outside it.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted(
    [REPO / "README.md", REPO / "sql" / "README.md", REPO / "client_js" / "README.md",
     *(REPO / "docs").rglob("*.md")]
)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
OUTSIDE = ("../shared", "DESIGN.md")


def _prose(text: str) -> str:
    """The page without its code blocks and inline code, where brackets are not links."""
    return CODE.sub("", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    kept = []
    for char in text:
        if char in "-_ " or unicodedata.category(char)[0] in "LNM":
            kept.append("-" if char == " " else char)
    return "".join(kept)


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        slug = base = _slug(heading)
        count = 0
        while slug in anchors:  # GitHub numbers repeated headings: slug, slug-1, slug-2, ...
            count += 1
            slug = f"{base}-{count}"
        anchors.add(slug)
    return anchors


def _links(page: Path) -> list[str]:
    return LINK.findall(_prose(page.read_text()))


def _name(page: Path) -> str:
    return str(page.relative_to(REPO))


def test_the_pages_exist() -> None:
    assert (REPO / "docs" / "reference" / "README.md") in PAGES
    assert len(PAGES) > 10


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_link_stays_in_the_repository_and_resolves(page: Path) -> None:
    broken = []
    for target in _links(page):
        if SCHEME.match(target):
            broken.append(f"{target}: links outside the repository")
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.is_relative_to(REPO):
            broken.append(f"{target}: leaves the repository")
        elif not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {_name(resolved)}")
    assert not broken, f"{_name(page)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_no_page_points_outside_the_repository(page: Path) -> None:
    text = page.read_text()
    found = [word for word in OUTSIDE if word in text]
    assert not found, f"{_name(page)} mentions {', '.join(found)}"


def test_the_anchor_rule_matches_githubs() -> None:
    assert _slug("Flows: `from pgflow import Flow`") == "flows-from-pgflow-import-flow"
    assert _slug("`get_run(run_id uuid) returns jsonb`") == "get_runrun_id-uuid-returns-jsonb"
    assert _slug("Running a flow from `psql` alone") == "running-a-flow-from-psql-alone"
    origin = "Which pages may open `/realtime` (Origin)"
    assert _slug(origin) == "which-pages-may-open-realtime-origin"
