"""The current families through their own official templates: multi-turn data trains each reply and its
stop, whether the template is prefix-stable or not, and the stop-token audit finds (or appends) the stop.

Each family's tokenizer is a stand-in: SmolLM2's with the family's special tokens added, its EOS and its
generation_config eos tokens named in FAMILIES (no hub access here). What is trained is checked as
characters of the render against a reference written out below.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest

from sftune import templates
from sftune.encode import IGNORE, encode
from sftune.encode.labels import render_spans
from sftune.templates import jinja_segments, stops
from tests.templates.chats import FIXTURES

SYSTEM = {"role": "system", "content": "You are terse."}
PLAIN = [{"role": "user", "content": "Hi there!"}, {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "It is 4."}]
THINK = [PLAIN[0], {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello! How can I help?"},
         PLAIN[2], {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\nIt is 4."}]

QWEN = dict(bos="", eos="<|im_end|>", special=["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
            stops=["<|im_end|>", "<|endoftext|>"])
DEEPSEEK = dict(bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>", stops=["<｜end▁of▁sentence｜>"],
                special=["<｜User｜>", "<｜Assistant｜>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"])
QWEN_THINK = "Hello! How can I help?<|im_end|>Add them.\n</think>\n\nIt is 4.<|im_end|>"

# fixture: (stand-in tokenizer, conversation, trained characters: each reply and its end-of-turn marker)
FAMILIES = {
    "qwen3.5": (QWEN, [SYSTEM] + THINK, QWEN_THINK),  # reasoning before the last query is dropped
    "qwen3.5_nothink": (QWEN, [SYSTEM] + THINK, QWEN_THINK),
    "qwen3.6": (QWEN, [SYSTEM] + THINK, QWEN_THINK),
    "qwen3.8": (QWEN, [SYSTEM] + THINK, "Greet back.\n</think>\n\n" + QWEN_THINK),  # keeps all reasoning
    "qwen3_2507": (QWEN, [SYSTEM] + PLAIN, "Hello! How can I help?<|im_end|>It is 4.<|im_end|>"),
    "gpt-oss": (dict(bos="", eos="<|return|>", stops=["<|return|>", "<|endoftext|>", "<|call|>"],
                    special=["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>",
                             "<|endoftext|>"]),
               [SYSTEM] + THINK,
               "<|channel|>final<|message|>Hello! How can I help?<|end|>"
               "<|channel|>analysis<|message|>Add them.<|end|><|start|>assistant<|channel|>final<|message|>"
               "It is 4.<|return|>"),
    "deepseekv3": (DEEPSEEK, [SYSTEM] + PLAIN,
                   "Hello! How can I help?<｜end▁of▁sentence｜>It is 4.<｜end▁of▁sentence｜>"),
    # DeepSeek-V3.1 (llama.cpp's re-indented copy): each reply follows "<｜Assistant｜></think>", the generation
    # prompt of its default non-thinking mode (tests/templates/test_deepseek_v3.py: thinking on, reasoning data).
    "deepseek_v3.1": (DEEPSEEK, [SYSTEM] + PLAIN,
                      "Hello! How can I help?<｜end▁of▁sentence｜>It is 4.<｜end▁of▁sentence｜>"),
    # GLM-4.5: a turn ends where the next role header begins (<|user|>, a stop token); after the last reply the
    # template writes nothing, so the audit appends the stop the template writes after the others. Its generation
    # prompt is <|assistant|>: the model writes the think block and the "\n" before the answer itself (an empty
    # block, "\n<think></think>", is trained only with train_empty_think).
    "glm4.5": (dict(bos="", eos="<|endoftext|>", stops=["<|endoftext|>", "<|user|>", "<|observation|>"],
                     special=["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
                              "<|endoftext|>"]),
                [SYSTEM] + THINK, "\nHello! How can I help?<|user|>\n<think>Add them.</think>\nIt is 4.<|user|>"),
    "gemma4": (dict(bos="<bos>", eos="<eos>", stops=["<eos>", "<turn|>"],
                    special=["<|turn>", "<turn|>", "<bos>", "<eos>"]),
               [SYSTEM] + PLAIN, "Hello! How can I help?<turn|>It is 4.<turn|>"),
    "llama3_2": (dict(bos="<|begin_of_text|>", eos="<|eot_id|>",
                      stops=["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
                      special=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                               "<|eot_id|>", "<|eom_id|>"]),
                 [SYSTEM] + PLAIN, "Hello! How can I help?<|eot_id|>It is 4.<|eot_id|>"),
    # Llama 4: its tokenizer's eos is <|eot|>; its generation_config also stops on <|end_of_text|> and <|eom|>.
    "llama4": (dict(bos="<|begin_of_text|>", eos="<|eot|>", stops=["<|end_of_text|>", "<|eom|>", "<|eot|>"],
                    special=["<|begin_of_text|>", "<|end_of_text|>", "<|header_start|>", "<|header_end|>", "<|eot|>",
                             "<|eom|>", "<|python_start|>", "<|python_end|>"]),
               [SYSTEM] + PLAIN, "Hello! How can I help?<|eot|>It is 4.<|eot|>"),
    # Nemotron 3: the prompt holds "<think>\n" (and so the "<think>" of an earlier reply's "<think></think>"); the
    # replies are written as the data has them, "</think>\n\n" included (the template splits them itself).
    "nemotron3_nano": (QWEN, [SYSTEM] + THINK,
                        "\n\nHello! How can I help?<|im_end|>Add them.\n</think>\n\nIt is 4.<|im_end|>"),
}


def stand_in(smollm2_tokenizer, fixture: str):
    """SmolLM2's tokenizer with the family's special tokens, EOS and template; and its generation_config eos ids."""
    family = FAMILIES[fixture][0]
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    bos = {"bos_token": family["bos"]} if family["bos"] else {}
    tokenizer.add_special_tokens({"additional_special_tokens": family["special"], "eos_token": family["eos"], **bos})
    if not family["bos"]:
        tokenizer.bos_token = None
    tokenizer.chat_template = (FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8")
    return tokenizer, tokenizer.convert_tokens_to_ids(family["stops"])


def trained_text(template, chat) -> str:
    text, spans = render_spans(template, templates.normalize_messages(chat), None, "assistant")
    return "".join(text[a:b] for a, b, _ in spans)


@pytest.mark.parametrize("fixture", list(FAMILIES))
def test_each_reply_and_its_stop_are_trained_through_the_official_template(fixture, smollm2_tokenizer):
    tokenizer, eos_ids = stand_in(smollm2_tokenizer, fixture)
    _, chat, reference = FAMILIES[fixture]
    checked = stops.audit(templates.get("tokenizer", tokenizer), tokenizer, eos_ids)
    assert trained_text(checked.template, chat) == reference
    assert (checked.appended == "<|user|>") == (fixture == "glm4.5")  # only GLM's template writes no last stop
    assert set(eos_ids) <= set(checked.stop_ids)
    # the text is the official render (plus the appended stop), and each reply's last trained token stops
    messages = templates.normalize_messages(chat)
    official = tokenizer.apply_chat_template(jinja_segments_messages(checked.template, messages), tokenize=False)
    assert checked.template.render(messages) == official + (checked.appended or "")
    result = encode(chat, tokenizer, checked.template)
    labels = result["labels"]
    reply_ends = [k for k in range(len(labels))
                  if labels[k] != IGNORE and (k + 1 == len(labels) or labels[k + 1] == IGNORE)]
    special = set(tokenizer.all_special_ids)
    assert len(reply_ends) >= 2 and all(labels[k] in checked.stop_ids or labels[k] in special for k in reply_ends)
    assert labels[reply_ends[-1]] in checked.stop_ids


def jinja_segments_messages(template, messages):
    """The messages as the official template takes them (reasoning in its own field where it reads one)."""
    return jinja_segments._placeholders(template, templates.to_hf_messages(messages))[0]


@pytest.mark.parametrize("fixture", ["qwen3.5", "gpt-oss", "deepseekv3"])
def test_templates_that_are_not_prefix_stable_go_through_placeholders(fixture, smollm2_tokenizer):
    """Qwen3.5 raises on [system] alone, gpt-oss ends the last turn otherwise than the others, DeepSeek-V3 writes
    its reply header only before a reply: the prefix renders cannot place these, the placeholders do."""
    tokenizer, _ = stand_in(smollm2_tokenizer, fixture)
    template = templates.get("tokenizer", tokenizer)
    messages = templates.normalize_messages([SYSTEM] + PLAIN)
    with pytest.raises(jinja_segments.NotPrefixStable):
        jinja_segments.prefix_segments(template, messages, None, False)
    assert "".join(t for t, _, _ in template.segments(messages)) == tokenizer.apply_chat_template(
        templates.to_hf_messages(messages), tokenize=False)


def test_a_model_without_any_stop_token_is_refused_before_training(smollm2_tokenizer):
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.eos_token = None
    template = templates.get({"name": "plain", "user": "Q: {content}\n", "assistant": "A: {content}\n"}, tokenizer)
    with pytest.raises(templates.TemplateError, match="has no stop token"):
        stops.audit(template, tokenizer, [])


def test_eos_ids_beyond_the_vocabulary_are_left_out_of_the_stops(smollm2_tokenizer):
    """A generation_config may name an id the tokenizer has no token for (a vision model's config with a larger
    vocabulary than its tokenizer): the stops are the ids that are tokens; none at all is refused."""
    template = templates.get("chatml", smollm2_tokenizer)
    checked = stops.audit(template, smollm2_tokenizer, [len(smollm2_tokenizer) + 10])
    assert checked.stops == ["<|im_end|>"] and checked.appended is None and "stop tokens: <|im_end|>" in checked.summary()
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.eos_token = None
    plain = templates.get({"name": "plain", "user": "Q: {content}\n", "assistant": "A: {content}\n"}, tokenizer)
    with pytest.raises(templates.TemplateError, match="is a token of its tokenizer"):
        stops.audit(plain, tokenizer, [len(tokenizer) + 10])


def test_data_inspect_says_and_shows_the_stop_appended_after_glms_last_reply(tmp_path, smollm2_tokenizer):
    """A model folder whose tokenizer holds GLM-4.5's template and whose generation_config names its stops."""
    import json

    from transformers import GenerationConfig
    from typer.testing import CliRunner

    from sftune.cli import app

    tokenizer, eos_ids = stand_in(smollm2_tokenizer, "glm4.5")
    folder = tmp_path / "glm"
    tokenizer.save_pretrained(folder)
    GenerationConfig(eos_token_id=eos_ids).save_pretrained(folder)
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": PLAIN}) + "\n")
    out = CliRunner().invoke(app, ["data", "inspect", str(data), "--model", str(folder)])
    assert out.exit_code == 0, out.output
    assert "appends '<|user|>'" in " ".join(out.output.split())
    out = CliRunner().invoke(app, ["data", "inspect", str(data), "--model", str(folder), "--plain"])
    trained = [json.loads(line.split("\t", 1)[1]) for line in out.output.splitlines() if line.startswith("TRAIN")]
    assert "".join(trained) == "\nHello! How can I help?<|user|>\nIt is 4.<|user|>"


