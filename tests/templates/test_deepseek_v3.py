"""DeepSeek-V3 and V3.1 through the model's own template: multi-turn chats, with and without a system message and
with V3.1's thinking off and on, train each reply and <｜end▁of▁sentence｜>; V3.1's think markers and reasoning.

V3's text is TRL's verbatim copy; V3.1's is llama.cpp's re-indented copy (tests/fixtures/templates/README.md).
The tokenizers are stand-ins with DeepSeek's special tokens (test_official_spans.stand_in).
"""

from __future__ import annotations

import pytest

from sftune import templates
from sftune.encode import IGNORE, REASONING, encode
from sftune.encode.labels import render_spans
from sftune.templates import stops
from tests.templates.chats import FIXTURES
from tests.templates.test_official_spans import PLAIN, SYSTEM, THINK, stand_in

EOS = "<｜end▁of▁sentence｜>"
REFERENCE = "Hello! How can I help?" + EOS + "It is 4." + EOS  # each reply and its end-of-turn marker


def _trained(template, chat, **options) -> str:
    text, spans = render_spans(template, templates.normalize_messages(chat), None, "assistant", **options)
    return "".join(text[a:b] for a, b, _ in spans)


def _audited(smollm2_tokenizer, fixture: str, source: str | None = None):
    tokenizer, eos_ids = stand_in(smollm2_tokenizer, fixture)
    if source is not None:
        tokenizer.chat_template = source
    return tokenizer, stops.audit(templates.get("tokenizer", tokenizer), tokenizer, eos_ids)


@pytest.mark.parametrize("thinking", [None, False, True])
@pytest.mark.parametrize("system", [False, True])
@pytest.mark.parametrize("fixture", ["deepseekv3", "deepseek_v3.1"])
def test_multi_turn_chats_train_each_reply_and_its_stop(fixture, system, thinking, smollm2_tokenizer):
    """The training render is the official one whatever `thinking` is (V3.1 switches only its generation
    prompt; V3 ignores it), so the trained characters and tokens are each reply and its stop."""
    tokenizer, checked = _audited(smollm2_tokenizer, fixture)
    chat = ([SYSTEM] if system else []) + PLAIN
    assert checked.appended is None and checked.stops == [EOS]
    official = tokenizer.apply_chat_template(chat, tokenize=False, **({} if thinking is None else
                                                                      {"thinking": thinking}))
    assert checked.template.render(chat) == official
    assert official.startswith("<｜begin▁of▁sentence｜>" + ("You are terse." if system else "") + "<｜User｜>Hi there!")
    assert _trained(checked.template, chat) == REFERENCE
    labels = encode(chat, tokenizer, checked.template)["labels"]
    assert tokenizer.decode([label for label in labels if label != IGNORE]) == REFERENCE
    assert labels[-1] == tokenizer.convert_tokens_to_ids(EOS)


def test_v31_generation_prompt_closes_the_think_block_unless_thinking(smollm2_tokenizer):
    """V3.1's template defaults to non-thinking: the prompt ends "</think>", framing the model never writes,
    so a reply's trained text starts at its answer; with thinking on the prompt ends "<think>"."""
    tokenizer, checked = _audited(smollm2_tokenizer, "deepseek_v3.1")
    prompt = "<｜begin▁of▁sentence｜><｜User｜>Hi there!<｜Assistant｜>"
    assert tokenizer.apply_chat_template(PLAIN[:1], tokenize=False, add_generation_prompt=True,
                                         thinking=True) == prompt + "<think>"
    assert checked.template.render(PLAIN[:1], add_generation_prompt=True) == prompt + "</think>" == \
        tokenizer.apply_chat_template(PLAIN[:1], tokenize=False, add_generation_prompt=True)
    segments = checked.template.segments(PLAIN)
    assert ("<｜Assistant｜></think>", 1, False) in segments and ("Hello! How can I help?" + EOS, 1, True) in segments


