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


def test_a_template_that_cannot_render_a_prefix_says_so_and_what_to_use():
    """Llama 3.1's template puts tools into the first user turn and raises for [system] alone."""
    source = (FIXTURES / "llama3.1.jinja").read_text(encoding="utf-8") + "\n"  # not the official text: no twin
    template = templates.Template(templates.TOKENIZER, jinja=source, bos="<|begin_of_text|>", eos="<|eot_id|>")
    chat = [{"role": "system", "content": "Be brief."}] + SINGLE_CALL_CHAT
    with pytest.raises(templates.TemplateError, match="not its first messages alone.*--template"):
        template.segments(chat, TOOLS)
    with pytest.raises(templates.TemplateError, match="cannot render this conversation"):
        template.segments([{"role": "system", "content": "only a system message"}], TOOLS)
