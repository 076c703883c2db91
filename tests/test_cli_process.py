"""The `sftune` command as a user's shell runs it (a real process): errors end in one message and an
exit code, the libraries' noise stays out of the terminal, `--verbose` brings both back, and the simple
commands do not import the training stack."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sftune import quiet
from tests.conftest import tiny_model

ROOT = Path(__file__).resolve().parents[1]
# What the libraries underneath print, never sftune: tqdm bars, deepspeed's and logging's record formats,
# Python warnings, and the bars' own labels.
LIBRARY_LINE = re.compile(
    r"it/s\]|s/it\]|\d+%\||\[(WARNING|INFO|DEBUG)\]|^(WARNING|INFO|DEBUG):\S+:|\w+Warning: |warnings\.warn\("
    r"|Loading weights|de-quantizing|Writing model shards|kernels-community|Traceback")


def sftune(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "COLUMNS": "200", **(env or {})}
    # What this process or an earlier in-process test may have set: each command starts as a user's shell does.
    for key in ("SFTUNE_VERBOSE", *quiet.QUIET_ENVIRONMENT):
        if key not in (env or {}):
            environment.pop(key, None)
    return subprocess.run([sys.executable, "-m", "sftune", *args], cwd=ROOT, capture_output=True, text=True,
                          env=environment, timeout=600)


def library_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The lines of a command's output that sftune did not write: on success sftune writes to stdout only,
    so every line on stderr, and each line on stdout that carries a library's signature."""
    stderr = [line for line in re.split(r"[\r\n]", result.stderr) if line.strip()]
    return stderr + [line for line in re.split(r"[\r\n]", result.stdout) if LIBRARY_LINE.search(line)]


def test_a_missing_config_is_one_message_and_exit_2():
    result = sftune("train", "no-such-config.yaml")
    assert result.returncode == 2
    assert "error: no-such-config.yaml" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_verbose_shows_the_traceback():
    result = sftune("--verbose", "train", "no-such-config.yaml")
    assert result.returncode != 0
    assert "Traceback" in result.stderr


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


# A quiet first run: a tiny model trained, exported with the GGUF read-back check, answering a file.

@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "small.jsonl"
    path.write_text("".join((ROOT / "examples/data/train.jsonl").read_text(encoding="utf-8").splitlines(True)[:8]),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, smollm2_tokenizer, small_data):
    """`sftune train examples/lora.yaml` on a tiny random llama for 2 steps, no evaluation: (process, run folder)."""
    folder = tmp_path_factory.mktemp("quiet")
    model = folder / "tiny-model"
    tiny_model("llama", vocab_size=len(smollm2_tokenizer)).save_pretrained(model)
    smollm2_tokenizer.save_pretrained(model)
    run = folder / "run"
    result = sftune("train", "examples/lora.yaml", f"model.name={model}", f"data.train={small_data}", "data.eval=[]",
                    "data.val_ratio=0", "train.max_steps=2", f"output.dir={run}")
    assert result.returncode == 0, result.stdout + result.stderr
    return result, run


@pytest.mark.slow
def test_training_prints_only_sftune_lines(tiny_run):
    """No weight-loading bar, no deepspeed "Setting accelerator to CPU" (accelerate imports deepspeed in every
    save_pretrained where it is installed), no warnings: the trainable-parameter line, the progress and `Done`."""
    result, run = tiny_run
    assert library_lines(result) == []
    assert f"run folder {run}" in result.stdout


@pytest.mark.slow
def test_export_with_the_gguf_check_prints_only_sftune_lines(tiny_run, small_data, tmp_path):
    """The check reads the GGUF back through transformers, which de-quantizes it under a tqdm bar."""
    _, run = tiny_run
    result = sftune("export", str(run), "-o", str(tmp_path / "export"), "--gguf", "f16", "--check", "--check-data",
                    str(small_data), "--check-count", "1", "--check-max-new-tokens", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert library_lines(result) == []
    assert "gguf" in result.stdout and (tmp_path / "export/gguf/model.gguf").exists()


@pytest.mark.slow
def test_generate_prints_only_sftune_lines(tiny_run, small_data, tmp_path):
    _, run = tiny_run
    out = tmp_path / "answers.jsonl"
    result = sftune("generate", str(run), "-i", str(small_data), "-o", str(out), "--max-new-tokens", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert library_lines(result) == []
    assert len(out.read_text(encoding="utf-8").splitlines()) == 8


@pytest.mark.parametrize("args", [("models",), ("template", "list"), ("data", "check", "examples/data/train.jsonl"),
                                  ("train", "examples/lora.yaml", "--print-config")])
def test_simple_commands_print_only_sftune_lines(args):
    result = sftune(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout and library_lines(result) == []


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [("--verbose",), ()], ids=["--verbose", "SFTUNE_VERBOSE"])
def test_verbose_shows_the_libraries_output(tiny_run, tmp_path, verbose):
    """What the quiet run hides is there with --verbose (or SFTUNE_VERBOSE=1): the check above can fail."""
    _, run = tiny_run
    env = {} if verbose else {"SFTUNE_VERBOSE": "1"}
    result = sftune(*verbose, "export", str(run), "-o", str(tmp_path / "export"), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    shown = "\n".join(library_lines(result))
    assert "Loading weights" in shown and "Writing model shards" in shown
    if importlib.util.find_spec("deepspeed") is not None and not torch.cuda.is_available():
        assert "Setting accelerator to CPU" in shown


# Fast simple commands: the training stack (seconds of imports) is imported only by the commands that need it.

TRAINING_STACK = ("torch", "transformers", "peft", "accelerate", "datasets", "deepspeed", "bitsandbytes")
IMPORTED = """
import sys
import sftune.config
from sftune.cli import app
try:
    app(sys.argv[1:])
except SystemExit as end:
    assert not end.code, end.code
print("imported:", *sorted(m for m in TRAINING_STACK if m in sys.modules))
"""


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("template", "list"), ("models",),
                                  ("data", "check", "examples/data/train.jsonl"),
                                  ("train", "examples/lora.yaml", "--print-config")])
def test_simple_commands_do_not_import_the_training_stack(args):
    environment = {key: value for key, value in os.environ.items() if key != "SFTUNE_VERBOSE"}
    result = subprocess.run([sys.executable, "-c", f"TRAINING_STACK = {TRAINING_STACK!r}\n{IMPORTED}", *args],
                            cwd=ROOT, capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "imported:"
