from typer.testing import CliRunner

from sftune import __version__
from sftune.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "models" in result.output


def test_models_lists_both_embedded_models():
    result = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "smollm2-135m-instruct" in result.output
    assert "gemma3-270m" in result.output
    assert "Apache-2.0" in result.output
