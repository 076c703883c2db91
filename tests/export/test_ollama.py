"""The Ollama Modelfile restates the training template in Go template syntax, with every stop."""

from __future__ import annotations

import re

import pytest

from sftune import templates
from sftune.export.ollama import modelfile


def test_modelfile_beside_the_gguf(exported):
    text = (exported / "gguf" / "Modelfile").read_text(encoding="utf-8")
    assert text.startswith("FROM ./model.gguf\n") and (exported / "gguf" / "model.gguf").is_file()
    assert 'PARAMETER stop "<|im_end|>"' in text
    # SmolLM2's template: ChatML turns, and its default system prompt when the chat has none
    body = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert "{{ else }}<|im_start|>system\nYou are a helpful AI assistant named SmolLM" in body
    assert '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n' in body
    assert body.endswith("{{ end }}{{ end }}<|im_start|>assistant\n")


def test_gemma_folds_the_system_prompt_into_the_first_user_turn(smollm2_tokenizer):
    template = templates.get("gemma", smollm2_tokenizer)
    text = modelfile(template, smollm2_tokenizer, template.stop_token_ids(smollm2_tokenizer))
    assert "<start_of_turn>user\n{{ if and $first $system }}{{ $system }}\n\n{{ .Content }}" in text
    assert 'PARAMETER stop "<end_of_turn>"' in text
    # SmolLM2's tokenizer adds no BOS itself, so the template writes the BOS text, as training rendered it
    assert template.render([{"role": "user", "content": "x"}]).startswith(smollm2_tokenizer.bos_token)
    assert '}}<|im_start|>{{ $first := true }}' in text


def test_llama3_layout_and_unknown_template_fallback(smollm2_tokenizer):
    template = templates.get("llama3", smollm2_tokenizer)
    text = modelfile(template, smollm2_tokenizer, [smollm2_tokenizer.eos_token_id])
    assert "<|start_header_id|>user<|end_header_id|>\n\n{{ .Content }}<|eot_id|>" in text
    assert 'PARAMETER stop "<|eot_id|>"' in text and 'PARAMETER stop "<|im_end|>"' in text
    custom = templates.get({"jinja": "{% for m in messages %}{{ m.content }}{% endfor %}"}, smollm2_tokenizer)
    assert "plain fallback" in modelfile(custom, smollm2_tokenizer, [2])


def test_a_family_layout_gets_the_fallback_said_so_and_every_stop(smollm2_tokenizer):
    """GLM-4.5's turns are not restated in Go: the Modelfile says so, and stops at its next headers too."""
    template = templates.get("glm4.5", smollm2_tokenizer)
    text = modelfile(template, smollm2_tokenizer, template.stop_token_ids(smollm2_tokenizer))
    assert "glm4.5 layout that this Go TEMPLATE does not restate" in text
    assert 'PARAMETER stop "<|user|>"' in text and 'PARAMETER stop "<|observation|>"' in text


@pytest.mark.parametrize("name,stop", [("mistral_v7_tekken", "</s>"), ("magistral", "</s>"), ("llama4", "<|eot|>")])
def test_llama4_and_mistral_plain_turns_are_restated_with_their_stop(smollm2_tokenizer, name, stop):
    """Their plain chat is the built-in's own render (system, user, reply, generation prompt), the Go actions
    standing where the contents go; what is not restated (tool calls) is said; the stop is the family's."""
    template = templates.get(name)  # the family's own BOS / EOS text (no tokenizer of it here)
    text = modelfile(template, smollm2_tokenizer, [])
    body = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    restated = re.sub(r"\{\{ (?!\$system \}\}|\.Content \}\})[^}]*\}\}", "", body)
    rendered = template.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                                {"role": "assistant", "content": "Hello!"}], add_generation_prompt=True)
    assert restated == rendered.replace("Be brief.", "{{ $system }}").replace("Hi there", "{{ .Content }}") \
        .replace("Hello!", "{{ .Content }}")
    assert "plain fallback" not in text and "not its tool calls" in text
    assert [line for line in text.splitlines() if line.startswith("PARAMETER stop")] == [f'PARAMETER stop "{stop}"']


def test_mistral_v3_gets_the_fallback_said_so_and_its_stop(smollm2_tokenizer):
    """Mistral v3 writes the system prompt into the last user turn after the tokenizer's spaces: not restated."""
    text = modelfile(templates.get("mistral_v3"), smollm2_tokenizer, [])
    assert "mistral layout that this Go TEMPLATE does not restate" in text and 'PARAMETER stop "</s>"' in text


def test_template_kwargs_are_said_to_be_in_the_ggufs_chat_template_only(smollm2_tokenizer):
    """The Go TEMPLATE restates no switch: the Modelfile names the run's data.template_kwargs and where they live."""
    template = templates.get("qwen3", smollm2_tokenizer, {"enable_thinking": False})
    text = modelfile(template, smollm2_tokenizer, template.stop_token_ids(smollm2_tokenizer))
    assert '# the run was trained with data.template_kwargs {"enable_thinking": false}' in text
    assert "{% set enable_thinking = false %}" in template.to_jinja()  # what write_gguf stores as chat_template
    assert "data.template_kwargs" not in modelfile(templates.get("qwen3", smollm2_tokenizer), smollm2_tokenizer, [2])
