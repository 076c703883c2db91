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
    assert again == cfg


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_loads(path):
    cfg = config.load(path)
    assert cfg.data.train


def test_each_method_has_an_example():
    from sftune.methods import OPTIONS

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
