"""Getting a template (by name, from a dict, the model's own), saving it into a tokenizer, and the CLI."""

from __future__ import annotations

import json

import pytest

from sftune import templates
from tests.templates.chats import CHATS, PLAIN, SYSTEM, prompt_part



def test_tokenizer_template_is_the_models_own(smollm2_tokenizer):
    """The `tokenizer` template and the `smollm2` built-in both render what SmolLM2's own template does."""
    for template in (templates.get("tokenizer", smollm2_tokenizer), templates.get("smollm2", smollm2_tokenizer)):
        for chat in CHATS:
            for prompt in (False, True):
                chat = prompt_part(chat) if prompt else chat
                assert template.render(chat, add_generation_prompt=prompt) == smollm2_tokenizer.apply_chat_template(
                    chat, tokenize=False, add_generation_prompt=prompt)


def test_tokenizer_template_needs_a_chat_template():
    with pytest.raises(templates.TemplateError, match="has none"):
        templates.get("tokenizer")


def test_no_name_is_the_models_default(smollm2_tokenizer):
    """get(None, tokenizer) (an unset data.template or --template) is the model's own template, ChatML without one."""
    assert templates.get(None, smollm2_tokenizer).name == templates.default_for(smollm2_tokenizer).name == "tokenizer"
    assert templates.get(None, smollm2_tokenizer).render(PLAIN) == smollm2_tokenizer.apply_chat_template(
        PLAIN, tokenize=False)
    assert templates.get(None).name == "chatml"


def test_save_to_tokenizer_makes_inference_render_the_training_template(smollm2_tokenizer):
    import copy

    tokenizer = copy.deepcopy(smollm2_tokenizer)
    template = templates.get("qwen2.5", tokenizer)
    templates.save_to_tokenizer(template, tokenizer)
    assert tokenizer.apply_chat_template(SYSTEM, tokenize=False) == template.render(SYSTEM)
    ids = tokenizer.apply_chat_template(PLAIN[:1], add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(ids) == tokenizer(template.render(PLAIN[:1], add_generation_prompt=True), add_special_tokens=False)["input_ids"]


def test_user_defined_template_and_errors():
    custom = templates.get({"name": "mine", "user": "Q: {content}\n", "assistant": "A: {content}\n\n",
                            "generation_prompt": "A:", "end": "\n"})
    assert custom.render(PLAIN[:2]) == "Q: Hi there!\nA: Hello! How can I help?\n\n"
    jinja = templates.get({"name": "j", "jinja": "{% for m in messages %}{{ m['content'] }};{% endfor %}"})
    assert jinja.render(PLAIN[:2]) == "Hi there!;Hello! How can I help?;"
    with pytest.raises(templates.TemplateError, match="missing assistant"):
        templates.get({"user": "{content}"})
    with pytest.raises(templates.TemplateError, match="unknown template 'nope'"):
        templates.get("nope")
    with pytest.raises(templates.TemplateError, match="only first"):
        templates.get("gemma").render(PLAIN + [{"role": "system", "content": "late"}])
    assert set(templates.BUILTINS) | {"tokenizer"} == set(templates.names())


def test_cli_template_render_and_data_inspect(tmp_path):
    from typer.testing import CliRunner

    from sftune.cli import app

    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": SYSTEM[:3]}) + "\n")
    runner = CliRunner()
    out = runner.invoke(app, ["template", "render", "--template", "qwen2.5", str(data)])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.strip()) == {"text": templates.get("qwen2.5").render(SYSTEM[:3])}
    out = runner.invoke(app, ["template", "render", "-t", "llama3", "--generation-prompt", str(data)])
    assert json.loads(out.output.strip())["text"] == templates.get("llama3").render(SYSTEM[:2], add_generation_prompt=True)
    out = runner.invoke(app, ["data", "inspect", str(data), "--plain"])
    assert out.exit_code == 0, out.output
    trained = [line.split("\t", 1)[1] for line in out.output.splitlines() if line.startswith("TRAIN")]
    assert "".join(json.loads(t) for t in trained) == "Hello! How can I help?<|im_end|>"
    assert runner.invoke(app, ["template", "list"]).exit_code == 0


def test_stop_is_the_end_of_turn_token_of_the_template(smollm2_tokenizer):
    """Generation stops where training taught the model to: the template's end-of-turn token and EOS."""
    im_end = smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert templates.get("chatml", smollm2_tokenizer).stop == "<|im_end|>"
    assert templates.get("tokenizer", smollm2_tokenizer).stop_token_ids(smollm2_tokenizer) == [im_end]
    assert templates.get("gemma").stop == "<end_of_turn>"
    assert templates.get("llama2").stop == "</s>"
    eot = templates.get("zephyr", smollm2_tokenizer)
    assert eot.stop == smollm2_tokenizer.eos_token and eot.stop_token_ids(smollm2_tokenizer) == [im_end]
