"""No command writes over what it reads: an output that is an input under any name (itself, a symbolic link, a
hard link), lies inside an input folder, or is another output is refused with exit code 2 before anything is
written, and every file stays as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftune.cli import app
from sftune.data import Conversation, Message
from sftune.data.files import OverwriteError
from sftune.data.quality import write_dedup

runner = CliRunner()
A = json.dumps({"instruction": "Say hi.", "output": "Hi!"}) + "\n"
B = json.dumps({"instruction": "Say bye.", "output": "Bye!"}) + "\n"


@pytest.fixture
def data(tmp_path) -> Path:
    """A folder holding x.jsonl (a duplicate and a broken record: dedup and the quarantine have something to
    write), a symbolic link and a hard link to it."""
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "x.jsonl"
    path.write_text(A + A + B + "{broken\n", encoding="utf-8")
    (tmp_path / "link.jsonl").symlink_to(path)
    os.link(path, tmp_path / "hard.jsonl")
    return path


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(tmp_path: Path, *args, says: tuple[str, ...]) -> None:
    before = files_under(tmp_path)
    result = runner.invoke(app, [*map(str, args)], env={"COLUMNS": "1000"})
    message = result.output.replace("\n", "")
    assert result.exit_code == 2, result.output
    assert "error:" in message, message
    for text in says:
        assert text in message, (text, message)
    assert files_under(tmp_path) == before  # no input changed, no output written


def test_dedup_output_that_is_the_input_is_refused(data, tmp_path):
    refused(tmp_path, "data", "dedup", data, "-o", data, says=(f"output {data} is the input {data}:", "destroy"))


def test_dedup_output_through_a_symbolic_link_is_refused(data, tmp_path):
    link = tmp_path / "link.jsonl"
    refused(tmp_path, "data", "dedup", data, "-o", link, says=(str(link), str(data), "symbolic link", "destroy"))


def test_dedup_output_that_is_a_hard_link_to_the_input_is_refused(data, tmp_path):
    hard = tmp_path / "hard.jsonl"
    refused(tmp_path, "data", "dedup", data, "-o", hard, says=(str(hard), str(data), "hard link", "destroy"))


def test_dedup_removed_that_is_the_input_is_refused(data, tmp_path):
    refused(tmp_path, "data", "dedup", data, "-o", tmp_path / "out.jsonl", "--removed", data,
            says=(f"removed {data} is the input {data}", "destroy"))


def test_dedup_output_and_removed_that_are_one_file_are_refused(data, tmp_path):
    same = tmp_path / "y.jsonl"
    refused(tmp_path, "data", "dedup", data, "-o", same, "--removed", same,
            says=(f"output {same} and removed {same} are the same file", "give them different paths"))


def test_dedup_output_inside_an_input_folder_is_refused(data, tmp_path):
    out = data.parent / "deduplicated.jsonl"
    refused(tmp_path, "data", "dedup", data.parent, "-o", out,
            says=(f"output {out} is inside the input folder {data.parent}", f"outside {data.parent}"))


def test_write_dedup_refuses_one_file_for_both_outputs(tmp_path):
    conversation = Conversation([Message("user", "q"), Message("assistant", "a")])
    with pytest.raises(OverwriteError, match="are the same file"):
        write_dedup([conversation], str(tmp_path / "y.jsonl"), str(tmp_path / "y.jsonl"))
    assert not (tmp_path / "y.jsonl").exists()


def test_convert_output_that_is_a_hard_link_to_the_input_is_refused(data, tmp_path):
    hard = tmp_path / "hard.jsonl"
    refused(tmp_path, "data", "convert", data, "-o", hard, says=(str(hard), str(data), "hard link", "destroy"))
    refused(tmp_path, "data", "convert", data, "-o", hard, "--on-error", "raise", says=(str(hard), "hard link"))
    refused(tmp_path, "data", "convert", data, "-o", tmp_path / "o.jsonl", "--quarantine", hard,
            says=(f"quarantine {hard} is the input {data}", "hard link"))


@pytest.mark.parametrize("name", ["x", "link", "hard"])
def test_check_quarantine_that_is_the_input_is_refused(data, tmp_path, name):
    quarantine = data if name == "x" else tmp_path / f"{name}.jsonl"
    refused(tmp_path, "data", "check", data, "--quarantine", quarantine,
            says=(f"quarantine {quarantine} is the input {data}", "destroy"))


def test_check_quarantine_inside_an_input_folder_is_refused(data, tmp_path):
    quarantine = data.parent / "rejected.jsonl"
    refused(tmp_path, "data", "check", data.parent, "--quarantine", quarantine,
            says=(f"quarantine {quarantine} is inside the input folder {data.parent}",))


def test_stats_plot_that_is_a_hard_link_to_the_input_is_refused(data, tmp_path):
    plot = tmp_path / "plot.png"
    os.link(data, plot)
    refused(tmp_path, "data", "stats", data, "--plot", plot, says=(f"plot {plot} is the input {data}", "hard link"))


def test_an_output_beside_the_input_is_still_written(data, tmp_path):
    out, removed = tmp_path / "out" / "deduplicated.jsonl", tmp_path / "out" / "removed.jsonl"
    result = runner.invoke(app, ["data", "dedup", str(data), "-o", str(out), "--removed", str(removed)])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 2 and len(removed.read_text().splitlines()) == 1
