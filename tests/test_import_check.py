"""scripts/import_check.py: sftune's imports point down the floors of docs/architecture.md and form no circle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "import_check.py"
FLOORS = """
| floor | modules | what |
|---|---|---|
| 0 | `sftune` `low` | the bottom |
| 1 | `high` | above it |
| 2 | `high.top` | a module of high placed higher |
"""


def run(root: Path | None = None) -> subprocess.CompletedProcess:
    args = [] if root is None else ["--root", str(root)]
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT)


def checkout(tmp_path: Path, files: dict[str, str]) -> Path:
    """A made-up checkout: src/sftune/<files> and docs/architecture.md with FLOORS."""
    for name, text in {"__init__.py": "", "high/__init__.py": "", **files}.items():
        path = tmp_path / "src" / "sftune" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "architecture.md").write_text(FLOORS, encoding="utf-8")
    return tmp_path


def test_sftune_has_no_circle_and_no_upward_import():
    done = run()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no circle" in done.stdout


def test_a_circle_inside_a_function_is_found(tmp_path):
    root = checkout(tmp_path, {"low.py": "def f():\n    from sftune.high import a\n",
                               "high/a.py": "from sftune import low\n", "high/top.py": ""})
    done = run(root)
    assert done.returncode == 1
    assert "circle: " in done.stdout and "src/sftune/low.py:2" in done.stdout
    assert "upward: sftune.low (floor 0) imports sftune.high.a (floor 1) at src/sftune/low.py:2" in done.stdout


def test_reexports_count_as_the_defining_module(tmp_path):
    """`from sftune.high import thing` names the module that defines it; a longer row wins (high.top is 2)."""
    root = checkout(tmp_path, {"high/__init__.py": "from sftune.high.top import thing\n",
                               "high/top.py": "thing = 1\n", "high/a.py": "from sftune.high import thing\n"})
    done = run(root)
    assert "upward: sftune.high.a (floor 1) imports sftune.high.top (floor 2) at src/sftune/high/a.py:1" in done.stdout
    assert "sftune.high (floor 1) imports" not in done.stdout  # a package collects its own modules


def test_type_checking_imports_and_lazy_reexports_do_not_count(tmp_path):
    root = checkout(tmp_path, {
        "__init__.py": "def __getattr__(name):\n    from sftune.high.top import thing\n    return thing\n",
        "low.py": "from typing import TYPE_CHECKING\nimport sftune\nif TYPE_CHECKING:\n    from sftune.high import a\n",
        "high/a.py": "from sftune import low\n", "high/top.py": "thing = 1\n"})
    done = run(root)
    assert done.returncode == 0, done.stdout


def test_a_module_without_a_floor_is_reported(tmp_path):
    done = run(checkout(tmp_path, {"low.py": "", "high/top.py": "", "elsewhere.py": ""}))
    assert done.returncode == 1
    assert "unplaced: sftune.elsewhere has no floor in docs/architecture.md" in done.stdout
