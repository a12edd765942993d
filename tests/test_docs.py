"""The documentation stands alone and describes the options that exist.

* Every link in ``README.md`` and ``docs/*.md`` leads to a file of this
  repository (and to a heading of it, for ``#anchor`` links); no page names
  a path outside the repository (``../``, the spec and design documents the
  project started from).
* Every ``--option`` named in ``docs/operations.md`` is an option of
  ``twistd`` or of ``twistd presence``, and every option of ``twistd
  presence`` is described there.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from twisted.scripts._twistd_unix import ServerOptions

from presence import tap

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
OUTSIDE = re.compile(r"\.\./|\bshared/(?:spec|design)|/work/")


def page_id(path: Path) -> str:
    return str(path.relative_to(REPO))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set:
    found = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def test_the_pages_are_found():
    names = {p.name for p in PAGES}
    assert {"README.md", "operations.md", "architecture.md", "client.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_link_leads_to_a_file_and_heading_of_this_repository(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if REPO not in file.parents and file != REPO:
            broken.append(f"{target}: outside the repository")
        elif not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no such heading")
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_page_names_a_file_outside_the_repository(page):
    lines = [f"{n}: {line.strip()}"
             for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
             if OUTSIDE.search(line)]
    assert lines == []


def long_options(options) -> set:
    return {name.rstrip("=") for name in options.longOpt}


OPERATIONS = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
NAMED = set(re.findall(r"(?<![\w-])--([a-z][a-z0-9-]*)", OPERATIONS))


def test_every_option_operations_md_names_exists():
    known = long_options(tap.Options()) | long_options(ServerOptions())
    assert sorted(NAMED - known) == []


def test_every_option_of_twistd_presence_is_in_operations_md():
    ours = long_options(tap.Options()) - {"help", "version"}
    assert sorted(ours - NAMED) == []


def test_the_options_table_has_a_row_per_option():
    rows = set(re.findall(r"^\| `--([a-z][a-z0-9-]*)", OPERATIONS, re.M))
    ours = long_options(tap.Options()) - {"help", "version"}
    assert sorted(ours - rows) == []
