"""One conversation: ids equal the model's own chat template's, labels follow message spans and policies."""

from __future__ import annotations

import numpy as np
import pytest

from sftune import encode as E
from sftune import templates
from sftune.data.schema import Conversation, Message
from sftune.encode.labels import span_labels
from sftune.encode.tokencache import tokenize_whole
from tests.encode.conftest import CHAT, trained_text


def reference_labels(tokenizer, messages, template_text: str | None = None) -> tuple[list[int], list[int]]:
    """(ids, labels) of a ChatML conversation, independently of sftune: the text and ids come from the
    tokenizer's own `apply_chat_template` (or the given jinja), and a token is trained when one of its
    characters lies in an assistant reply or the `<|im_end|>` right after it."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template_text)
    spans, pos = [], 0
    for m in messages:
        if m["role"] == "assistant":
            start = text.index("<|im_start|>assistant\n" + m["content"] + "<|im_end|>", pos)
            start += len("<|im_start|>assistant\n")
            pos = start + len(m["content"]) + len("<|im_end|>")
            spans.append((start, pos))
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, chat_template=template_text)
    assert ids == encoding["input_ids"]
    labels = [token if any(a <= c < b for a, b in spans for c in range(start, max(end, start + 1))) else -100
              for token, (start, end) in zip(ids, encoding["offset_mapping"])]
    return ids, [-100] + labels[1:]


@pytest.mark.parametrize("name", ["tokenizer", "chatml", "qwen2.5"])
def test_ids_and_labels_equal_the_models_own_chat_template_and_reply_spans(smollm2_tokenizer, name):
    """SmolLM2's own template (and the ChatML built-ins, through their exported jinja rendered by
    transformers): the same ids as `apply_chat_template`, trained exactly on replies and their end of turn."""
    template = templates.get(name, smollm2_tokenizer)
    jinja = None if name == "tokenizer" else template.to_jinja()
    result = E.encode(CHAT, smollm2_tokenizer, template)
    ids, labels = reference_labels(smollm2_tokenizer, CHAT, jinja)
    assert result["input_ids"] == ids
    assert result["labels"] == labels
    assert len(result["labels"]) == len(result["input_ids"])


@pytest.mark.parametrize("name", ["tokenizer", "chatml", "qwen2.5", "llama3", "gemma", "phi3", "zephyr", "vicuna",
                                  "alpaca", "zh_qa", "llama2", "mistral"])
def test_ids_equal_those_of_the_templates_jinja_rendered_by_transformers(smollm2_tokenizer, name):
    """Every built-in: the ids trained on are the ids `apply_chat_template` gives with the template's
    own jinja (what the run folder's tokenizer uses at inference)."""
    template = templates.get(name, smollm2_tokenizer)
    chat = CHAT if name not in ("mistral",) else CHAT[1:]
    result = E.encode(chat, smollm2_tokenizer, template)
    jinja = None if name == "tokenizer" else template.to_jinja()
    assert result["input_ids"] == smollm2_tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False,
                                                                        chat_template=jinja)
    assert len(result["labels"]) == len(result["input_ids"])


def test_assistant_policy_trains_replies_and_their_end_of_turn_even_when_pad_is_eos(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert tok.pad_token_id == tok.eos_token_id  # SmolLM2: <|im_end|> is both
    result = E.encode(CHAT, tok, templates.get("tokenizer", tok))
    assert trained_text(tok, result) == ["Hello! How can I help?<|im_end|>", "It is 4.<|im_end|>"]
    eos_positions = [k for k, t in enumerate(result["input_ids"]) if t == tok.eos_token_id]
    trained_eos = [k for k in eos_positions if result["labels"][k] == tok.eos_token_id]
    assert len(trained_eos) == 2


def test_builtin_and_jinja_spans_give_the_same_labels(smollm2_tokenizer):
    """Spans from the template dict and from prefix renders of its exported jinja agree."""
    for name in ("chatml", "llama3", "gemma", "zephyr", "vicuna", "phi3"):
        builtin = templates.get(name, smollm2_tokenizer)
        jinja = templates.get({"name": name, "jinja": builtin.to_jinja()}, smollm2_tokenizer)
        assert E.encode(CHAT, smollm2_tokenizer, builtin) == E.encode(CHAT, smollm2_tokenizer, jinja), name


def test_policies_and_per_message_flags(smollm2_tokenizer):
    tok, template = smollm2_tokenizer, templates.get("chatml", smollm2_tokenizer)
    last = E.encode(CHAT, tok, template, policy="last")
    assert trained_text(tok, last) == ["It is 4.<|im_end|>"]
    everything = E.encode(CHAT, tok, template, policy="all")
    assert everything["labels"][0] == -100 and everything["labels"][1:] == everything["input_ids"][1:]
    flagged = [dict(m) for m in CHAT]
    flagged[2]["train"] = False
    flagged[3]["train"] = True
    result = E.encode(flagged, tok, template)
    assert trained_text(tok, result) == ["<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n", "It is 4.<|im_end|>"]
    with pytest.raises(ValueError, match="unknown masking policy"):
        E.encode(CHAT, tok, template, policy="prompt")


def test_tool_calls_are_trained_and_tool_results_are_not(smollm2_tokenizer):
    tok = smollm2_tokenizer
    chat = Conversation([Message("user", "Weather in Paris?"),
                         Message("tool_call", '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
                         Message("tool", '{"temp": 21}'), Message("assistant", "It is 21 degrees.")])
    result = E.encode(chat, tok, templates.get("qwen2.5", tok))
    assert trained_text(tok, result) == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "It is 21 degrees.<|im_end|>"]


def test_never_two_bos_with_a_tokenizer_that_adds_one(bos_tokenizer):
    tok = bos_tokenizer
    for name in ("llama2", "mistral", "vicuna", "alpaca"):
        template = templates.get(name, tok)
        chat = CHAT[1:] if name == "mistral" else CHAT
        text = template.render(chat)
        assert text.startswith("<s>")
        assert tok(text)["input_ids"][:2] == [0, 0]  # the trap: the tokenizer adds a second one
        result = E.encode(chat, tok, template)
        assert result["input_ids"][0] == 0 and result["input_ids"][1] != 0
        assert result["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    doubled = templates.get({"name": "double", "prefix": "{bos}{bos}", "user": "{content}", "assistant": "{content}{eos}",
                             "generation_prompt": "", "end": "{eos}"}, tok)
    with pytest.raises(templates.TemplateError, match="two BOS"):
        E.encode(CHAT, tok, doubled)


