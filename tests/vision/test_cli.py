"""`sftune data check` / `inspect` on image data: images counted, each image shown as one masked run."""

from __future__ import annotations

from typer.testing import CliRunner

from sftune.cli import app
from sftune.vision import shapes

runner = CliRunner()


def test_check_counts_images(tmp_path):
    data = shapes.write(tmp_path, 5, seed=0)
    result = runner.invoke(app, ["data", "check", str(data)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "images: 5" in result.output


def test_inspect_shows_each_image_as_one_masked_run(tmp_path, vlm_folder):
    data = shapes.write(tmp_path, 2, seed=0)
    result = runner.invoke(app, ["data", "inspect", str(data), "--model", str(vlm_folder("llava")), "--plain",
                                 "--limit", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    image_lines = [line for line in lines if "[image" in line]
    assert image_lines == ['mask \t"[image 1: 16 tokens]"']  # 32x32 pixels / 8x8 patches
    trained = "".join(line.split("\t", 1)[1].strip('"') for line in lines if line.startswith("TRAIN"))
    answer = (tmp_path / "train.jsonl").read_text().splitlines()[0].rsplit('"content": "', 1)[1].split('"')[0]
    assert trained.startswith(answer) and "<|im_end|>" in trained


def test_inspect_refuses_image_records_with_a_text_only_model_as_the_web_ui_does(tmp_path):
    data = shapes.write(tmp_path, 2, seed=0)
    result = runner.invoke(app, ["data", "inspect", str(data), "--plain", "--limit", "1"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "has images, but" in result.output and "is a text-only model" in result.output