def test_v31_with_thinking_on_by_default_trains_no_empty_think_block_unless_asked(smollm2_tokenizer):
    """A tokenizer whose V3.1 template thinks by default (the same text, `thinking` set first): the prompt opens
    <think>, so the "</think>" that opens each earlier reply is an empty think block of the model's own turn,
    trained only with train_empty_think, as Qwen3.5's and GLM's are."""
    source = "{%- set thinking = true -%}" + (FIXTURES / "deepseek_v3.1.jinja").read_text(encoding="utf-8")
    tokenizer, checked = _audited(smollm2_tokenizer, "deepseek_v3.1", source)
    assert checked.template.render(PLAIN[:1], add_generation_prompt=True).endswith("<｜Assistant｜><think>")
    assert checked.template.render(PLAIN) == tokenizer.apply_chat_template(PLAIN, tokenize=False)
    assert _trained(checked.template, PLAIN) == REFERENCE
    assert _trained(checked.template, PLAIN, train_empty_think=True) == \
        "</think>Hello! How can I help?" + EOS + "</think>It is 4." + EOS


@pytest.mark.parametrize("option", REASONING)
@pytest.mark.parametrize("fixture", ["deepseekv3", "deepseek_v3.1"])
def test_reasoning_the_template_drops_is_never_trained(fixture, option, smollm2_tokenizer):
    """Both templates keep only what follows a reply's </think>, the last reply's too: whatever the reasoning
    option, the reasoning is not in the text and nothing of it is trained; the answer is, as rendered."""
    tokenizer, checked = _audited(smollm2_tokenizer, fixture)
    chat = [SYSTEM] + THINK
    text = checked.template.render(chat)
    assert text == tokenizer.apply_chat_template(chat, tokenize=False)
    assert "Greet back" not in text and "Add them" not in text
    assert _trained(checked.template, chat, reasoning=option) == \
        "\n\nHello! How can I help?" + EOS + "\n\nIt is 4." + EOS


@pytest.mark.parametrize("fixture,drops", [("deepseekv3", True), ("deepseek_v3.1", True), ("deepseek_r1", False),
                                           ("qwen3", False), ("gpt-oss", False), ("chatml", False)])
def test_a_template_that_drops_the_last_replys_reasoning_is_found_by_rendering(fixture, drops):
    """Any template, found by rendering: V3 / V3.1 write only what follows </think> (their twin-less jinja), R1's
    official text renders through its twin, which keeps the last reply's; a plain template writes it as text."""
    source = (FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8")
    assert templates.get({"jinja": source}).drops_reasoning is drops
    assert templates.get({"jinja": source}, None, {"thinking": True} if "v3.1" in fixture else {}).drops_reasoning \
        is drops


def test_reasoning_a_template_drops_is_said_with_its_count_and_the_fix(smollm2_tokenizer):
    tokenizer, checked = _audited(smollm2_tokenizer, "deepseek_v3.1")
    chats = [[SYSTEM] + THINK, PLAIN, [PLAIN[0], {"role": "assistant", "content": "<think>\n\n</think>\n\nHi."}]]
    note = templates.dropped_reasoning(checked.template, chats)
    assert "2 of 5 replies hold reasoning, and none of it is trained" in note and "deepseek_r1" in note
    assert templates.dropped_reasoning(checked.template, [PLAIN]) is None  # no reasoning in the data: nothing lost
    assert templates.dropped_reasoning(templates.get("qwen3"), chats) is None


def test_data_check_says_the_models_template_drops_the_reasoning_not_that_it_trains_it(smollm2_tokenizer, tmp_path):
    """`data check --reasoning --model M` on a DeepSeek-V3 template: reasoning_dropped_by_template, never
    think_in_plain_template (which would say it is trained as reply text)."""
    import json

    from typer.testing import CliRunner

    from sftune.cli import app

    tokenizer, _ = stand_in(smollm2_tokenizer, "deepseekv3")
    tokenizer.save_pretrained(tmp_path / "model")
    data = tmp_path / "think.jsonl"
    data.write_text(json.dumps({"messages": [SYSTEM] + THINK}) + "\n", encoding="utf-8")
    out = CliRunner().invoke(app, ["data", "check", str(data), "--reasoning", "--model", str(tmp_path / "model"),
                                   "--json"])
    assert out.exit_code == 0, out.output
    kinds = json.loads(out.output.strip().splitlines()[-1])["reasoning"]["kinds"]
    assert kinds["reasoning_dropped_by_template"]["count"] == 2 and kinds["think_in_plain_template"]["count"] == 0
    assert kinds["dropped_reasoning"]["count"] == 0
