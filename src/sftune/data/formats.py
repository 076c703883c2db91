"""Every known SFT data format, detected from a record's fields and converted with its exact meaning.

A format is a name and a function `convert(record, options) -> Conversation` in FORMATS; DETECTORS
says which fields give it away. Conversion is faithful: it moves text into roles and never rewrites
it, except where a format's own meaning joins fields, documented per function:

  alpaca             instruction, input?, output, system?, history? [[q, a], ...] (history first);
                     the user turn is "instruction\\n\\ninput" (input left out when empty)
  sharegpt / openai  a message list under `conversations` or `messages`, from/value or role/content,
                     ShareGPT roles human/gpt/system/function_call/observation, OpenAI tool_calls,
                     content parts, per-message weight; optional system and tools
  prompt_completion  prompt/completion, prompt/response, query/response (system? optional)
  qa                 question, answer, context? (the user turn is "context\\n\\nquestion")
  cot                problem, reasoning_steps [..], final_answer -> one assistant reply (cot_layout)
  multitask          task_type, source_lang, target_lang, source_text, target_text (TASK_TEMPLATES)
  dialog             turns [{speaker, utterance, ...}] with a speaker -> role map (roles option)
  firefly            conversation [{input, output}, ...]
  text               text: continued pre-training, one assistant message with train=True and
                     meta["pretrain"] = True, so every token is trained
  caption            image (or images) + caption: an image-caption pair; the user turn is the
                     image ("<image>", then the `caption_prompt` option on a new line when given),
                     the caption the reply

Images: `images` (or `image`) beside the messages (LLaMA-Factory, ShareGPT), with `<image>`
placeholders in the text, or OpenAI typed parts (image_url / image), which become placeholders at
their place; both go to Conversation.images (see images.py).

Options (a plain dict, all optional): roles {source name: schema role}, role_key / content_key
(message field names other than role/content and from/value), cot_layout, task_templates,
instruction_position ("after": alpaca and multitask put the instruction behind the input).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from typing import Any

from sftune.data.errors import DataError
from sftune.data.fields import (list_field, missing_field, optional_text, required_text, system_messages,
                                 text_field, tool_schemas, wrong_type)
from sftune.data import images as image_refs
from sftune.data.schema import ROLES, Conversation, Message
from sftune.data.toolcalls import call_list, call_text, parse_tool_calls, tool_calls

# Source role names -> schema roles (ShareGPT, OpenAI, and the old OpenAI `function` result role).
ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",  # Gemini's name for the assistant
    "developer": "system",  # OpenAI's newer name for the system role
    "system": "system",
    "tool_call": "tool_call",
    "function_call": "tool_call",
    "tool": "tool",
    "observation": "tool",
    "function": "tool",
}

# Chain-of-thought layouts: {reasoning} is the steps joined by newlines, {steps} the numbered steps.
COT_LAYOUTS = {
    "steps": "{steps}\n\nFinal answer: {answer}",
    "think": "<think>\n{reasoning}\n</think>\n\n{answer}",
}

# Multi-task instructions by task_type; {source_lang} and {target_lang} are language names.
TASK_TEMPLATES = {
    "translation": "Translate the following text from {source_lang} to {target_lang}.",
    "summarization": "Summarize the following {source_lang} text in {target_lang}.",
    "paraphrase": "Paraphrase the following {source_lang} text.",
    "simplification": "Rewrite the following {source_lang} text in simpler {target_lang}.",
    "question_generation": "Write a question in {target_lang} that the following {source_lang} text answers.",
}
DEFAULT_TASK_TEMPLATE = "Task: {task_type}. Source language: {source_lang}. Target language: {target_lang}."
LANGUAGE_NAMES = {
    "en": "English", "zh": "Chinese", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian",
    "pt": "Portuguese", "ru": "Russian", "ja": "Japanese", "ko": "Korean", "ar": "Arabic", "hi": "Hindi",
    "nl": "Dutch", "tr": "Turkish", "vi": "Vietnamese", "pl": "Polish", "uk": "Ukrainian", "id": "Indonesian",
}

EXAMPLE_MESSAGE = '{"role": "user", "content": "hi"}'


def role_hint(name: str, role: str, options: dict) -> str:
    """How to map a source role name to a schema role, in the syntax the user calls sftune with."""
    if options.get("syntax") == "cli":
        return f"--roles {name}={role}"
    return f"roles={{{name!r}: {role!r}}}"


def closest_role(name: str) -> str | None:
    """The schema role a misspelt or differently cased role name most likely means (USER, humna -> user)."""
    lower = name.strip().lower()
    if lower in ROLE_ALIASES:
        return ROLE_ALIASES[lower]
    close = difflib.get_close_matches(lower, ROLE_ALIASES, n=1, cutoff=0.7)
    return ROLE_ALIASES[close[0]] if close else None


def _role(name: Any, field: str, options: dict) -> str:
    roles = options.get("roles")
    if roles and isinstance(name, str) and name in roles:
        return roles[name]
    role = ROLE_ALIASES.get(name) if isinstance(name, str) else None
    if role is None:
        if not isinstance(name, str):
            raise wrong_type(field, name, "a string role")
        guess = closest_role(name)
        known = f"one of {', '.join(ROLES)} (or ShareGPT's human, gpt, function_call, observation)"
        fix = (f"it looks like {guess!r}: write {guess!r}, or map it with {role_hint(name, guess, options)}"
               if guess else f"use {known}, or map it to the role it stands for: "
               f"{role_hint(name, 'user', options)} or {role_hint(name, 'assistant', options)}")
        raise DataError("unknown_role", field, f"is {name!r}, not a known role", fix)
    return role


# --- formats -----------------------------------------------------------------------------------


def with_input(instruction: str, text: str, options: dict) -> str:
    """The user turn of an instruction and its input: "instruction\\n\\ninput", or with
    instruction_position "after" "input\\n\\ninstruction" (Post-Ins, Liu et al. 2023)."""
    return f"{text}\n\n{instruction}" if options.get("instruction_position") == "after" else f"{instruction}\n\n{text}"


def alpaca(record: dict, options: dict) -> Conversation:
    """instruction + input -> user ("instruction\\n\\ninput", see with_input), output -> assistant; history first."""
    instruction = required_text(record, "instruction")
    output = required_text(record, "output")
    extra = record.get("input")
    if extra is not None and extra != "":
        instruction = with_input(instruction, text_field(extra, "input"), options)
    system = record.get("system")
    messages = [Message("system", text_field(system, "system"))] if system else []
    history = record.get("history")
    if history:
        for i, pair in enumerate(list_field(record, "history", "", required=False)):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise DataError(
                    "wrong_type",
                    f"history[{i}]",
                    f"is {json.dumps(pair, ensure_ascii=False)[:60]}",
                    'each history item is a [question, answer] pair, e.g. [["hi", "hello!"]]',
                )
            messages.append(Message("user", text_field(pair[0], f"history[{i}][0]")))
            messages.append(Message("assistant", text_field(pair[1], f"history[{i}][1]")))
    messages.append(Message("user", instruction))
    messages.append(Message("assistant", output))
    return Conversation(messages, images=_image_column(record))


def _content(value: Any, field: str, images: list | None = None) -> tuple[str, list]:
    """Message content -> (text, tool calls found among its parts).

    A string is the text. A list of typed parts (OpenAI; LLaMA-Factory v1 spells "text" as
    "value"): text parts joined by newlines; reasoning parts become one leading
    "<think>\n...\n</think>" block (then a blank line and the text), as reasoning models write
    it; tool_call parts (JSON text {"name", "arguments"}) are calls. Image parts become an
    `<image>` placeholder in the text and their path goes to `images`; audio and other parts are refused.
    """
    if type(value) is str:
        return value, []
    if not isinstance(value, list):
        return text_field(value, field), []
    texts, reasoning, calls = [], [], []
    for i, part in enumerate(value):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise wrong_type(f"{field}[{i}]", part, 'a content part like {"type": "text", "text": "..."}')
        kind = part.get("type", "text")
        if kind in ("image_url", "image") and images is not None:
            images.append(image_refs.from_part(part, f"{field}[{i}]"))
            texts.append(image_refs.PLACEHOLDER)
            continue
        body = part.get("text", part.get("value"))
        if kind not in ("text", "reasoning", "tool_call"):
            raise DataError(
                "unsupported",
                f"{field}[{i}]",
                f"is a {kind!r} part",
                "sftune trains on text and images: keep only text and image parts, or drop the record",
            )
        if not isinstance(body, str):
            raise wrong_type(f"{field}[{i}].text", body, "a string",
                             f'write the part as {{"type": "{kind}", "text": "..."}}')
        if kind == "tool_call":
            try:
                calls.append(json.loads(body))
            except json.JSONDecodeError:
                raise DataError(
                    "wrong_type", f"{field}[{i}]", "is a tool_call part that is not valid JSON",
                    'write the call as JSON text: {"name": ..., "arguments": {...}}',
                ) from None
        else:
            (reasoning if kind == "reasoning" else texts).append(body)
    text = "\n".join(texts)
    if reasoning:
        think = "<think>\n" + "\n".join(reasoning) + "\n</think>"
        text = f"{think}\n\n{text}" if text else think
    return text, calls


def _train_and_weight(item: dict, field: str) -> tuple[bool | None, float | None]:
    """A message's `weight` (or LLaMA-Factory's `loss_weight`; 0 means not trained) and `train` flag."""
    weight = item.get("weight", item.get("loss_weight"))
    train = item.get("train")
    if weight is not None:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise wrong_type(f"{field}.weight", weight, "a number", "weight is a number, 0 or 1 in OpenAI's format")
        try:
            weight = float(weight)
        except OverflowError:
            weight = math.inf
        if not math.isfinite(weight) or weight < 0:
            raise DataError("bad_value", f"{field}.weight", f"is {item.get('weight', item.get('loss_weight'))!r}",
                            "a loss weight is a finite number >= 0 (0: not trained, 1: trained as usual)")
        if weight == 0 and train is None:
            train = False
    if train is not None and not isinstance(train, bool):
        raise wrong_type(f"{field}.train", train, "true or false")
    return train, weight


def messages(record: dict, options: dict) -> Conversation:
    """ShareGPT and OpenAI message lists (both key names, both field spellings, tool calls)."""
    key = "messages" if record.get("messages") is not None else "conversations"
    items = list_field(record, key, f"add a {key!r} list of {EXAMPLE_MESSAGE} objects")
    images: list[str] = []
    out = to_messages(items, options, key, images)
    if out and out[0].role != "system":
        out[:0] = system_messages(record)
    column = _image_column(record)
    if images and column:
        raise DataError("image_count", "images", "is given beside image parts in the messages",
                        "name each image once: as a typed part in its message, or in images with <image> in the text")
    conversation = Conversation(out, tools=tool_schemas(record), images=images or column)
    if isinstance(record.get("meta"), dict):  # written by sftune before: keep where it came from
        conversation.meta["origin"] = record["meta"]
        if record["meta"].get("pretrain"):
            conversation.meta["pretrain"] = True
    return conversation


def _image_column(record: dict) -> list[str]:
    """The record's images column (`images`, or `image` holding one path or a list)."""
    key = "images" if record.get("images") is not None else "image"
    return image_refs.from_column(record.get(key), key)


