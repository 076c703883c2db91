"""Checkpoints: only completely written ones are resumed."""

from __future__ import annotations

from sftune.training.checkpoints import last_checkpoint


def test_incomplete_checkpoint_is_not_resumed(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / ".sftune-complete").write_text("")
    (tmp_path / "checkpoint-4").mkdir()  # interrupted while writing
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
