"""The Chat tab: a streaming chat with a run's model (runs.load: its training template and stop tokens;
runs.Loaded.stream), and beside it the base model answering the same prompt. A vision-language run also
takes images with the message (as `sftune chat`'s /image does); a text-only run refuses them."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Iterator

from sftune import runs
from sftune.generation import GenerationOptions
from sftune.webui import paths as ui_paths
from sftune.webui.paths import Roots

KEEP_LOADED = 2  # models kept in memory (a run and its base); the least recently used one is let go
_loaded: OrderedDict[tuple[str, str | None], runs.Loaded] = OrderedDict()
_lock = threading.Lock()


def load(name: str, template: str | dict | None = None, template_kwargs: dict | None = None) -> runs.Loaded:
    """runs.load, kept for the next message (loading takes seconds; a chat sends many)."""
    key = (str(name), repr(template) if template is not None else None, repr(template_kwargs or {}))
    with _lock:
        if key in _loaded:
            _loaded.move_to_end(key)
            return _loaded[key]
        loaded = runs.load(name, template=template, template_kwargs=template_kwargs)
        _loaded[key] = loaded
        while len(_loaded) > KEEP_LOADED:
            _loaded.popitem(last=False)
        return loaded


def base_of(loaded: runs.Loaded) -> runs.Loaded:
    """The run's base model, answering in the run's template when the run named one (as `sftune eval` does)."""
    if loaded.base is None:
        raise ValueError(f"{loaded.name} is not a run folder: there is no base model to compare with")
    plain = loaded.config is not None and not runs.is_run(loaded.base)  # the run's template and mode
    return load(loaded.base, template=loaded.config.data.template if plain else None,
                template_kwargs=loaded.config.data.template_kwargs if plain else None)


def text_of(content: Any) -> str:
    """A chat message's text, whether the UI gives a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text") or content.get("content") or ""
    if isinstance(content, (list, tuple)):
        return "".join(text_of(part) for part in content)
    return "" if content is None else str(content)


def images_of(content: Any) -> list[str]:
    """The image files of a chat message: the paths in the UI's file entries ({"path": ...}, or the chatbot's
    {"type": "file", "file": {"path": ...}}), in order."""
    if isinstance(content, (list, tuple)):
        return [path for part in content for path in images_of(part)]
    if isinstance(content, dict):
        if content.get("type") == "file" or "file" in content:
            return images_of(content.get("file"))
        path = content.get("path")
        return [str(path)] if path else []
    return []


