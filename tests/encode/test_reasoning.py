"""What is trained in reasoning conversations: each option against spans read off the official render."""

from __future__ import annotations

import re

import pytest

from sftune import encode, templates
from sftune.encode.labels import render_spans
from tests.templates.chats import TOOLS, official
from tests.templates.test_reasoning import HYBRID_CHAT, REASONING_CHAT, REASONING_TOOL_CHAT, _official

# The reasoning of each exchange, and a tool loop with reasoning on every step after the last query.
CHATS = [REASONING_TOOL_CHAT, REASONING_CHAT[:3], HYBRID_CHAT[2:], [
    {"role": "user", "content": "Plan a trip"},
    {"role": "assistant", "content": "<think>\nfirst the weather\n</think>\n\n", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
    {"role": "tool", "content": "rain"},
    {"role": "assistant", "content": "<think>\nrain: museums\n</think>\n\nVisit the museums."},
]]


def reference_chars(text: str, option: str, empty_think: bool = False) -> set[int]:
    """Trained characters found in the official render alone: each reply from after its
    '<|im_start|>assistant\\n' through '<|im_end|>', its leading think block as the option says (think_last_turn:
    the replies after the last user query, a tool loop's steps included, as the template keeps their reasoning)."""
    query = max(m.start() for m in re.finditer(r"<\|im_start\|>user\n(?!<tool_response>)", text))
    replies = [(m.end(), text.index("<|im_end|>", m.end()) + len("<|im_end|>"))
               for m in re.finditer(r"<\|im_start\|>assistant\n", text)]
    chars = set()
    for k, (start, end) in enumerate(replies):
        think = re.match(r"<think>\n(.*?)\n</think>\n\n", text[start:end], re.S)
        answer_from = start + (think.end() if think else 0)
        chars.update(range(answer_from, end))
        if think and (think.group(1) == "" and empty_think or think.group(1) != "" and (
                option == "think_and_answer" or option == "think_last_turn" and start > query)):
            chars.update(range(start, answer_from))
    return chars


def spans_chars(spans) -> set[int]:
    return {c for a, b, _ in spans for c in range(a, b)}


@pytest.mark.parametrize("option", encode.REASONING)
@pytest.mark.parametrize("k", range(len(CHATS)))
def test_each_reasoning_option_trains_the_characters_read_off_the_official_render(option, k):
    chat = CHATS[k]
    tools = TOOLS if any("tool_calls" in m for m in chat) else None
    text, spans = render_spans(templates.get("qwen3"), templates.normalize_messages(chat), tools, "assistant",
                               reasoning=option)
    assert text == _official(chat, tools, False, "qwen3")
    assert spans_chars(spans) == reference_chars(text, option)


def test_empty_think_blocks_are_not_trained_unless_asked():
    chat, template = HYBRID_CHAT, templates.get("qwen3")
    messages = templates.normalize_messages(chat)
    text, spans = render_spans(template, messages, None, "assistant")
    assert "<think>\n\n</think>\n\nbye!" in text
    assert spans_chars(spans) == reference_chars(text, "think_and_answer", empty_think=False)
    _, with_empty = render_spans(template, messages, None, "assistant", train_empty_think=True)
    assert spans_chars(with_empty) == reference_chars(text, "think_and_answer", empty_think=True)
    assert spans_chars(with_empty) - spans_chars(spans) == set(range(text.index("<think>\n\n"),
                                                                     text.index("bye!")))


def test_token_labels_follow_the_reasoning_option(smollm2_tokenizer):
    """Tokens are trained exactly where they overlap the reference characters (the tokenizer's offsets)."""
    chat = CHATS[3]
    template = templates.get("qwen3", smollm2_tokenizer)
    trained = {}
    for option in encode.REASONING:
        result = encode.encode({"messages": chat, "tools": TOOLS}, smollm2_tokenizer, template, reasoning=option)
        text = _official(chat, TOOLS, False, "qwen3")
        enc = smollm2_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        assert result["input_ids"] == enc["input_ids"]
        chars = reference_chars(text, option)
        expected = [k > 0 and any(c in chars for c in range(a, max(b, a + 1)))
                    for k, (a, b) in enumerate(enc["offset_mapping"])]
        assert [label != encode.IGNORE for label in result["labels"]] == expected, option
        trained[option] = sum(expected)
    # two think blocks, both in the final exchange (the tool step leads to the last reply): think_last_turn trains
    # both, as think_and_answer does; answer_only neither
    assert trained["answer_only"] < trained["think_last_turn"] == trained["think_and_answer"]


def test_multi_turn_reasoning_is_split_into_one_example_per_exchange(smollm2_tokenizer, tmp_path):
    """Qwen3 drops the first reply's reasoning once a second query follows: split, it is trained in an
    example ending with its exchange; the second example sees the first reply without it, untrained."""
    template = templates.get("qwen3", smollm2_tokenizer)
    dataset, report = encode.encode_dataset([{"messages": REASONING_CHAT}], smollm2_tokenizer, template,
                                            use_cache=False, progress=False)
    assert report.reasoning_split == 1 and len(dataset) == 2
    for row, shown in zip(dataset, (REASONING_CHAT[:3], REASONING_CHAT)):
        text = _official(shown, None, False, "qwen3")
        assert row["input_ids"] == smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]
    first = smollm2_tokenizer.decode([t for t, label in zip(dataset[0]["input_ids"], dataset[0]["labels"])
                                      if label != encode.IGNORE])
    second = smollm2_tokenizer.decode([t for t, label in zip(dataset[1]["input_ids"], dataset[1]["labels"])
                                       if label != encode.IGNORE])
    assert first == "<think>\nadd them\n</think>\n\n4<|im_end|>"
    assert second == "<think>\nsix, clearly\n</think>\n\n6<|im_end|>"
    whole, report = encode.encode_dataset([{"messages": REASONING_CHAT}], smollm2_tokenizer, template,
                                          encode.EncodeOptions(split_reasoning_turns=False), use_cache=False,
                                          progress=False)
    assert report.reasoning_split == 0 and len(whole) == 1
    assert "add them" not in smollm2_tokenizer.decode(whole[0]["input_ids"])
    plain, report = encode.encode_dataset([{"messages": REASONING_CHAT}], smollm2_tokenizer,
                                          templates.get("chatml", smollm2_tokenizer), use_cache=False, progress=False)
    assert report.reasoning_split == 0 and len(plain) == 1  # chatml keeps every reply's text as it is


