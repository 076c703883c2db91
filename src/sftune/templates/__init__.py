"""Chat templates: render a conversation exactly as a model family expects, as labelled segments.

    get(name | dict | None, tokenizer) -> Template   (None: default_for(tokenizer), the model's own or ChatML)
    Template.render / segments / render_jinja / to_jinja / stop / stop_token_ids
    save_to_tokenizer(template, tokenizer)      BUILTINS, ALIASES, TOKENIZER, names()

Files: definitions.py (the built-ins as plain data), template.py (the Template value and `get`),
render.py (the one built-in renderer), jinja_export.py (a built-in as jinja), jinja_segments.py
(segments of a model's own jinja template), twins.py (official templates a built-in renders
exactly), messages.py (the messages a template takes). How it all works: docs/templates.md.
"""

from sftune.data.toolcalls import tool_calls
from sftune.templates.definitions import ALIASES, BUILTINS, TOKENIZER
from sftune.templates.errors import TemplateError
from sftune.templates.messages import normalize_messages, to_hf_messages
from sftune.templates.render import Segment
from sftune.templates.template import Template, default_for, dropped_reasoning, get, names, save_to_tokenizer

__all__ = [
    "ALIASES",
    "BUILTINS",
    "TOKENIZER",
    "Segment",
    "Template",
    "TemplateError",
    "default_for",
    "dropped_reasoning",
    "get",
    "names",
    "normalize_messages",
    "save_to_tokenizer",
    "to_hf_messages",
    "tool_calls",
]
