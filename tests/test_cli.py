from typer.testing import CliRunner

from sftune import __version__
from sftune.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "models" in result.output


def test_models_lists_both_embedded_models():
    result = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "smollm2-135m-instruct" in result.output
    assert "gemma3-270m" in result.output
    assert "Apache-2.0" in result.output


def test_demo_method_option_overrides_method_rate_and_folder(monkeypatch):
    """`sftune demo --method M train.max_steps=2`: the override-only argument is not taken for a config
    file, and the method, its demo learning rate and its own run folder reach the configuration."""
    from sftune import demo

    seen = {}
    monkeypatch.setattr(demo, "run", lambda config, overrides, method=None, console=None: seen.update(
        config=config, overrides=overrides, method=method))
    result = runner.invoke(app, ["demo", "--method", "full", "train.max_steps=2"])
    assert result.exit_code == 0, result.output
    assert seen == {"config": None, "overrides": ["train.max_steps=2"], "method": "full"}
    assert demo.method_overrides("full") == ["method.name=full", "train.lr=5e-05", "output.dir=runs/demo-full"]


def test_demo_trains_on_its_data_by_absolute_paths(tmp_path, monkeypatch):
    """The demo writes its data after reading its config: the run is then given the files' absolute paths, so
    the run folder's config.yaml names them from any working directory (evaluate, export --check)."""
    import pytest

    from sftune import demo, training

    class Stop(Exception):
        pass

    def train(cfg, console=None):
        seen["cfg"] = cfg
        raise Stop

    seen = {}
    monkeypatch.setattr(training, "train", train)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Stop):
        demo.run()
    data = seen["cfg"].data
    assert data.train == [str(tmp_path / "runs" / "demo-data" / "train.jsonl")]
    assert data.eval == [str(tmp_path / "runs" / "demo-data" / "eval.jsonl")]
    assert seen["cfg"].output.dir == str(tmp_path / "runs" / "demo")


def test_demo_unknown_method_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo", "--method", "lorra"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "unknown method 'lorra'" in result.output and "qlora" in result.output


def test_eval_help_lists_the_metrics_of_each_task():
    from sftune.evaluate.benchmarks import METRICS, TASKS
    from sftune.evaluate.data_task import METRICS as DATA_METRICS

    assert set(METRICS) == set(TASKS)
    result = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "1000"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for name, metric in METRICS.items():
        assert f"{name} ({metric})" in text
    assert "heldout" in text and "data:PATH" in text
    for metric in DATA_METRICS:
        assert metric in text
    for metric in ("accuracy", "exact_match", "pass@1", "bleu", "rougeL", "perplexity"):
        assert metric in text