def test_cli_data_inspect_shows_what_each_reasoning_option_trains(tmp_path):
    import json

    from typer.testing import CliRunner

    from sftune.cli import app

    data = tmp_path / "r.jsonl"
    data.write_text(json.dumps({"messages": REASONING_CHAT[:3]}) + "\n")
    runner = CliRunner()
    trained = {}
    for option in ("think_and_answer", "answer_only"):
        out = runner.invoke(app, ["data", "inspect", str(data), "-t", "qwen3", "--reasoning", option, "--plain"])
        assert out.exit_code == 0, out.output
        trained[option] = "".join(json.loads(line.split("\t", 1)[1]) for line in out.output.splitlines()
                                  if line.startswith("TRAIN"))
    assert trained == {"think_and_answer": "<think>\nadd them\n</think>\n\n4<|im_end|>", "answer_only": "4<|im_end|>"}


# --- DeepSeek-R1-Distill: the last reply after the official prompt; earlier replies lose their reasoning ---

from tests.templates.test_deepseek_r1 import NO_REASONING_LAST, R1_CHAT, completion  # noqa: E402
from tests.templates.test_deepseek_r1 import _official as _official_r1  # noqa: E402

R1_CHATS = [R1_CHAT, R1_CHAT[1:3], NO_REASONING_LAST, R1_CHAT[1:3] + [
    {"role": "user", "content": "why?"}, {"role": "assistant", "content": "<think>\n\n</think>\n\nBecause."}]]


