"""An Ollama Modelfile beside the GGUF: the training template in Go template syntax and its stops.

Ollama renders prompts with its own TEMPLATE (Go's text/template over .Messages), not with the GGUF's
jinja, so the Modelfile restates the run's template: each built-in layout (ChatML, Llama 3, Gemma, ...)
is written from the same format strings the trainer rendered with. A template with no built-in twin
gets a plain role-prefixed fallback, and the Modelfile says so; so does a family whose layout format
strings cannot say (`layout`: Qwen3.5, GLM-4.5, gpt-oss, Nemotron 3), whose official jinja is in the GGUF.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftune.templates.render import fill


def modelfile(template: Any, tokenizer: Any, stop_ids: list[int], gguf_name: str = "model.gguf") -> str:
    """The Modelfile text: FROM the GGUF, TEMPLATE, one PARAMETER stop per stop token or string."""
    spec = template.effective_spec
    lines = [f"FROM ./{gguf_name}"]
    if spec and spec.get("layout"):
        lines.append(f"# {template.name!r} has a {spec['layout']} layout that this Go TEMPLATE does not restate (its "
                     "official jinja chat_template is the run's): this TEMPLATE is a plain fallback. Use a runtime that "
                     "renders the GGUF's chat_template, or check this one before relying on it.")
        body = _FALLBACK
    elif spec:
        with_special = tokenizer("a")["input_ids"]
        adds_bos = bool(with_special) and with_special[0] == tokenizer.bos_token_id
        # a runtime that adds BOS itself (the GGUF's add_bos_token) must not find it in the text too
        body = go_template(spec, "" if adds_bos else template.bos, template.eos)
    else:
        lines.append(f"# {template.name!r} has no built-in layout sftune knows; this TEMPLATE is a plain fallback. "
                     "Check it against the run's tokenizer chat_template before relying on it.")
        body = _FALLBACK
    lines.append(f'TEMPLATE """{body}"""')
    stops = [tokenizer.convert_ids_to_tokens(i) for i in stop_ids]
    stops += [text for text in [template.stop, *spec.get("stops", [])] if text and text not in stops]
    lines += [f"PARAMETER stop {_quoted(stop)}" for stop in dict.fromkeys(s for s in stops if s)]
    return "\n".join(lines) + "\n"


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
