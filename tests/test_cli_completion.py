"""Shell completion: typer's own --install-completion / --show-completion, and what a shell gets back when
it asks for completions (the protocol the installed script speaks, through environment variables)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sftune.cli import app


def complete(words: str, shell: str = "bash") -> list[str]:
    """The completions a shell gets for the command line `words` (the cursor after its last word)."""
    env = {"_SFTUNE_COMPLETE": f"complete_{shell}", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split(" ")) - 1)}
    result = CliRunner().invoke(app, [], prog_name="sftune", env=env)
    assert result.exit_code == 0, result.output
    return result.output.split()


def test_help_offers_completion():
    result = CliRunner().invoke(app, ["--help"], prog_name="sftune")
    assert result.exit_code == 0
    assert "--install-completion" in result.output and "--show-completion" in result.output


@pytest.mark.parametrize("shell, line", [("bash", "complete -o default -F _sftune_completion sftune"),
                                         ("zsh", "#compdef sftune"), ("fish", "complete --command sftune")])
def test_show_completion_prints_the_script_for_sftune(shell, line, monkeypatch):
    # typer detects the shell it runs in; its own switch turns detection off so that the shell can be named
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")  # read when the command is built
    result = CliRunner().invoke(app, ["--show-completion", shell], prog_name="sftune")
    assert result.exit_code == 0 and line in result.output


def test_commands_subcommands_and_options_complete():
    assert complete("sftune da") == ["data"]
    assert {"check", "convert", "stats", "inspect"} <= set(complete("sftune data "))
    assert "config-schema" in complete("sftune con")
    assert complete("sftune train --print") == ["--print-config"]
