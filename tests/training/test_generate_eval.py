"""Generation metrics during training ask each held-out conversation as training rendered it."""

from __future__ import annotations

from sftune import data, generation, templates
from sftune.training.generate_eval import generation_metrics

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def test_a_tool_conversation_is_asked_with_its_tools(monkeypatch, smollm2_tokenizer):
    template = templates.get("qwen2.5", smollm2_tokenizer)  # a template that writes the tools into the prompt
    with_tools = data.Conversation([data.Message("user", "Weather in Paris?"), data.Message("assistant", "Sunny.")],
                                   tools=[TOOL])
    plain = data.Conversation([data.Message("user", "Hi"), data.Message("assistant", "Hello.")])
    asked = []

    def answer(model, tokenizer, prompts, options, **kwargs):
        asked.extend(prompts)
        return [generation.Completion(text=text, token_ids=[], finish_reason="stop")
                for text in ("Sunny.", "Hello.")]

    monkeypatch.setattr(generation, "generate", answer)
    scores = generation_metrics(None, smollm2_tokenizer, template, [with_tools, plain], ["exact_match"],
                                max_new_tokens=8)
    assert scores == {"exact_match": 1.0}
    want = [template.render(c.messages[:1], c.tools, add_generation_prompt=True) for c in (with_tools, plain)]
    assert asked == want and "get_weather" in asked[0]