def to_messages(items: list, options: dict, key: str = "messages", images: list | None = None) -> list[Message]:
    """OpenAI / ShareGPT message dicts -> schema Messages: the one conversion, also for templates.

    An assistant message with tool_calls becomes its text (when it has any) and one tool_call message.
    """
    role_key = options.get("role_key")
    content_key = options.get("content_key")
    read_keys = MESSAGE_FIELDS | {role_key, content_key}
    dropped = options.get("dropped")
    out: list[Message] = []
    sources: list[int] = []  # the item each message came from, for located errors
    for i, item in enumerate(items):
        field = f"{key}[{i}]"
        if not isinstance(item, dict):
            kind = "string" if isinstance(item, str) else type(item).__name__
            raise DataError(
                "wrong_type", field, f"is a {kind}", f"each message needs a role and content, e.g. {EXAMPLE_MESSAGE}"
            )
        name = item.get(role_key) if role_key else item.get("role", item.get("from"))
        if name is None:
            raise missing_field(f"{field}.role", f"each message needs a role and content, e.g. {EXAMPLE_MESSAGE}")
        role = _role(name, f"{field}.role", options)
        content = item.get(content_key) if content_key else item.get("content", item.get("value"))
        calls = call_list(item.get("tool_calls") or item.get("function_call"), f"{field}.tool_calls")
        if content is None and not calls:
            raise missing_field(f"{field}.content", f"each message needs a role and content, e.g. {EXAMPLE_MESSAGE}")
        text, part_calls = _content(content, f"{field}.content", images) if content is not None else ("", [])
        calls = (calls or []) + part_calls
        if role == "assistant" and not calls and "<tool_call>" in text:
            text, calls = hermes_calls(text, f"{field}.content")
        train, weight = _train_and_weight(item, field)
        call_id = _call_id(item, field) if role == "tool" else None
        if dropped is not None:
            dropped.update(f"{key} (per-message field)" for key in item
                           if key not in read_keys or (key == "tool_call_id" and role != "tool"))
        results = tool_responses(text) if role == "tool" or (
            role == "user" and out and out[-1].role in ("tool_call", "tool")) else None
        if results is not None:
            one = call_id if len(results) == 1 else None
            out.extend(Message("tool", result, train, weight, one) for result in results)
            sources.extend(i for _ in results)
            continue
        if calls and role == "assistant":
            if text:
                out.append(Message("assistant", text, train, weight))
                sources.append(i)
            calls = parse_tool_calls(calls, f"{field}.tool_calls", ids=True)
            out.append(Message("tool_call", call_text(calls), train, weight))
        else:
            out.append(Message(role, text, train, weight, call_id))
        sources.append(i)
    return _paired_by_id(out, sources, key)


