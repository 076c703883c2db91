"""sftune data inspect on Chinese data with SmolLM2's byte-level BPE: characters whole (no U+FFFD), trained text
marked in plain characters when the output is not a terminal, and in colour when it is."""

from __future__ import annotations

import io
import json
import re

from rich.console import Console
from typer.testing import CliRunner

from sftune import models, templates
from sftune.cli import app
from sftune.data import read
from sftune.encode import IGNORE, encode, explain

# The first record of LLaMA-Factory's alpaca_zh demo, shortened: nearly every character is 2 or 3 byte-level tokens.
ALPACA_ZH = {"instruction": "保持健康的三个提示。", "input": "",
             "output": "以下是保持健康的三个提示：\n\n1. 保持身体活动。每天做适当的身体运动，如散步、跑步或游泳。\n\n"
                       "2. 均衡饮食。每天食用新鲜的蔬菜、水果、全谷物和脂肪含量低的蛋白质食物。"}
TRAINED = ALPACA_ZH["output"] + "<|im_end|>"

runner = CliRunner()


def inspect(*args: str):
    result = runner.invoke(app, ["data", "inspect", *args, "--model", models.DEFAULT_MODEL], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


def test_explain_keeps_every_character_whole(jsonl, smollm2_tokenizer):
    conversation = next(read([str(jsonl([ALPACA_ZH]))]))
    result = encode(conversation, smollm2_tokenizer, templates.default_for(smollm2_tokenizer))
    assert "\ufffd" in "".join(smollm2_tokenizer.decode([t]) for t in result["input_ids"])  # byte by byte: broken
    for per_token in (False, True):
        pieces = explain(result, smollm2_tokenizer, per_token=per_token)
        assert "".join(text for text, _ in pieces) == smollm2_tokenizer.decode(result["input_ids"])
        assert "\ufffd" not in "".join(text for text, _ in pieces)
        assert "".join(text for text, kind in pieces if kind == "trained") == TRAINED
    assert len(explain(result, smollm2_tokenizer, per_token=True)) > 3 * len(explain(result, smollm2_tokenizer))
    trained = [t for t, label in zip(result["input_ids"], result["labels"]) if label != IGNORE]
    assert smollm2_tokenizer.decode(trained) == TRAINED


def test_piped_output_marks_exactly_the_trained_text(jsonl):
    output = inspect(str(jsonl([ALPACA_ZH])))  # CliRunner's output is not a terminal: no colours
    assert "\ufffd" not in output and "\x1b[" not in output
    assert re.findall(r"⟦(.*?)⟧", output, re.S) == [TRAINED, "trained"]  # the reply, then the legend
    record = output.split("\n", 2)[2]
    assert record.startswith("<|im_start|>system\n") and f"<|im_start|>user\n{ALPACA_ZH['instruction']}<|im_end|>\n" \
        f"<|im_start|>assistant\n⟦{TRAINED}⟧\n" in record
    assert "⟦ ⟧" in runner.invoke(app, ["data", "inspect", "--help"], env={"COLUMNS": "200"}).output


def test_plain_lists_whole_characters_one_token_per_line(jsonl):
    output = inspect(str(jsonl([ALPACA_ZH])), "--plain")
    lines = output.splitlines()
    assert "\ufffd" not in output
    assert "".join(json.loads(line.split("\t", 1)[1]) for line in lines if line.startswith("TRAIN")) == TRAINED
    assert len([line for line in lines if line.startswith("TRAIN")]) > 20  # tokens, not one run


def test_a_terminal_gets_colours_and_no_marks(jsonl, monkeypatch):
    import sftune.cli.data as data_cli

    terminal = io.StringIO()
    monkeypatch.setattr(data_cli, "console", Console(file=terminal, force_terminal=True, color_system="truecolor",
                                                     width=200))
    inspect(str(jsonl([ALPACA_ZH])))
    shown = terminal.getvalue()
    assert "⟦" not in shown and "\ufffd" not in shown and "\x1b[1;32m" in shown  # bold green
    assert ALPACA_ZH["output"].split("\n")[0] in re.sub(r"\x1b\[[0-9;]*m", "", shown)


def test_inspect_says_when_the_template_drops_the_reasoning_and_passes_template_kwargs(jsonl, smollm2_tokenizer,
                                                                                      tmp_path):
    """A DeepSeek-V3.1 template (a tokenizer folder): the records shown lose their reasoning, and inspect says how
    many replies, with or without --template-kwargs, which reaches the template (a misspelt switch is refused)."""
    from tests.templates.test_official_spans import stand_in

    tokenizer, _ = stand_in(smollm2_tokenizer, "deepseek_v3.1")
    tokenizer.save_pretrained(tmp_path / "model")
    data = jsonl([{"messages": [{"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "<think>\nGreet.\n</think>\n\nHello."}]}])
    for kwargs in ([], ["--template-kwargs", '{"thinking": true}']):
        result = runner.invoke(app, ["data", "inspect", str(data), "--model", str(tmp_path / "model"), *kwargs],
                               env={"COLUMNS": "200", "NO_COLOR": "1"})
        assert result.exit_code == 0, result.output
        assert "Greet." not in result.stdout
        assert "drops every reply's reasoning" in result.output and "1 of 1 replies hold reasoning" in result.output
    bad = runner.invoke(app, ["data", "inspect", str(data), "--model", str(tmp_path / "model"),
                              "--template-kwargs", '{"thinkng": true}'])
    assert bad.exit_code == 2 and "never reads 'thinkng'" in bad.output


def test_inspect_shows_what_a_builtins_switch_changes(jsonl, smollm2_tokenizer, tmp_path):
    """--template-kwargs on a built-in: the header names the switches, and the records show their effect (GLM-4.5's
    /nothink and the prompt's empty think block, Nemotron 3 Super's effort line), outside the trained text."""
    from tests.templates.test_official_spans import stand_in

    data = jsonl([{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}])
    for fixture, template, kwargs, shown in [
            ("glm4.5", "glm4.5", '{"enable_thinking": false}', "<|user|>\nHi/nothink<|assistant|>\n<think></think>⟦\n"
                                                                "Hello.<|user|>⟧"),
            ("nemotron3_nano", "nemotron3_super", '{"low_effort": true}',
             "<|im_start|>user\nHi\n\n{reasoning effort: low}<|im_end|>\n<|im_start|>assistant\n<think></think>⟦"
             "Hello.<|im_end|>⟧"),
    ]:
        tokenizer, _ = stand_in(smollm2_tokenizer, fixture)
        tokenizer.save_pretrained(tmp_path / fixture)
        result = runner.invoke(app, ["data", "inspect", str(data), "--model", str(tmp_path / fixture), "--template",
                                     template, "--template-kwargs", kwargs],
                               env={"COLUMNS": "200", "NO_COLOR": "1"})
        assert result.exit_code == 0, result.output
        assert f"template: {template} {kwargs}" in result.stdout and shown in result.stdout, result.stdout
