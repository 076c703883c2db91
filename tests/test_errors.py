"""One user-error type: every error a user causes derives from sftune.errors.UserError, and the `sftune`
command turns each into one `error:` line and exit code 2 in one place (cli.common)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftune.cli import app
from sftune.errors import UserError

SRC = Path(__file__).resolve().parent.parent / "src"
# Exceptions that are not a user's mistake: an HTTP error the server answers with, a reader's internal signal.
NOT_USER_ERRORS = {"sftune.serve.protocol.ApiError", "sftune.data.files._NotText"}


def exception_classes() -> list[str]:
    """module.Class for every class in src/sftune whose bases name an Error, Exception or a known error."""
    found = []
    for path in sorted((SRC / "sftune").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and any(
                    ast.unparse(base).endswith(("Error", "Exception")) for base in node.bases):
                found.append(f"{module}.{node.name}")
    return found


def test_every_sftune_error_is_a_user_error():
    classes = exception_classes()
    assert "sftune.config.ConfigError" in classes and "sftune.data.errors.DataError" in classes
    for name in classes:
        if name in NOT_USER_ERRORS:
            continue
        module, _, cls = name.rpartition(".")
        error = getattr(importlib.import_module(module), cls)
        assert issubclass(error, UserError), f"{name} should derive from sftune.errors.UserError"


@pytest.mark.parametrize("name, builtin", [
    ("sftune.config.ConfigError", ValueError), ("sftune.data.errors.DataError", ValueError),
    ("sftune.templates.errors.TemplateError", ValueError), ("sftune.evaluate.compare.EvalError", ValueError),
    ("sftune.data.files.OverwriteError", ValueError), ("sftune.runs.RunError", RuntimeError),
    ("sftune.models.ModelNotAvailableError", RuntimeError), ("sftune.export.merge.ExportError", RuntimeError),
    ("sftune.evaluate.benchmarks.files.BenchmarkDataError", FileNotFoundError),
])
def test_user_errors_keep_their_builtin_base(name, builtin):
    """Code that catches ValueError (or RuntimeError, FileNotFoundError) still catches them."""
    module, _, cls = name.rpartition(".")
    assert issubclass(getattr(importlib.import_module(module), cls), builtin)


def test_a_user_error_anywhere_is_one_line_and_exit_2(tmp_path):
    """An unknown task ends in EvalError from deep inside evaluation; `sftune template render` with an unknown
    template in TemplateError; `serve --adapter` in a UserError of the command itself: each is exit 2."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "hi", "output": "hello"}\n', encoding="utf-8")
    runner = CliRunner()
    for args, said in ((["eval", "smollm2-135m-instruct", "--tasks", "nosuchtask", "-o", str(tmp_path / "e")],
                        "unknown task 'nosuchtask'"),
                       (["template", "render", str(data), "-t", "nosuchtemplate"], "nosuchtemplate"),
                       (["serve", "smollm2-135m-instruct", "--adapter", "nonsense"], "--adapter 'nonsense'")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output, result.exception)
        assert "error:" in result.output and said in result.output
        assert "Traceback" not in result.output


def test_verbose_shows_the_user_errors_traceback(tmp_path):
    result = CliRunner().invoke(app, ["--verbose", "serve", "smollm2-135m-instruct", "--adapter", "nonsense"])
    assert isinstance(result.exception, UserError)