# The message fields to_messages reads; any other is counted as not kept (options["dropped"]).
MESSAGE_FIELDS = frozenset(("role", "from", "content", "value", "tool_calls", "function_call", "weight",
                            "loss_weight", "train", "tool_call_id"))


def _call_id(item: dict, field: str) -> str | None:
    value = item.get("tool_call_id")
    if value is None or isinstance(value, str):
        return value
    raise wrong_type(f"{field}.tool_call_id", value, "a string", "write the id of the call this result answers as text")


def _paired_by_id(out: list[Message], sources: list[int], key: str) -> list[Message]:
    """Tool results matched to their calls by id, in the calls' order.

    The calls of one turn (the tool_call messages in a row) and the tool results right after them: when
    the results carry ids, each must answer exactly one of those calls and every call must have its
    result; the results are then put in the calls' order, which is what templates without ids pair by.
    Without ids, the order given is the pairing (ShareGPT, Hermes).
    """
    i = 0
    while i < len(out):
        if out[i].role != "tool_call":
            i += 1
            continue
        calls, j = [], i
        while j < len(out) and out[j].role == "tool_call":
            calls += [(call.get("id"), f"{key}[{sources[j]}].tool_calls[{k}]")
                      for k, call in enumerate(tool_calls(out[j].content, ids=True))]
            j += 1
        end = j
        while end < len(out) and out[end].role == "tool":
            end += 1
        if any(m.tool_call_id is not None for m in out[j:end]):
            order = _match(calls, [(m.tool_call_id, f"{key}[{sources[r]}].tool_call_id") for r, m in
                                   enumerate(out[j:end], j)])
            out[j:end] = [out[j + r] for r in order]
        i = end
    return out


