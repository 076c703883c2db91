"""Runs as separate processes: progress and time left read from metrics.jsonl, start -> finished, stop ->
stopped, resume from the last checkpoint, a crashed run reported as failed."""

from __future__ import annotations

import json

import pytest

from sftune import config
from sftune.webui import jobs
from tests.webui.conftest import run_config, running_or_fail, wait_for


def test_seconds_left_is_steps_left_times_the_pace_so_far():
    train = [{"step": 2, "time": 100.0}, {"step": 4, "time": 103.0}, {"step": 6, "time": 106.0}]
    # 6 s for 4 steps = 1.5 s a step; 10 - 6 = 4 steps left
    assert jobs.seconds_left(train, 10) == pytest.approx(6.0)
    assert jobs.seconds_left(train[:1], 10) is None and jobs.seconds_left(train, None) is None


def test_a_line_still_being_written_is_left_for_the_next_read(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0, "max_steps": 5}\n{"step": 2, "lo')
    p = jobs.progress(tmp_path)
    assert (p["step"], p["max_steps"], p["loss"]) == (1, 5, 2.0)


def test_a_run_process_trains_to_the_end_and_its_progress_is_read_from_the_folder(tmp_path, tiny_checkpoint,
                                                                                  demo_files):
    run_dir = tmp_path / "runs" / "r1"
    cfg = config.load(run_config(tiny_checkpoint, demo_files[0], run_dir))
    jobs.start(cfg)
    assert jobs.find_runs(tmp_path / "runs") == [run_dir]
    wait_for(lambda: jobs.status(run_dir)["state"] != "running", timeout=300, what="the run to end")
    state = jobs.status(run_dir)
    assert state["state"] == "finished", state["log"]
    p = jobs.progress(run_dir)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert p["step"] == p["max_steps"] == 3
    assert [r["step"] for r in p["train"]] == [1, 2, 3]
    assert p["loss"] == [r for r in metrics if "loss" in r][-1]["loss"]
    assert p["tokens_per_second"] > 0 and p["seconds_left"] == 0.0
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3


def test_stop_then_resume_continues_from_the_last_checkpoint(tmp_path, tiny_checkpoint, demo_files):
    run_dir = tmp_path / "r2"
    cfg = config.load(run_config(tiny_checkpoint, demo_files[0], run_dir, eval_steps=5, max_steps=400,
                                 save_steps=5, save_total_limit=1))
    jobs.start(cfg)
    with pytest.raises(RuntimeError, match="already training"):
        jobs.start(cfg)
    checkpoint = lambda: list((run_dir / "checkpoints").glob("checkpoint-*/trainer_state.json"))  # noqa: E731
    wait_for(lambda: running_or_fail(run_dir, checkpoint), timeout=300, what="a first checkpoint")
    assert jobs.stop(run_dir)
    wait_for(lambda: jobs.status(run_dir)["state"] != "running", timeout=60, what="the run to stop")
    assert jobs.status(run_dir)["state"] == "stopped"
    assert not (run_dir / "summary.json").exists()
    stopped_at = jobs.progress(run_dir)["step"]
    assert 5 <= stopped_at < 400

    jobs.resume(run_dir)
    wait_for(lambda: running_or_fail(run_dir, lambda: jobs.progress(run_dir)["step"] > stopped_at), timeout=300,
             what="steps after the resume")
    assert jobs.stop(run_dir)
    wait_for(lambda: jobs.status(run_dir)["state"] == "stopped", timeout=60, what="the run to stop again")
    log = (run_dir / jobs.LOG_FILE).read_text()
    assert "train.resume_from=last" in log


def test_a_run_that_crashes_is_reported_failed_with_its_log(tmp_path, demo_files):
    run_dir = tmp_path / "bad"
    cfg = config.load({"model": {"name": str(tmp_path / "no-such-model")}, "data": {"train": str(demo_files[0])},
                       "train": {"max_steps": 1}, "output": {"dir": str(run_dir)}})
    jobs.start(cfg)
    wait_for(lambda: jobs.status(run_dir)["state"] != "running", timeout=180, what="the run to end")
    state = jobs.status(run_dir)
    assert state["state"] == "failed" and state["returncode"] != 0
    assert "no-such-model" in state["log"]
