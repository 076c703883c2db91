"""Write the architecture table of docs/families.md from `sftune.packing.ARCHITECTURES`.

    .venv/bin/python scripts/families_page.py          # rewrite the generated block in place
    .venv/bin/python scripts/families_page.py --check  # exit 1 when the page and the table disagree

The template table above it is written by hand; tests/test_families_page.py checks that it names every
built-in and that this block is what the script writes, so the page cannot drift from the code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "docs" / "families.md"
BEGIN = "<!-- architectures: written by scripts/families_page.py, do not edit by hand -->"
END = "<!-- end of architectures -->"


def block() -> str:
    """The generated block: one row per declared decoder architecture, packed isolated or padded and why."""
    from sftune.packing import ARCHITECTURES

    isolated = sorted(name for name, why in ARCHITECTURES.items() if why is None)
    padded = sorted((name, why) for name, why in ARCHITECTURES.items() if why is not None)
    lines = [BEGIN, "",
             f"**Packed rows isolated** ({len(isolated)} architectures; packed == alone within 1e-4 in fp32, "
             "`tests/test_packing_families.py::test_packed_sequences_are_the_sequences_alone`):", "",
             ", ".join(f"`{name}`" for name in isolated), "",
             f"**Trained padded** ({len(padded)} architectures; "
             "`tests/test_packing_families.py::test_an_architecture_that_leaks_trains_padded_with_its_reason`):", "",
             "| model_type | why packing is off |", "| --- | --- |"]
    lines += [f"| `{name}` | {why} |" for name, why in padded]
    return "\n".join(lines + ["", END])


def written(page: str) -> str:
    """The page with its generated block replaced by today's."""
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + block() + tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the page is out of date")
    args = parser.parse_args()
    page = PAGE.read_text(encoding="utf-8")
    new = written(page)
    if args.check:
        if new != page:
            print(f"{PAGE} is out of date: run python scripts/families_page.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
