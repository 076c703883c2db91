"""The `sftune` command as a user's shell runs it (a real process): errors end in one message and an
exit code, the libraries' noise stays out of the terminal, and `--verbose` brings both back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("kernels-community", "FutureWarning", "DeprecationWarning", "Traceback")


def sftune(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "COLUMNS": "200", **(env or {})}
    environment.pop("SFTUNE_VERBOSE", None)
    return subprocess.run([sys.executable, "-m", "sftune", *args], cwd=ROOT, capture_output=True, text=True,
                          env=environment, timeout=300)


def test_a_missing_config_is_one_message_and_exit_2():
    result = sftune("train", "no-such-config.yaml")
    assert result.returncode == 2
    assert "error: no-such-config.yaml" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_verbose_shows_the_traceback():
    result = sftune("--verbose", "train", "no-such-config.yaml")
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_loading_the_training_stack_prints_no_library_noise():
    """`train --print-config` imports peft (which imports bitsandbytes where installed) and transformers."""
    result = sftune("train", "examples/qlora.yaml", "--print-config")
    assert result.returncode == 0, result.stderr
    assert "name: qlora" in result.stdout
    assert not [n for n in NOISE if n in result.stderr], result.stderr


def test_python_dash_m_and_the_command_handle_errors_alike():
    command = Path(sys.executable).with_name("sftune")
    if not command.exists():
        pytest.skip("this install has no `sftune` console script beside the interpreter")
    a = sftune("train", "examples/lora.yaml", "method.r=zero")
    b = subprocess.run([str(command), "train", "examples/lora.yaml", "method.r=zero"], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "COLUMNS": "200"}, timeout=300)
    assert a.returncode == b.returncode == 2
    assert a.stderr + a.stdout == b.stderr + b.stdout
    assert "method.r" in a.stderr + a.stdout and "Traceback" not in a.stderr
