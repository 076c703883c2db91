"""The web UI touches only its runs folder, its data roots and gradio's upload folder: every route that takes a
path from the browser refuses one outside (a file of another folder, /etc/passwd, a link inside a root that
points outside) with the reason and the fix, before anything is read, written or started; paths inside work.
The handlers take no part of --auth, and the served app answers the same with and without it."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from sftune.generation import GenerationOptions
from sftune.webui import chat_tab, data_tab, evaluate_tab, export_tab, jobs, train_tab
from sftune.webui.paths import OutsideError, Roots, allowed, data_paths

RECORD = {"messages": [{"role": "user", "content": "the secret?"}, {"role": "assistant", "content": "hunter2"}]}
OUTSIDE = "is outside the folders this UI may read"


@pytest.fixture
def place(tmp_path):
    """runs/ and data/ (the UI's roots), uploads/ (gradio's), outside/ with a valid data file, and links from
    inside data/ to it: a file, a folder holding a link, a folder linked whole."""
    for name in ("runs", "data", "uploads", "outside"):
        (tmp_path / name).mkdir()
    secret = tmp_path / "outside" / "secret.jsonl"
    secret.write_text(json.dumps(RECORD) + "\n")
    inside = tmp_path / "data" / "ok.jsonl"
    inside.write_text(json.dumps(RECORD) + "\n")
    (tmp_path / "data" / "link.jsonl").symlink_to(secret)
    (tmp_path / "data" / "folder").mkdir()
    (tmp_path / "data" / "folder" / "ok.jsonl").write_text(json.dumps(RECORD) + "\n")
    (tmp_path / "data" / "folder" / "link.jsonl").symlink_to(secret)
    (tmp_path / "data" / "linked-folder").symlink_to(tmp_path / "outside")
    roots = dataclasses.replace(Roots.of(tmp_path / "runs", [tmp_path / "data"]), uploads=(tmp_path / "uploads",))
    return tmp_path, roots


def outside_paths(tmp_path: Path) -> list[str]:
    """Every way of naming a file outside: another folder, a system file, a link to it, a folder holding a
    link, a linked folder, a glob matching the link, a relative path climbing out of a root."""
    data = tmp_path / "data"
    return [str(tmp_path / "outside" / "secret.jsonl"), "/etc/passwd", str(data / "link.jsonl"),
            str(data / "folder"), str(data / "linked-folder" / "secret.jsonl"), str(data / "*.jsonl"),
            str(data / ".." / "outside" / "secret.jsonl"), str(tmp_path / "*" / "secret.jsonl")]


def refused(match: str = OUTSIDE):
    return pytest.raises(OutsideError, match=match)


def test_allowed_resolves_links_and_names_the_folders_and_the_fix(place):
    tmp_path, roots = place
    assert allowed(tmp_path / "data" / "ok.jsonl", roots) == (tmp_path / "data" / "ok.jsonl").resolve()
    assert allowed(tmp_path / "uploads" / "new.jsonl", roots).parent == (tmp_path / "uploads").resolve()
    with refused() as caught:
        allowed("/etc/passwd", roots)
    message = str(caught.value)
    assert message.startswith("/etc/passwd is outside") and "--data-root DIR" in message
    assert str(roots.runs) in message and str(roots.data[0]) in message
    with refused("link.jsonl \\(a link to .*secret.jsonl\\) is outside"):
        allowed(tmp_path / "data" / "link.jsonl", roots)
    with refused("is outside the runs folder"):
        allowed(tmp_path / "data" / "ok.jsonl", roots, runs_only=True)
    assert data_paths(["hub:org/name"], roots) == ["hub:org/name"]  # a hub name is no local path


def test_the_default_data_root_is_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Roots.of("runs").data == (tmp_path.resolve(),) and Roots.of("runs").runs == tmp_path.resolve() / "runs"


def test_data_check_refuses_every_path_outside_and_reads_inside(place):
    tmp_path, roots = place
    for path in outside_paths(tmp_path):
        with refused():
            data_tab.check_files([str(tmp_path / "data" / "ok.jsonl"), path], roots=roots)
    assert data_tab.check_files([str(tmp_path / "data" / "ok.jsonl")], roots=roots)["valid"] == 1
    assert data_tab.check_files([str(tmp_path / "data" / "folder" / "ok.*")], roots=roots)["valid"] == 1


def test_data_stats_refuses_a_file_or_a_tokenizer_folder_outside(place):
    tmp_path, roots = place
    for path in outside_paths(tmp_path):
        with refused():
            data_tab.statistics([path], roots=roots)
    (tmp_path / "outside" / "model").mkdir()
    with refused():
        data_tab.statistics([str(tmp_path / "data" / "ok.jsonl")], tokenizer=str(tmp_path / "outside" / "model"),
                            roots=roots)
    result, _ = data_tab.statistics([str(tmp_path / "data" / "ok.jsonl")], roots=roots)
    assert result["conversations"] == 1


def test_data_inspect_refuses_a_file_or_a_model_folder_outside(place):
    from sftune import models

    tmp_path, roots = place
    for path in outside_paths(tmp_path):
        with refused():
            data_tab.inspect_html([path], models.DEFAULT_MODEL, roots=roots)
    (tmp_path / "outside" / "model").mkdir()
    with refused():
        data_tab.inspect_html([str(tmp_path / "data" / "ok.jsonl")], str(tmp_path / "outside" / "model"), roots=roots)
    page = data_tab.inspect_html([str(tmp_path / "data" / "ok.jsonl")], models.DEFAULT_MODEL, roots=roots)
    assert "hunter2" in page


def test_images_of_a_record_outside_are_neither_shown_nor_read(place):
    from sftune.vision import shapes

    tmp_path, roots = place
    shapes.write(tmp_path / "outside", 1, seed=0)
    record = json.loads((tmp_path / "outside" / "train.jsonl").read_text())
    part = record["messages"][0]["content"][0]["image_url"]
    part["url"] = str(tmp_path / "outside" / part["url"])  # a data file inside naming an image outside
    (tmp_path / "data" / "images.jsonl").write_text(json.dumps(record) + "\n")
    with refused("00000.png is outside"):
        data_tab.check_files([str(tmp_path / "data" / "images.jsonl")], roots=roots)
    with refused("00000.png is outside"):
        data_tab.inspect_html([str(tmp_path / "data" / "images.jsonl")], "smollm2-135m-instruct", roots=roots)
    shapes.write(tmp_path / "data", 1, seed=0)
    assert len(data_tab.check_files([str(tmp_path / "data" / "train.jsonl")], roots=roots)["gallery"]) == 1


def test_an_upload_comes_from_the_upload_folder_or_the_roots(place):
    tmp_path, roots = place
    (tmp_path / "uploads" / "up.jsonl").write_text(json.dumps(RECORD) + "\n")
    kept_in = tmp_path / "runs" / "_uploads"
    for path in [str(tmp_path / "outside" / "secret.jsonl"), "/etc/passwd", str(tmp_path / "data" / "link.jsonl")]:
        with refused():
            data_tab.keep_uploads([path], kept_in, roots=roots)
    assert not list(kept_in.glob("*"))
    assert data_tab.keep_uploads([str(tmp_path / "uploads" / "up.jsonl")], kept_in, roots=roots) == \
        [str(kept_in / "up.jsonl")]


def form(**changes) -> dict:
    return {"name": "r1", "model": "smollm2-135m-instruct", "train": "", "eval": "", "method": "lora", **changes}


def test_start_refuses_training_data_or_a_model_folder_outside_and_starts_nothing(place, monkeypatch):
    tmp_path, roots = place
    started = []
    monkeypatch.setattr(jobs, "start", lambda cfg, resume=False: started.append(cfg))
    (tmp_path / "outside" / "model").mkdir()
    inside = str(tmp_path / "data" / "ok.jsonl")
    for path in outside_paths(tmp_path):
        for values in ({"train": path}, {"train": inside, "eval": path}):
            with refused():
                train_tab.start_run(form(**values), roots)
    with refused():
        train_tab.start_run(form(train=inside, model=str(tmp_path / "outside" / "model")), roots)
    with refused():
        train_tab.build_config(roots, form(train=inside, model="../outside/model"))
    (tmp_path / "runs" / "r1").symlink_to(tmp_path / "outside", target_is_directory=True)
    with refused("is outside the runs folder"):
        train_tab.start_run(form(train=inside), roots)  # a run folder linked outside is not written into
    assert started == []
    (tmp_path / "runs" / "r1").unlink()
    cfg = train_tab.start_run(form(train=f"{inside}\nhub:org/name", model="org/name"), roots)
    assert started == [cfg] and cfg.output.dir == str(roots.runs / "r1")


def write_run(folder: Path, data: str, output: str | None = None) -> Path:
    """A run folder as `sftune train` leaves it: config.yaml (naming `data`) next to an adapter."""
    from sftune import config

    folder.mkdir(parents=True, exist_ok=True)
    cfg = config.load({"model": {"name": "smollm2-135m-instruct"}, "data": {"train": data},
                       "output": {"dir": output or str(folder)}})
    (folder / "config.yaml").write_text(config.to_yaml(cfg))
    (folder / "adapter_config.json").write_text("{}")
    return folder


def test_resume_runs_only_a_run_of_the_runs_folder_whose_config_stays_inside(place, monkeypatch):
    tmp_path, roots = place
    started = []
    monkeypatch.setattr(jobs, "start", lambda cfg, resume=False: started.append((cfg, resume)))
    inside = str(tmp_path / "data" / "ok.jsonl")
    with refused("is outside the runs folder"):
        train_tab.resume_run(str(write_run(tmp_path / "outside" / "run", inside)), roots)
    with refused("is outside the runs folder"):
        train_tab.resume_run(str(write_run(tmp_path / "data" / "run", inside)), roots)  # readable, not a run
    (tmp_path / "runs" / "linked").symlink_to(tmp_path / "outside" / "run")
    with refused("is outside the runs folder"):
        train_tab.resume_run(str(tmp_path / "runs" / "linked"), roots)
    with refused():  # a config.yaml put into the runs folder (an upload named config.yaml) naming data outside
        train_tab.resume_run(str(write_run(tmp_path / "runs" / "_uploads", str(tmp_path / "outside" / "secret.jsonl"))),
                             roots)
    assert started == []
    run = write_run(tmp_path / "runs" / "mine", inside, output=str(tmp_path / "outside" / "elsewhere"))
    train_tab.resume_run(str(run), roots)
    [(cfg, resume)] = started
    assert resume and cfg.output.dir == str(run.resolve())  # where the folder is, never its config's old dir


def test_stop_and_progress_read_only_run_folders_of_the_runs_folder(place):
    tmp_path, roots = place
    other = tmp_path / "outside" / "run"
    other.mkdir()
    (other / jobs.LOG_FILE).write_text("SECRET LOG\n")
    (other / "metrics.jsonl").write_text('{"step": 7, "loss": 1.5}\n')
    (other / jobs.PROCESS_FILE).write_text(json.dumps({"pid": 2**22 + 1, "started": 0, "stopped": False}))
    (tmp_path / "runs" / "linked").symlink_to(other)
    for run in (str(other), str(tmp_path / "runs" / "linked"), "/etc"):
        shown = train_tab.refresh(run, roots)
        assert shown[0].startswith("**refused**: ") and "is outside the runs folder" in shown[0]
        assert "SECRET" not in repr(shown) and shown[1:] == (None, None, None, "")
        with refused("is outside the runs folder"):
            train_tab.stop_run(run, roots)
    mine = tmp_path / "runs" / "mine"
    mine.mkdir()
    (mine / jobs.LOG_FILE).write_text("my log\n")
    (mine / "metrics.jsonl").write_text('{"step": 7, "loss": 1.5}\n')
    shown = train_tab.refresh(str(mine), roots)
    assert "step 7" in shown[0] and shown[-1] == "my log\n" and list(shown[1]["loss"]) == [1.5]
    assert train_tab.stop_run(str(mine), roots) is False  # inside: asked, nothing running


def test_chat_refuses_a_model_or_an_image_outside_before_loading_anything(place):
    tmp_path, roots = place
    (tmp_path / "outside" / "model").mkdir()
    (tmp_path / "outside" / "red.png").write_bytes(b"not read")
    image = str(tmp_path / "outside" / "red.png")
    options = GenerationOptions(max_new_tokens=1)
    loaded = list(chat_tab._loaded)
    attempts = [(str(tmp_path / "outside" / "model"), [], "hi"),
                ("smollm2-135m-instruct", [], {"text": "what?", "files": [image]}),
                ("smollm2-135m-instruct", [], {"text": "what?", "files": ["/etc/passwd"]}),
                ("smollm2-135m-instruct", [{"role": "user", "content": [{"path": image}]}], "and now?")]
    for model, history, message in attempts:
        with refused():
            next(chat_tab.chat(model, True, history, [], message, options, roots=roots))
    assert list(chat_tab._loaded) == loaded  # nothing was loaded


def test_evaluate_and_export_take_a_run_of_the_runs_folder_and_write_inside(place):
    tmp_path, roots = place
    outside_run = write_run(tmp_path / "outside" / "run", str(tmp_path / "data" / "ok.jsonl"))
    mine = write_run(tmp_path / "runs" / "mine", str(tmp_path / "data" / "ok.jsonl"))
    with refused("is outside the runs folder"):
        evaluate_tab.evaluate(str(outside_run), ["heldout"], roots=roots)
    for path in outside_paths(tmp_path):
        with refused():
            evaluate_tab.evaluate(str(mine), [], data_path=path, roots=roots)
    with refused("is outside the runs folder"):
        export_tab.export_run(str(outside_run), str(tmp_path / "runs" / "out"), roots=roots)
    for out in (tmp_path / "outside" / "merged", tmp_path / "uploads" / "merged", tmp_path / "data" / "linked-folder"):
        with refused():
            export_tab.export_run(str(mine), str(out), roots=roots)
    assert sorted(os.listdir(tmp_path / "outside")) == ["run", "secret.jsonl"]  # nothing was written there


def test_the_served_app_refuses_the_same_with_and_without_auth(place):
    from gradio_client import Client

    from sftune.webui import launch

    tmp_path, _ = place
    secret = str(tmp_path / "outside" / "secret.jsonl")
    other = write_run(tmp_path / "outside" / "run", secret)
    (other / jobs.LOG_FILE).write_text("SECRET LOG\n")
    for auth in (None, ("me", "s3cret")):
        app, url = launch(tmp_path / "runs", data_roots=[tmp_path / "data"], host="127.0.0.1", auth=auth,
                          block=False)
        try:
            client = Client(url, verbose=False, analytics_enabled=False, auth=auth)
            for path in (secret, "/etc/passwd"):
                with pytest.raises(Exception, match=OUTSIDE):
                    client.predict(path, "(detect)", api_name="/check")
            with pytest.raises(Exception, match="is outside the runs folder"):
                client.predict(str(other), api_name="/resume")
            status, *_, log = client.predict(str(other), api_name="/progress")
            assert "is outside the runs folder" in status and "SECRET" not in log
            summary, *_ = client.predict(str(tmp_path / "data" / "ok.jsonl"), "(detect)", api_name="/check")
            assert "1 valid" in summary
        finally:
            app.close()
    assert not (other / jobs.PROCESS_FILE).exists()  # nothing was started there


def test_a_data_root_that_does_not_exist_is_a_user_error(tmp_path):
    from typer.testing import CliRunner

    from sftune.cli import app

    result = CliRunner().invoke(app, ["webui", "--runs", str(tmp_path / "runs"), "--data-root", str(tmp_path / "no")])
    output = " ".join(result.output.split())  # the console wraps long lines
    assert result.exit_code == 2 and f"--data-root {tmp_path / 'no'}: no such folder" in output
