"""docs/families.md: the architecture table is the code's, and the template table names every twin."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
page_script = runpy.run_path(str(ROOT / "scripts" / "families_page.py"))


def test_the_architecture_table_is_what_packing_declares():
    page = (ROOT / "docs" / "families.md").read_text(encoding="utf-8")
    assert page_script["written"](page) == page, "docs/families.md is out of date: run python scripts/families_page.py"


def test_the_template_table_names_every_built_in_twin():
    from sftune.templates.twins import TWINS

    page = (ROOT / "docs" / "families.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`([\w.-]+)`", page.split("## Architectures", 1)[0]))
    assert set(TWINS.values()) - named == set()
