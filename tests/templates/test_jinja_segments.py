"""Segments of a jinja template found from prefix renders: the right text trained, and clear refusals."""

from __future__ import annotations

import pytest

from sftune import templates
from sftune.templates import jinja_segments
from tests.templates.chats import FIXTURES, PLAIN, SINGLE_CALL_CHAT, TOOL_CHAT, TOOLS, trained_chars



def test_the_jinja_path_trains_the_end_of_turn_of_the_last_reply():
    """After a run of tool results (Qwen closes the run only after its last result) and with Phi-3's
    closing EOS: the reply's end-of-turn is trained, a template-wide closing suffix is not."""
    qwen = templates.Template(templates.TOKENIZER, jinja=(FIXTURES / "qwen2.5.jinja").read_text(encoding="utf-8"),
                              eos="<|im_end|>")
    messages = templates.normalize_messages(TOOL_CHAT)
    segments = jinja_segments.segments(qwen, messages, TOOLS, False)
    text = "".join(t for t, _, _ in segments)
    trained = trained_chars(messages, segments, "last")
    assert "".join(text[i] for i in sorted(trained)) == "Paris 21°C, Zürich 18°C.<|im_end|>"
    phi3 = templates.Template(templates.TOKENIZER, jinja=(FIXTURES / "phi3.jinja").read_text(encoding="utf-8"),
                              eos="<|endoftext|>")
    messages = templates.normalize_messages(PLAIN)
    segments = jinja_segments.segments(phi3, messages, None, False)
    text = "".join(t for t, _, _ in segments)
    assert text.endswith("It is 4. <|end|>\n<|endoftext|>")
    trained = trained_chars(messages, segments, "last")
    assert "".join(text[i] for i in sorted(trained)) == "It is 4. <|end|>"


def test_a_template_that_cannot_render_a_prefix_still_trains_the_replies_and_their_end_of_turn():
    """Llama 3.1's template puts tools into the first user turn and raises for [system] alone: the
    placeholder method places the replies (the tool result, JSON-quoted by the template, is found too)."""
    source = (FIXTURES / "llama3.1.jinja").read_text(encoding="utf-8") + "\n"  # not the official text: no twin
    template = templates.Template(templates.TOKENIZER, jinja=source, bos="<|begin_of_text|>", eos="<|eot_id|>")
    chat = templates.normalize_messages([{"role": "system", "content": "Be brief."}] + SINGLE_CALL_CHAT)
    with pytest.raises(jinja_segments.NotPrefixStable, match="not its first messages alone"):
        jinja_segments.prefix_segments(template, chat, TOOLS, False)
    segments = template.segments(chat, TOOLS)
    text = "".join(t for t, _, _ in segments)
    assert text == official_render(source, chat, TOOLS, "<|begin_of_text|>", "<|eot_id|>")
    trained = trained_chars(chat, segments, "assistant")
    assert "".join(text[i] for i in sorted(trained)) == (
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>It is 21°C.<|eot_id|>')
    with pytest.raises(templates.TemplateError, match="cannot render this conversation"):
        template.segments([{"role": "system", "content": "only a system message"}], TOOLS)


def test_a_template_that_rewrites_a_content_is_refused_naming_the_message():
    """A template that changes what a message says cannot have its trained text placed: refused, by name."""
    source = ("{% for m in messages %}{% if m.role == 'user' %}<|user|>{{ m.content | upper }}{% else %}"
              "<|assistant|>{{ m.content }}<|end|>{% endif %}{% endfor %}")
    template = templates.Template(templates.TOKENIZER, jinja=source, eos="<|end|>")
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."}]
    with pytest.raises(templates.TemplateError, match=r"rewrites the content of message 0 \(user\): it changes it"):
        jinja_segments.placeholder_segments(template, templates.normalize_messages(chat), None, False)
    replacing = source.replace("| upper", "| replace('i', 'I')")  # keeps the placeholder, changes the text
    with pytest.raises(templates.TemplateError, match=r"rewrites the content of message 0 \(user\): it renders "
                                                      r"'hI' where 'hi'"):
        jinja_segments.placeholder_segments(templates.Template(templates.TOKENIZER, jinja=replacing, eos="<|end|>"),
                                            templates.normalize_messages(chat), None, False)


def official_render(source: str, messages, tools, bos: str, eos: str) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    chat = templates.to_hf_messages(templates.normalize_messages(messages))
    return render_jinja_template(conversations=[chat], tools=tools, chat_template=source,
                                 add_generation_prompt=False, bos_token=bos, eos_token=eos)[0][0]