def test_tool_call_turns_through_qwen35s_template_train_the_calls_and_their_end_of_turn():
    """Rounds of calls and results, then answers: Qwen3.5 trims the contents and writes its own call layout."""
    from tests.templates.chats import MULTI_STEP_CHAT, TOOLS

    template = templates.Template(templates.TOKENIZER, eos="<|im_end|>",
                                  jinja=(FIXTURES / "qwen3.5.jinja").read_text(encoding="utf-8"))
    text, spans = render_spans(template, templates.normalize_messages(MULTI_STEP_CHAT), TOOLS, "assistant")
    pieces = []  # the trained text as its runs (one reply's segments are contiguous)
    for (a, b, _), before in zip(spans, [None, *spans]):
        if before is not None and before[1] == a:
            pieces[-1] += text[a:b]
        else:
            pieces.append(text[a:b])
    call = ("<tool_call>\n<function=get_weather>\n<parameter=city>\n{}\n</parameter>\n</function>\n"
            "</tool_call><|im_end|>")
    assert pieces == [call.format("Zürich"), call.format("Paris"),
                                                "Zürich 18°C, Paris 21°C.<|im_end|>", "You're welcome.<|im_end|>"]


def test_glm_trains_observation_after_a_last_reply_of_tool_calls(smollm2_tokenizer):
    """GLM-4.5's model stops a reply of tool calls at <|observation|> (the header its template writes before the
    result), not at <|user|>: a conversation that ends with calls gets <|observation|> appended, trained."""
    from tests.templates.chats import TOOLS, call

    tokenizer, eos_ids = stand_in(smollm2_tokenizer, "glm4.5")
    checked = stops.audit(templates.get("tokenizer", tokenizer), tokenizer, eos_ids)
    assert (checked.appended, checked.appended_after_call) == ("<|user|>", "<|observation|>")
    assert "'<|observation|>'" in checked.summary()
    chat = [SYSTEM, PLAIN[0], {"role": "assistant", "content": "<think>ask</think>", "tool_calls": [call("Paris")]}]
    result = {"role": "tool", "content": "21"}
    # the official render, continued by the result, writes <|observation|> right after the calls
    official = tokenizer.apply_chat_template([*chat, result], tools=TOOLS, tokenize=False)
    assert official.endswith("</tool_call><|observation|>\n<tool_response>\n21\n</tool_response>")
    ends_with_calls = tokenizer.apply_chat_template(chat, tools=TOOLS, tokenize=False)
    messages = templates.normalize_messages(chat)
    assert checked.template.render(messages, TOOLS) == ends_with_calls + "<|observation|>"
    for template in (checked.template, replace(checked.template, jinja=None, spec=templates.BUILTINS["glm4.5"],
                                               name="glm4.5")):
        text, spans = render_spans(template, messages, TOOLS, "assistant")
        assert "".join(text[a:b] for a, b, _ in spans).endswith("</tool_call><|observation|>")
    # a plain last reply keeps <|user|>, and so does a call that a later answer follows
    plain = [*chat, result, {"role": "assistant", "content": "It is 21."}]
    assert trained_text(checked.template, plain).endswith("\nIt is 21.<|user|>")
    # a template that writes its end-of-turn after calls gets nothing appended
    qwen, qwen_eos = stand_in(smollm2_tokenizer, "qwen3.5")
    assert stops.audit(templates.get("tokenizer", qwen), qwen, qwen_eos).appended_after_call is None
