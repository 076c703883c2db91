"""The files the web UI hands the browser (the histograms, the configuration to download, the check's quarantine)
leave nothing behind: not in the system's temporary folder, and nothing of the UI's scratch folder once the UI
ends, normally or killed (the next UI on the runs folder sweeps a killed one's)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from sftune.webui import data_tab, train_tab


def test_stats_and_check_write_nothing_to_the_temporary_folder(mixed_file, roots, tmp_path, monkeypatch):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    result, image = data_tab.statistics([str(mixed_file)], roots=roots)
    assert result["conversations"] == 3 and image.format == "PNG" and image.size[0] > 100
    assert data_tab.check_files([str(mixed_file)], roots=roots)["invalid"] == 2
    assert list(temporary.iterdir()) == []


def test_the_config_download_is_the_latest_form_only(tmp_path):
    first = train_tab.config_file("train: {lr: 1}\n", "run-1", tmp_path)
    second = train_tab.config_file("train: {lr: 2}\n", "run-12", tmp_path)
    assert second.name == "run-12.yaml" and second.read_text() == "train: {lr: 2}\n"
    assert not first.exists() and [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["run-12.yaml"]




def _ui(runs, killed: bool) -> str:
    """A UI process on `runs` that renders the form's configuration once, then exits or is killed (kill -9)."""
    code = (
        "import os, pathlib, signal, sys\n"
        "from sftune.webui import app, train_tab\n"
        "folder = app.scratch_folder(pathlib.Path(sys.argv[1]))\n"
        "train_tab.config_file('model: {name: m}\\n', 'config', folder)\n"
        "print(folder, flush=True)\n"
        + ("os.kill(os.getpid(), signal.SIGKILL)\n" if killed else "")
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code, str(runs)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == (-9 if killed else 0), done.stderr
    return done.stdout.strip()


def test_the_scratch_folder_goes_with_the_ui_and_a_killed_uis_at_the_next_start(tmp_path):
    from sftune.webui.jobs import find_runs

    runs = tmp_path / "runs"
    killed = _ui(runs, killed=True)
    assert os.path.isfile(os.path.join(killed, "config", "config.yaml"))  # kill -9 leaves it ...
    assert find_runs(runs) == []  # ... and a configuration named config.yaml in it is no run
    _ui(runs, killed=False)
    assert list(runs.iterdir()) == []  # ... until the next UI, which removes it and its own when it ends
