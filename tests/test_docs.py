"""The README and docs/ send a reader only to files that are in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_names_a_file_in_the_repository(page):
    missing = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        path = target.split("#", 1)[0]
        if not path or re.match(r"^[a-z]+:", path):  # an anchor on the same page, or a web address
            continue
        if not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.name} links to files that are not in the repository: {missing}"


def test_the_readme_says_how_to_run_the_installed_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "source .venv/bin/activate" in readme and ".venv/bin/sftune" in readme


def test_every_markdown_file_the_readme_names_is_in_the_repository():
    """A page named in backquotes (`design.md`) is looked for anywhere in the repository: a reader who cannot
    find it is sent nowhere (the README once pointed to a DESIGN.md kept outside the repository)."""
    named = set(re.findall(r"`([\w.-]+\.md)`", (ROOT / "README.md").read_text(encoding="utf-8")))
    tracked = {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts}
    assert named - tracked == set(), f"the README names pages that are not in the repository: {named - tracked}"