def _match(calls: list[tuple[str | None, str]], results: list[tuple[str | None, str]]) -> list[int]:
    """The result (by index) that answers each call, in the calls' order; a located DataError otherwise."""
    fix = ("give each tool message the tool_call_id of the call it answers, right after the assistant message with "
           "that call")
    waiting: dict[str, str] = {}
    for call_id, field in calls:
        if call_id is None:
            raise DataError("tool_call_id", f"{field}.id",
                            "is missing, but the results after it name their calls by id",
                            'give every call an id (e.g. "call_1") and its result that tool_call_id')
        if call_id in waiting:
            raise DataError("tool_call_id", f"{field}.id", f"is {call_id!r}, the id of {waiting[call_id]} too",
                            "give each call of a turn its own id")
        waiting[call_id] = field
    found: dict[str, int] = {}
    for r, (call_id, field) in enumerate(results):
        if call_id is None:
            raise DataError("tool_call_id", field, "is missing, while other results of this turn name their call",
                            fix)
        if call_id not in waiting:
            raise DataError("tool_call_id", field, f"is {call_id!r}, which no call right before it has (the calls: "
                            f"{', '.join(map(repr, waiting))})", fix)
        if call_id in found:
            raise DataError("tool_call_id", field, f"is {call_id!r}, which an earlier result answers already",
                            "keep one result per call")
        found[call_id] = r
    missing = [(call_id, field) for call_id, field in waiting.items() if call_id not in found]
    if missing:
        call_id, field = missing[0]
        raise DataError("tool_call_id", field, f"(id {call_id!r}) has no result: no tool message after it has "
                        "that tool_call_id", f"add its result (a tool message with tool_call_id {call_id!r}), "
                        "or remove the call")
    return [found[call_id] for call_id in waiting]


