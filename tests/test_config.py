"""The typed configuration: YAML sections, key=value overrides, did-you-mean errors, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sftune import config
from sftune.config import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_sections_and_defaults(tmp_path):
    cfg = config.load(write(tmp_path, "data:\n  train: a.jsonl\nmethod:\n  name: lora\n  r: 8\n"))
    assert cfg.data.train == ["a.jsonl"]
    assert cfg.method.name == "lora" and cfg.method.r == 8
    assert cfg.train.grad_accum == 1 and cfg.data.packing is True
    assert cfg.model.name == "smollm2-135m-instruct"


def test_overrides_nested_and_typed(tmp_path):
    path = write(tmp_path, "train:\n  lr: 2.0e-4\n")
    cfg = config.load(path, ["train.lr=1e-4", "method.r=4", "data.train=[x.jsonl, y.jsonl]", "eval.steps=10",
                             "method.target_modules=[q_proj, v_proj]", "train.max_steps=3"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.method.r == 4
    assert cfg.method.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.train == ["x.jsonl", "y.jsonl"]
    assert cfg.eval.steps == 10 and cfg.train.max_steps == 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("trian.lr=1", "unknown key 'trian'. did you mean 'train'"),
        ("train.learning_rat=1", "unknown key 'train.learning_rat'"),
        ("train.lrr=1", "did you mean 'train.lr'"),
        ("method.rr=4", "did you mean 'method.r'"),
        ("output.dri=x", "did you mean 'output.dir'"),
    ],
)
def test_unknown_key_suggests_the_closest(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        config.load(write(tmp_path, ""), [override])


def test_unknown_key_in_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.yaml: unknown key 'data\.max_length'\. did you mean 'data\.max_len'"):
        config.load(write(tmp_path, "data:\n  max_length: 10\n"))


def test_bad_values_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        config.load(write(tmp_path, ""), ["train.batch_size=0"])
    with pytest.raises(ConfigError, match=r"train\.precision"):
        config.load(write(tmp_path, ""), ["train.precision=fp8"])
    with pytest.raises(ConfigError, match="key=value"):
        config.load(write(tmp_path, ""), ["train.lr"])
    with pytest.raises(ConfigError, match="no such configuration file"):
        config.load(tmp_path / "missing.yaml")


def test_resolved_yaml_round_trips(tmp_path):
    cfg = config.load(write(tmp_path, "method:\n  name: qlora\n  r: 8\n"), ["train.lr=3e-4"])
    text = config.to_yaml(cfg)
    assert "num_virtual_tokens" not in text  # only the chosen method's options
    again = config.load(yaml.safe_load(text))
    assert again.model_dump() == cfg.model_dump()  # the settings (not where each path was named)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_loads(path):
    cfg = config.load(path)
    assert cfg.data.train


def test_each_method_has_an_example():
    from sftune.config import OPTIONS

    names = {config.load(p).method.name for p in EXAMPLES.glob("*.yaml")}
    assert names == set(OPTIONS)


def test_demo_default_is_its_example():
    """One file, not two kept equal: the example is a link to the configuration the demo reads."""
    from sftune.demo import DEFAULT_CONFIG

    assert (EXAMPLES / "demo-smollm2.yaml").resolve() == Path(str(DEFAULT_CONFIG)).resolve()


def test_print_config_cli(tmp_path):
    from typer.testing import CliRunner

    from sftune.cli import app

    path = write(tmp_path, "data:\n  train: a.jsonl\n")
    result = CliRunner().invoke(app, ["train", str(path), "train.lr=5e-5", "--print-config"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["train"]["lr"] == pytest.approx(5e-5)
    assert printed["data"]["train"] == ["a.jsonl"]
    bad = CliRunner().invoke(app, ["train", str(path), "train.lrr=1"])
    assert bad.exit_code == 2 and "did you mean 'train.lr'" in bad.output


def test_sftune_train_is_a_lazy_function():
    import subprocess
    import sys

    code = ("import sys, sftune; assert 'torch' not in sys.modules; "
            "from sftune import train; import sftune.training.recipe as m; import inspect; "
            "assert inspect.isfunction(train) and train is m.train and sftune.train is m.train")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_relative_paths_in_a_file_resolve_against_its_folder(tmp_path, monkeypatch):
    """A config travels: its data, model folder and checkpoint are found next to it from any working directory;
    output.dir, which the run writes, stays relative to the working directory."""
    folder = tmp_path / "project" / "configs"
    (folder / "data").mkdir(parents=True)
    (folder / "model").mkdir()
    (folder / "ckpt").mkdir()
    for name in ("train.jsonl", "eval.jsonl", "more.jsonl"):
        (folder / "data" / name).write_text("{}\n")
    path = folder / "run.yaml"
    path.write_text("model:\n  name: ./model\ndata:\n  train: data/train.jsonl\n  eval:\n    - data/eval.jsonl\n"
                    "    - {path: data/*.jsonl, weight: 2}\ntrain:\n  resume_from: ckpt\noutput:\n  dir: runs/mine\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = config.load(path)
    assert cfg.model.name == str(folder / "model")
    assert cfg.data.train == [str(folder / "data" / "train.jsonl")]
    assert cfg.data.eval[0] == str(folder / "data" / "eval.jsonl")
    assert cfg.data.eval[1].path == str(folder / "data" / "*.jsonl") and cfg.data.eval[1].weight == 2
    assert cfg.train.resume_from == str(folder / "ckpt")
    assert cfg.output.dir == str(elsewhere / "runs" / "mine")
    again = config.load(yaml.safe_load(config.to_yaml(cfg)))  # the run folder's config.yaml: absolute paths
    assert again.model_dump() == cfg.model_dump()


def test_overrides_resolve_against_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.jsonl").write_text("{}\n")  # next to the config: not the one meant
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "mine.jsonl").write_text("{}\n")
    path = tmp_path / "configs" / "run.yaml"
    path.write_text("data:\n  train: mine.jsonl\n")
    monkeypatch.chdir(tmp_path / "work")
    assert config.load(path).data.train == [str(tmp_path / "configs" / "mine.jsonl")]
    cfg = config.load(path, ["data.train=mine.jsonl", "output.dir=out"])
    assert cfg.data.train == [str(tmp_path / "work" / "mine.jsonl")]
    assert cfg.output.dir == str(tmp_path / "work" / "out")
    cfg = config.load(path, ["data={train: [{path: mine.jsonl, ratio: 1.0}]}"])
    assert cfg.data.train[0].path == str(tmp_path / "work" / "mine.jsonl")


def test_names_that_are_not_paths_pass_through(tmp_path, monkeypatch):
    """Embedded model names, hub ids and files found nowhere stay as written (reading them names the key);
    a path written for the working directory (configs before this rule) is still found there."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    path = tmp_path / "configs" / "run.yaml"
    path.write_text("model:\n  name: Qwen/Qwen2.5-0.5B-Instruct\ndata:\n  train: data/train.jsonl\n"
                    "  eval: data/missing.jsonl\n")
    monkeypatch.chdir(tmp_path)
    cfg = config.load(path)
    assert cfg.model.name == "Qwen/Qwen2.5-0.5B-Instruct"
    assert cfg.data.train == [str(tmp_path / "data" / "train.jsonl")]
    assert cfg.data.eval == ["data/missing.jsonl"]
    assert config.load(path, ["model.name=smollm2-135m-instruct"]).model.name == "smollm2-135m-instruct"