def messages_of(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat as OpenAI messages: a message with images has image_url parts (file paths) before its text."""
    out = []
    for m in history or []:
        text, pictures = text_of(m["content"]), images_of(m["content"])
        content: Any = text
        if pictures:
            content = [*({"type": "image_url", "image_url": {"url": p}} for p in pictures),
                       {"type": "text", "text": text}]
        out.append({"role": m["role"], "content": content})
    return out


def user_message(message: str | dict | None) -> dict[str, Any]:
    """The user's new message as the chatbot shows it: its text, or its images then its text
    (a gr.MultimodalTextbox gives {"text": ..., "files": [...]})."""
    if not isinstance(message, dict):
        return {"role": "user", "content": message or ""}
    text, files = message.get("text") or "", [str(f) for f in message.get("files") or []]
    if not files:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [*({"path": f} for f in files), *([text] if text else [])]}


def answer(loaded: runs.Loaded, history: list[dict[str, Any]], options: GenerationOptions) -> Iterator[str]:
    """The reply to a conversation (ending with the user's message) as text pieces, in the run's template;
    with a vision-language run the messages' images go with it."""
    return loaded.stream(messages_of(history), options)


def chat(model: str, with_base: bool, history: list, base_history: list, message: str | dict,
         options: GenerationOptions, *, roots: Roots) -> Iterator[tuple[list, list]]:
    """Both chats after each new piece of either reply: the run's model and (with_base) its base, streamed
    together on the same prompt. `message` is text, or {"text": ..., "files": [image paths]}. The model (a
    run of the runs folder, a model folder of the roots, an embedded name or a hub id) and every image of
    both chats (the browser sends the histories too) are checked against the roots first."""
    new = user_message(message)
    if not text_of(new["content"]).strip() and not images_of(new["content"]):
        raise ValueError("type a message first")
    history = [*history, new]
    base_history = [*base_history, new]
    ui_paths.model_name(model, roots)
    for m in (*history, *base_history):
        for image in images_of(m["content"]):
            ui_paths.allowed(image, roots)
    if any(images_of(m["content"]) for m in history):
        tuned = load(model)  # a text-only run refuses images before the message is shown
        if not tuned.modality.reads_images:
            raise ValueError(f"{tuned.name} is a text-only run: it cannot read images. Send text only, or "
                             "choose a run trained from a vision-language model.")
    yield history, base_history  # the message shows at once; loading a model takes seconds
    tuned = load(model)
    base = base_of(tuned) if with_base else None
    streams = [(history, answer(tuned, history, options))]
    if base is not None:
        streams.append((base_history, answer(base, base_history, options)))
    for chat_history, _ in streams:
        chat_history.append({"role": "assistant", "content": ""})
    active = list(streams)
    while active:
        for item in list(active):
            chat_history, pieces = item
            piece = next(pieces, None)
            if piece is None:
                active.remove(item)
                continue
            chat_history[-1]["content"] += piece
        yield history, base_history


def tab(context: dict[str, Any]) -> None:
    """The Chat tab's components and events (inside a gr.Tab)."""
    import gradio as gr

    from sftune.webui import jobs

    with gr.Row():
        model = gr.Dropdown(label="Run (or model name / folder)", choices=[], allow_custom_value=True, scale=4,
                            elem_id="chat-model")
        refresh = gr.Button("↻ Runs", scale=1)
        with_base = gr.Checkbox(True, label="Side by side with the base model", scale=2, elem_id="chat-with-base")
    with gr.Row():
        max_new_tokens = gr.Slider(1, 2048, value=256, step=1, label="Max new tokens")
        temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 = greedy)")
    with gr.Row():
        tuned_chat = gr.Chatbot(label="Fine-tuned", elem_id="chat-tuned", height=420)
        base_chat = gr.Chatbot(label="Base model", elem_id="chat-base", height=420)
    with gr.Row():
        message = gr.MultimodalTextbox(placeholder="Message (attach images for a vision-language run)",
                                       file_types=["image"], file_count="multiple", show_label=False, scale=6,
                                       elem_id="chat-message", submit_btn=False)
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        clear = gr.Button("Clear", scale=1)

    def choices(selected):
        found = [str(p) for p in jobs.find_runs(context["runs_root"]) if runs.is_run(p)]
        return gr.Dropdown(choices=found, value=selected if selected else (found[0] if found else None))

    def on_send(name, base_on, history, base_history, text, tokens, temp):
        if not name:
            raise gr.Error("choose a run (or type a model name) first")
        options = GenerationOptions(max_new_tokens=int(tokens), temperature=float(temp))
        try:
            for tuned_history, other in chat(name, base_on, history, base_history, text, options,
                                             roots=context["roots"]):
                yield tuned_history, other if base_on else [], None
        except (ValueError, OSError, RuntimeError) as err:
            raise gr.Error(str(err)) from None

    inputs = [model, with_base, tuned_chat, base_chat, message, max_new_tokens, temperature]
    send.click(on_send, inputs, [tuned_chat, base_chat, message], api_name="chat")
    message.submit(on_send, inputs, [tuned_chat, base_chat, message])
    clear.click(lambda: ([], []), None, [tuned_chat, base_chat])
    refresh.click(choices, model, model)
    context["app_load"].append((choices, model, model))