HERMES_CALL = re.compile(r"<tool_call>\n?(.*?)\n?</tool_call>", re.S)
TOOL_RESPONSE = re.compile(r"<tool_response>\n(.*?)\n</tool_response>", re.S)


def tool_responses(text: str) -> list[str] | None:
    """The results of a text made only of <tool_response> blocks (one per line, as Hermes data and Qwen's
    templates write tool results: a tool message, or a user turn after calls), else None."""
    results = [m.group(1) for m in TOOL_RESPONSE.finditer(text)]
    wrapped = "\n".join(f"<tool_response>\n{result}\n</tool_response>" for result in results)
    return results if results and wrapped == text else None


def hermes_calls(text: str, field: str) -> tuple[str, list]:
    """Hermes / Qwen <tool_call> JSON blocks at the end of an assistant text -> (the text before them, calls)."""
    blocks = list(HERMES_CALL.finditer(text))
    if not blocks:
        return text, []
    between = "".join(text[a.end():b.start()] for a, b in zip(blocks, blocks[1:])) + text[blocks[-1].end():]
    if between.strip():
        raise DataError("bad_value", field, "has text after or between its <tool_call> blocks",
                        "put the calls last in the reply, and what follows in the next assistant turn")
    calls = []
    for k, block in enumerate(blocks):
        try:
            calls.append(json.loads(block.group(1)))
        except json.JSONDecodeError:
            raise DataError("wrong_type", f"{field} <tool_call> {k + 1}", f"is not JSON: {block.group(1)[:80]!r}",
                            'write <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>') from None
    head = text[:blocks[0].start()]
    return head[:-1] if head.endswith("\n") else head, calls