def test_data_eval_null_on_the_command_line_means_none(tmp_path):
    path = write(tmp_path, "data:\n  train: a.jsonl\n  eval: b.jsonl\n")
    assert config.load(path, ["data.eval=null"]).data.eval == []
    assert config.load(path, ["data.eval=[]"]).data.eval == []


@pytest.mark.parametrize("override, origin", [(None, "named in {path}"), ("data.eval=nope.jsonl", "command line")])
def test_a_missing_data_file_names_its_key_and_where_it_was_set(tmp_path, monkeypatch, override, origin):
    from sftune.data.entries import read_entries

    (tmp_path / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, '
                                          '{"role": "assistant", "content": "hello"}]}\n')
    path = write(tmp_path, "data:\n  train: train.jsonl\n  eval: data/eval.jsonl\n")
    monkeypatch.chdir(tmp_path.parent)
    cfg = config.load(path, [override] if override else [])
    assert len(read_entries(cfg, "train", {})) == 1
    with pytest.raises(ConfigError) as err:
        read_entries(cfg, "eval", {})
    message = str(err.value)
    assert message.startswith("data.eval: ") and "no such file" in message
    assert origin.format(path=path) in message


def test_print_config_shows_absolute_paths(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sftune.cli import app

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "a.jsonl").write_text("{}\n")
    (tmp_path / "b.jsonl").write_text("{}\n")
    path = tmp_path / "configs" / "run.yaml"
    path.write_text("data:\n  train: a.jsonl\noutput:\n  dir: runs/a\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", str(path), "data.eval=b.jsonl", "--print-config"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["data"]["train"] == [str(tmp_path / "configs" / "a.jsonl")]
    assert printed["data"]["eval"] == [str(tmp_path / "b.jsonl")]
    assert printed["output"]["dir"] == str(tmp_path / "runs" / "a")


def test_a_copied_example_runs_with_only_data_train_changed(tmp_path, monkeypatch):
    """The examples name no held-out file the user did not choose: a copy elsewhere reads the user's file only."""
    from sftune.data.entries import read_entries

    copy = tmp_path / "mine" / "lora.yaml"
    copy.parent.mkdir()
    copy.write_text((EXAMPLES / "lora.yaml").read_text())
    (tmp_path / "my.jsonl").write_text((EXAMPLES / "data" / "train.jsonl").read_text())
    monkeypatch.chdir(tmp_path)
    cfg = config.load(copy, ["data.train=my.jsonl"])
    assert cfg.data.train == [str(tmp_path / "my.jsonl")] and cfg.data.eval == [] and cfg.data.val_ratio > 0
    assert len(read_entries(cfg, "train", {})) == 320
