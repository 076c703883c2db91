"""An Ollama Modelfile beside the GGUF: the training template in Go template syntax and its stops.

Ollama renders prompts with its own TEMPLATE (Go's text/template over .Messages), not with the GGUF's
jinja, so the Modelfile restates the run's template: each built-in layout (ChatML, Llama 3, Gemma, ...)
is written from the same format strings the trainer rendered with. A template with no built-in twin
gets a plain role-prefixed fallback, and the Modelfile says so; so does a family whose layout format
strings cannot say (`layout`: Qwen3.5, GLM-4.5, gpt-oss, Nemotron 3, Mistral v3), whose official jinja is in the
GGUF. Llama 4 and Mistral v7 / Magistral write plain chats as format strings say (only their tool calls, and
Magistral's [THINK] reasoning, need their layout): their plain turns are restated, and the Modelfile says what not.
A run's data.template_kwargs (DeepSeek-V3.1's thinking, Qwen3's enable_thinking) are written into the GGUF's
chat_template; the Go TEMPLATE does not restate what they switch, and the Modelfile says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftune.templates.render import fill


def modelfile(template: Any, tokenizer: Any, stop_ids: list[int], gguf_name: str = "model.gguf") -> str:
    """The Modelfile text: FROM the GGUF, TEMPLATE, one PARAMETER stop per stop token or string."""
    spec = template.effective_spec
    lines = [f"FROM ./{gguf_name}"]
    if spec and _plain_turns_restated(spec):
        lines.append(f"# {template.name!r} has a {spec['layout']} layout: this TEMPLATE restates its plain chat turns, "
                     "not its tool calls" + (" nor its [THINK] reasoning" if spec.get("think_open") else "")
                     + " (the GGUF's chat_template has them): use a runtime that renders that for tools.")
        body = go_template(spec, _bos_text(template, tokenizer), template.eos)
    elif spec and spec.get("layout"):
        lines.append(f"# {template.name!r} has a {spec['layout']} layout that this Go TEMPLATE does not restate (its "
                     "official jinja chat_template is the run's): this TEMPLATE is a plain fallback. Use a runtime that "
                     "renders the GGUF's chat_template, or check this one before relying on it.")
        body = _FALLBACK
    elif spec:
        body = go_template(spec, _bos_text(template, tokenizer), template.eos)
    else:
        lines.append(f"# {template.name!r} has no built-in layout sftune knows; this TEMPLATE is a plain fallback. "
                     "Check it against the run's tokenizer chat_template before relying on it.")
        body = _FALLBACK
    if template.kwargs:
        lines.append(f"# the run was trained with data.template_kwargs {_kwargs_text(template.kwargs)}: the GGUF's "
                     "chat_template has them written in; this TEMPLATE does not restate what they switch (a thinking "
                     "mode's prompt, a reasoning effort). Use a runtime that renders the GGUF's chat_template.")
    lines.append(f'TEMPLATE """{body}"""')
    stops = [tokenizer.convert_ids_to_tokens(i) for i in stop_ids]
    stops += [text for text in [template.stop, *spec.get("stops", [])] if text and text not in stops]
    lines += [f"PARAMETER stop {_quoted(stop)}" for stop in dict.fromkeys(s for s in stops if s)]
    return "\n".join(lines) + "\n"


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    import json

    return json.dumps(kwargs, ensure_ascii=False)


def _plain_turns_restated(spec: dict[str, Any]) -> bool:
    """Whether a layout family's plain chat (system, user, assistant) is what its format strings say: Llama 4, and
    Mistral v7 / v13 (v3 writes the system prompt into the last user turn, after the tokenizer's spaces)."""
    return spec.get("layout") == "llama4" or (spec.get("layout") == "mistral" and spec.get("mistral") != "v3")


def _bos_text(template: Any, tokenizer: Any) -> str:
    """The BOS text the TEMPLATE writes: none when the tokenizer adds one itself (the GGUF's add_bos_token), as
    the runtime then adds it too."""
    with_special = tokenizer("a")["input_ids"]
    adds_bos = bool(with_special) and with_special[0] == tokenizer.bos_token_id
    return "" if adds_bos else template.bos


_FALLBACK = ('{{ if .System }}system: {{ .System }}\n{{ end }}{{ range .Messages }}{{ .Role }}: {{ .Content }}\n'
             '{{ end }}assistant: ')


def go_template(spec: dict[str, Any], bos: str, eos: str) -> str:
    """The layout of a template dict as an Ollama TEMPLATE (no whitespace trimming: literal text is exact)."""
    def text(key: str, **values: str) -> str:
        out = fill(spec.get(key) or "", bos, eos)
        for name, value in values.items():
            out = out.replace("{" + name + "}", value)
        return out

    # The system prompt: a system message, else the Modelfile's SYSTEM (.System), else the template's default.
    out = ('{{ $system := .System }}{{ range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}'
           '{{ end }}{{ end }}')
    out += text("prefix")
    default = spec.get("default_system")
    folded = spec.get("system") is None
    if not folded:
        out += "{{ if $system }}" + text("system", content="{{ $system }}") + "{{ end }}"
        if default:
            out = out[: -len("{{ end }}")] + "{{ else }}" + text("system", content=default) + "{{ end }}"
        user_content = "{{ .Content }}"
    else:
        with_system = fill(spec.get("system_in_user") or "{system}\n\n{content}", bos, eos)
        with_system = with_system.replace("{system}", "{{ $system }}").replace("{content}", "{{ .Content }}")
        user_content = "{{ if and $first $system }}" + with_system + "{{ else }}{{ .Content }}{{ end }}"
    out += "{{ $first := true }}{{ range .Messages }}"
    out += '{{ if eq .Role "user" }}' + text("user", content=user_content) + "{{ $first = false }}"
    out += '{{ else if eq .Role "assistant" }}' + text("assistant", content="{{ .Content }}")
    if spec.get("tool"):
        out += '{{ else if eq .Role "tool" }}' + text("tool", content="{{ .Content }}")
    out += "{{ end }}{{ end }}" + text("generation_prompt") + text("think_prompt")  # DeepSeek-R1: <think>\n
    return out


def write_modelfile(folder: str | Path, template: Any, tokenizer: Any, stop_ids: list[int],
                    gguf_name: str = "model.gguf") -> Path:
    """Write `folder`/Modelfile (`ollama create NAME -f Modelfile` in that folder)."""
    path = Path(folder) / "Modelfile"
    path.write_text(modelfile(template, tokenizer, stop_ids, gguf_name), encoding="utf-8")
    return path


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