def prompt_completion(record: dict, options: dict) -> Conversation:
    """prompt/completion, prompt/response, query/response; a list-valued prompt is a message list."""
    prompt_key = "prompt" if "prompt" in record else "query"
    reply_key = "completion" if "completion" in record else "response"
    prompt, reply = record.get(prompt_key), record.get(reply_key)
    if isinstance(prompt, list) or isinstance(reply, list):  # TRL's conversational prompt/completion
        turns = (prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]) + (
            reply if isinstance(reply, list) else [{"role": "assistant", "content": reply}]
        )
        return messages({"messages": turns, "system": record.get("system"), "tools": record.get("tools"),
                         "images": record.get("images"), "image": record.get("image")}, options)
    return Conversation(
        system_messages(record)
        + [Message("user", required_text(record, prompt_key)), Message("assistant", required_text(record, reply_key))],
        images=_image_column(record),
    )


def qa(record: dict, options: dict) -> Conversation:
    """question (+ context before it, "context\\n\\nquestion") -> user; answer -> assistant."""
    question = required_text(record, "question")
    context = optional_text(record, "context")
    user = f"{context}\n\n{question}" if context else question
    return Conversation(system_messages(record)
                        + [Message("user", user), Message("assistant", required_text(record, "answer"))])


def cot(record: dict, options: dict) -> Conversation:
    """problem -> user; reasoning_steps + final_answer -> one assistant reply laid out by cot_layout.

    cot_layout is "steps" ("Step 1: ..." lines, then "Final answer: ..."), "think" (the steps inside
    <think>...</think>, then the answer), or a format string using {reasoning}, {steps}, {answer}.
    """
    steps = list_field(record, "reasoning_steps", "add reasoning_steps, a list of strings")
    steps = [text_field(step, f"reasoning_steps[{i}]") for i, step in enumerate(steps)]
    layout = options.get("cot_layout") or "steps"
    layout = COT_LAYOUTS.get(layout, layout)
    reply = layout.format(
        reasoning="\n".join(steps),
        steps="\n".join(f"Step {i}: {step}" for i, step in enumerate(steps, 1)),
        answer=required_text(record, "final_answer"),
    )
    return Conversation(system_messages(record)
                        + [Message("user", required_text(record, "problem")), Message("assistant", reply)])


def multitask(record: dict, options: dict) -> Conversation:
    """The instruction comes from task_type (TASK_TEMPLATES, overridable by task_templates).

    user = instruction + "\\n\\n" + source_text (or behind it, see with_input); assistant = target_text.
    Language codes are written as names (en -> English) where known.
    """
    task = required_text(record, "task_type")
    templates = {**TASK_TEMPLATES, **(options.get("task_templates") or {})}
    template = templates.get(task, DEFAULT_TASK_TEMPLATE)
    langs = {}
    for field in ("source_lang", "target_lang"):
        code = optional_text(record, field)
        if code is None and "{" + field + "}" in template:
            raise missing_field(field, f"task {task!r} needs {field} (a language code like 'en')")
        langs[field] = LANGUAGE_NAMES.get(code, code) if code else "unspecified"
    instruction = template.format(task_type=task, **langs)
    user = with_input(instruction, required_text(record, "source_text"), options)
    return Conversation(system_messages(record)
                        + [Message("user", user), Message("assistant", required_text(record, "target_text"))])