def r1_reference_chars(text: str, option: str, empty_think: bool = False) -> set[int]:
    """Trained characters read off the text alone: each reply after its '<｜Assistant｜>' through
    '<｜end▁of▁sentence｜>'; the last reply after the prefilled '<think>\\n', its block up to
    '\\n</think>\\n\\n' trained as the option says."""
    eos = "<｜end▁of▁sentence｜>"
    replies = [(m.end(), text.index(eos, m.end()) + len(eos)) for m in re.finditer("<｜Assistant｜>", text)]
    chars = set()
    for k, (start, end) in enumerate(replies):
        if k < len(replies) - 1:
            chars.update(range(start, end))
            continue
        opened = start + len("<think>\n")
        block_end = text.index("\n</think>\n\n", opened) + len("\n</think>\n\n")
        chars.update(range(block_end, end))
        empty = block_end - opened == len("\n</think>\n\n")
        if empty and empty_think or not empty and option in ("think_and_answer", "think_last_turn"):
            chars.update(range(opened, block_end))
    return chars


@pytest.mark.parametrize("option", encode.REASONING)
@pytest.mark.parametrize("k", range(len(R1_CHATS)))
def test_deepseek_r1_reasoning_options_train_the_characters_read_off_the_reference(option, k):
    chat = R1_CHATS[k]
    text, spans = render_spans(templates.get("deepseek_r1"), templates.normalize_messages(chat), None, "assistant",
                               reasoning=option)
    assert text == _official_r1(chat[:-1], True) + completion(chat[-1]["content"])
    assert spans_chars(spans) == r1_reference_chars(text, option)
    _, with_empty = render_spans(templates.get("deepseek_r1"), templates.normalize_messages(chat), None, "assistant",
                                 reasoning=option, train_empty_think=True)
    assert spans_chars(with_empty) == r1_reference_chars(text, option, empty_think=True)


def test_deepseek_r1_conversations_are_split_per_reply_with_the_context_the_model_sees(smollm2_tokenizer):
    """Each reply with reasoning is trained in an example that ends with it (its reasoning kept, after the
    official prompt); later examples hold it as context, without reasoning, untrained."""
    template = templates.get("deepseek_r1", smollm2_tokenizer)
    chat = R1_CHATS[3] + [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "<think>\nend\n</think>\n\nok"}]
    dataset, report = encode.encode_dataset([{"messages": chat}], smollm2_tokenizer, template, use_cache=False,
                                            progress=False)
    # reply 1 has reasoning that reply 5's example would drop (reply 3's block is empty): split after it
    assert report.reasoning_split == 1 and len(dataset) == 2
    bos, eos = smollm2_tokenizer.bos_token or "", "<｜end▁of▁sentence｜>"
    for row, (start, end) in zip(dataset, ((0, 2), (2, len(chat)))):
        shown = chat[:end]
        text = official("deepseek_r1", shown[:-1], bos, smollm2_tokenizer.eos_token, None, True) + \
            completion(shown[-1]["content"])
        enc = smollm2_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        assert row["input_ids"] == enc["input_ids"]
        # replies before `start` were trained by the earlier example: context here
        n_before = sum(m["role"] == "assistant" for m in chat[:start])
        cut = 0
        for _ in range(n_before):
            cut = text.index(eos, cut) + len(eos)
        chars = {c for c in r1_reference_chars(text, "think_and_answer") if c >= cut}
        expected = [k > 0 and any(c in chars for c in range(a, max(b, a + 1)))
                    for k, (a, b) in enumerate(enc["offset_mapping"])]
        assert [label != encode.IGNORE for label in row["labels"]] == expected
    whole, report = encode.encode_dataset([{"messages": chat}], smollm2_tokenizer, template,
                                          encode.EncodeOptions(split_reasoning_turns=False), use_cache=False,
                                          progress=False)
    assert report.reasoning_split == 0 and len(whole) == 1
    assert "add them" not in smollm2_tokenizer.decode(whole[0]["input_ids"])