def test_truncation_drops_history_first_then_cuts_the_prompt(smollm2_tokenizer):
    tok, template = smollm2_tokenizer, templates.get("chatml", smollm2_tokenizer)
    long_history = [CHAT[0]] + [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "ok " * 40}] \
        + CHAT[3:]
    full = E.encode(long_history, tok, template)
    last_only = E.encode(CHAT[:1] + CHAT[3:], tok, template)
    result = E.encode(long_history, tok, template, max_len=len(last_only["input_ids"]) + 5)
    assert result == last_only  # the old exchange went, the system prompt and last exchange stayed
    assert len(full["input_ids"]) > len(result["input_ids"])
    cut = E.encode(CHAT[:1] + CHAT[3:], tok, template, max_len=12)
    assert len(cut["input_ids"]) == 12
    assert trained_text(tok, cut) == ["It is 4.<|im_end|>"]  # every trained token kept
    assert cut["input_ids"][-6:] == last_only["input_ids"][-6:]


def test_a_record_with_nothing_to_train_is_none(smollm2_tokenizer):
    tok, template = smollm2_tokenizer, templates.get("chatml", smollm2_tokenizer)
    assert E.encode(CHAT[:2], tok, template) is None  # no assistant turn
    flagged = [dict(m, train=False) for m in CHAT]
    assert E.encode(flagged, tok, template) is None



def _reference_labels(ids, offsets, spans, n_chars):
    """A token is trained when one of its characters (an empty token: the next one) lies in a span."""
    trained = set()
    for a, b, _ in spans:
        trained.update(range(a, b))
    labels = []
    for token, (start, end) in zip(ids, offsets):
        start = min(start, n_chars)
        chars = range(start, min(max(end, start + 1), n_chars))
        labels.append(token if any(c in trained for c in chars) else -100)
    return [-100] + labels[1:] if labels else labels


def test_batched_labels_mark_exactly_the_tokens_that_overlap_a_trained_span(smollm2_tokenizer, bos_tokenizer,
                                                                             odd_offset_tokenizers):
    """Labels of a whole batch at once equal a token-by-token reference, also with empty or skipping offsets."""
    import random

    rng = random.Random(0)
    pieces = ["a", "b", " ", "  ", "\n", "\n\n", " \n ", "🦜", "你好", "hello", " world", "é", "<|im_end|>", "</s>",
              "<s>", "42", "!?"]
    backends = [smollm2_tokenizer.backend_tokenizer, bos_tokenizer.backend_tokenizer, *odd_offset_tokenizers]
    for b, backend in enumerate(backends):
        texts, spans = [], []
        for _ in range(200):
            segments = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 7))]
            text, row, pos = "".join(segments), [], 0
            for segment in segments:
                if rng.random() < 0.5:
                    row.append((pos, pos + len(segment), 1.0))
                pos += len(segment)
            texts.append(text)
            spans.append(row)
        ids, starts, ends, counts = tokenize_whole(backend, texts)
        labels, _ = span_labels(ids, starts, ends, counts, np.array([len(t) for t in texts]), spans, False)
        expected = []
        for text, row in zip(texts, spans):
            encoding = backend.encode(text, add_special_tokens=False)
            expected += _reference_labels(encoding.ids, encoding.offsets, row, len(text))
        assert labels.tolist() == expected, b



def test_last_policy_trains_the_whole_last_turn_text_and_its_tool_calls():
    messages = templates.normalize_messages([
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
    ])
    assert [m["role"] for m in messages] == ["user", "assistant", "tool_call"]
    assert E.trained_flags(messages, "last") == [False, True, True]
    two_turns = messages + [{"role": "tool", "content": "21"}, {"role": "assistant", "content": "21°C."}]
    assert E.trained_flags(templates.normalize_messages(two_turns), "last") == [False, False, False, False, True]