def dialog(record: dict, options: dict) -> Conversation:
    """turns of speaker/utterance -> messages through the roles map; other turn fields go to meta.

    Consecutive utterances of one speaker are one message (joined by newlines), as a chat log
    splits a turn over several lines. Each turn's other fields (timestamp, action, ...) are kept in
    meta["turns"], one dict per turn.
    """
    turns = list_field(record, "turns", "add turns, a list of {speaker, utterance} objects")
    out: list[Message] = []
    turn_meta: list[dict] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise wrong_type(f"turns[{i}]", turn, 'an object like {"speaker": "customer", "utterance": "hi"}')
        speaker = turn.get("speaker")
        if speaker is None:
            raise missing_field(f"turns[{i}].speaker", "each turn needs a speaker and an utterance")
        if not isinstance(speaker, str):
            raise wrong_type(f"turns[{i}].speaker", speaker, "a string (a speaker name)")
        if not (options.get("roles") and speaker in options["roles"]) and speaker not in ROLE_ALIASES:
            raise DataError(
                "unknown_role",
                f"turns[{i}].speaker",
                f"is {speaker!r}, which the speaker map does not name",
                f"map every speaker to a role, e.g. {role_hint(speaker, closest_role(speaker) or 'assistant', options)}"
                + ("" if options.get("syntax") == "cli" else " (--roles on the command line)"),
            )
        role = _role(speaker, f"turns[{i}].speaker", options)
        utterance = turn.get("utterance")
        if utterance is None:
            raise missing_field(f"turns[{i}].utterance", "each turn needs a speaker and an utterance")
        text = text_field(utterance, f"turns[{i}].utterance")
        turn_meta.append({k: v for k, v in turn.items() if k not in ("speaker", "utterance")})
        if out and out[-1].role == role:
            out[-1].content = f"{out[-1].content}\n{text}"
        else:
            out.append(Message(role, text))
    conversation = Conversation(system_messages(record) + out)
    if any(turn_meta):
        conversation.meta["turns"] = turn_meta
    return conversation


def firefly(record: dict, options: dict) -> Conversation:
    """conversation [{input, output}, ...] -> user/assistant pairs in order."""
    turns = list_field(record, "conversation", "add conversation, a list of {input, output} objects")
    out = system_messages(record)
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise wrong_type(f"conversation[{i}]", turn, 'an object like {"input": "hi", "output": "hello!"}')
        for field, role in (("input", "user"), ("output", "assistant")):
            if turn.get(field) is None:
                raise missing_field(f"conversation[{i}].{field}", "each turn needs input and output")
            out.append(Message(role, text_field(turn[field], f"conversation[{i}].{field}")))
    return Conversation(out)


def text(record: dict, options: dict) -> Conversation:
    """Continued pre-training: the text is one trained assistant message; meta["pretrain"] = True."""
    return Conversation([Message("assistant", required_text(record, "text"), train=True)], meta={"pretrain": True})


def caption(record: dict, options: dict) -> Conversation:
    """An image-caption pair: user = the image(s) as placeholders (+ caption_prompt), assistant = caption."""
    images = _image_column(record)
    if not images:
        raise missing_field("image", 'add the image\'s path, e.g. "image": "images/cat.png"')
    key = "caption" if record.get("caption") is not None else "text"
    user = "".join(image_refs.PLACEHOLDER for _ in images)
    prompt = options.get("caption_prompt")
    if prompt:
        user = f"{user}\n{prompt}"
    return Conversation(system_messages(record)
                        + [Message("user", user), Message("assistant", required_text(record, key))], images=images)


def preference(record: dict, options: dict) -> Conversation:
    """Preference pairs (chosen / rejected) in SFT data: refused with the way out. Reading preference data
    (`preference=True`) converts them with sftune.data.pairs.convert instead (load.converter)."""
    raise DataError(
        "unsupported",
        "",
        "is preference data (chosen / rejected), not SFT data",
        "build SFT records from the prompt and the chosen reply, or train it with a preference method (DPO)",
    )


FORMATS = {
    "alpaca": alpaca,
    "sharegpt": messages,
    "openai": messages,
    "prompt_completion": prompt_completion,
    "qa": qa,
    "cot": cot,
    "multitask": multitask,
    "dialog": dialog,
    "firefly": firefly,
    "text": text,
    "caption": caption,
    "preference": preference,
}
ALIASES = {"messages": "openai", "chatml": "openai", "pretrain": "text", "plain": "text"}
# The fields each format is recognized by; the first match wins, so the order matters.
DETECTORS = (
    ("preference", ("chosen", "rejected")),
    ("messages", ("messages",)),
    ("messages", ("conversations",)),
    ("firefly", ("conversation",)),
    ("alpaca", ("instruction", "output")),
    ("cot", ("problem", "reasoning_steps")),
    ("multitask", ("task_type", "source_text")),
    ("dialog", ("turns",)),
    ("qa", ("question", "answer")),
    ("prompt_completion", ("prompt", "completion")),
    ("prompt_completion", ("prompt", "response")),
    ("prompt_completion", ("query", "response")),
    ("caption", ("image", "caption")),
    ("caption", ("images", "caption")),
    ("caption", ("image", "text")),
    ("caption", ("images", "text")),
    ("text", ("text",)),
)
# Fields each format reads; any others are kept in meta["extra"].
KNOWN_FIELDS = {
    "alpaca": {"instruction", "input", "output", "system", "history", "images", "image"},
    "sharegpt": {"conversations", "messages", "system", "tools", "meta", "images", "image"},
    "openai": {"conversations", "messages", "system", "tools", "meta", "images", "image"},
    "prompt_completion": {"prompt", "completion", "query", "response", "system", "tools", "images", "image"},
    "qa": {"question", "answer", "context", "system"},
    "cot": {"problem", "reasoning_steps", "final_answer", "system"},
    "multitask": {"task_type", "source_lang", "target_lang", "source_text", "target_text", "system"},
    "dialog": {"turns", "system"},
    "firefly": {"conversation", "system"},
    "text": {"text"},
    "caption": {"image", "images", "caption", "text", "system"},
    "preference": {"prompt", "chosen", "rejected", "system", "tools", "instruction", "input", "history",
                   "conversations", "messages", "meta"},
}


# Fields of which a format reads one, the first given (not null); load counts the others a record also has
# as not kept (a second conversation list is not trained on silently). A field's companions go with it.
ALTERNATIVES = {
    "alpaca": (("images", "image"),),
    "sharegpt": (("messages", "conversations"), ("images", "image")),
    "openai": (("messages", "conversations"), ("images", "image")),
    "prompt_completion": (("prompt", "query"), ("completion", "response"), ("images", "image")),
    "caption": (("images", "image"), ("caption", "text")),
    "preference": (("prompt", "instruction", "messages", "conversations"),),
}
COMPANIONS = {"instruction": ("input", "history")}


def unread_alternatives(record: dict, fmt: str) -> dict[str, str]:
    """{field: the field read instead} for the fields of ALTERNATIVES that `record` gives but `fmt` does not read."""
    out = {}
    for group in ALTERNATIVES.get(fmt, ()):
        given = [name for name in group if record.get(name) is not None]
        for name in given[1:]:
            out.update({field: given[0] for field in (name, *COMPANIONS.get(name, ()))
                        if record.get(field) is not None})
    return out


def format_name(name: str) -> str:
    """A format name or alias -> the canonical name; unknown names raise with the list of names."""
    name = ALIASES.get(name, name)
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; use one of {', '.join(FORMATS)} (or {', '.join(ALIASES)})")
    return name


def detect(record: dict) -> str | None:
    """The format a record's fields give away, or None."""
    for name, fields in DETECTORS:
        if all(record.get(field) is not None for field in fields):
            if name == "messages":
                items = record.get(fields[0])
                first = items[0] if isinstance(items, list) and items else None
                return "sharegpt" if isinstance(first, dict) and "from" in first else "openai"
            return name
    return None


def _get_path(record: Any, path: str) -> Any:
    """A value by a dotted path with list indexes, e.g. "meta.question" or "turns[0].text"."""
    value = record
    for part in path.replace("[", ".").replace("]", "").split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return None
        if value is None:
            return None
    return value


def remap(record: dict, columns: dict[str, str]) -> dict:
    """The explicit column mapping {format field: source path}: a record holding only those fields."""
    return {target: _get_path(record, source) for target, source in columns.items()}
