"""Tool-call data: every defect kind found where it is; OpenAI / ShareGPT / Hermes conversions lose nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftune.data import Conversation, Message, read
from sftune.data.toolcalls import KINDS, check_tools
from sftune.data.writers import write_jsonl

FIXTURE = Path(__file__).parent.parent / "fixtures" / "data" / "tool_defects.jsonl"
EXPECTED = {  # kind -> the one example's place and field in the fixture
    "no_tools_declared": "1 messages[1].content",
    "unknown_tool": "2 messages[1].content",
    "bad_arguments": "3 messages[1].content",
    "result_without_call": "4 messages[3]",
    "call_without_result": "5 messages[3]",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_each_tool_call_defect_is_found_at_its_line_and_field(kind):
    found = check_tools(read([str(FIXTURE)]))
    assert set(found["kinds"]) == set(KINDS)
    assert found["kinds"][kind]["count"] == 1, found["kinds"][kind]
    assert found["kinds"][kind]["examples"][0].startswith(f"{FIXTURE}:{EXPECTED[kind]}:")
    assert found["conversations"] == 6 and found["calls"] == 7


def test_schema_errors_name_the_argument():
    found = check_tools(read([str(FIXTURE)]))
    assert "arguments['city']: 42 is not of type 'string'" in found["kinds"]["bad_arguments"]["examples"][0]


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]


def call(city: str) -> dict:
    return {"name": "get_weather", "arguments": {"city": city}}


RICH = Conversation([
    Message("system", "Use tools."),
    Message("user", "Weather in Paris and Zürich?"),
    Message("tool_call", json.dumps([call("Paris"), call("Zürich")], ensure_ascii=False)),
    Message("tool", '{"temp": 21}'),
    Message("tool", "18"),
    Message("assistant", "<think>\nboth known\n</think>\n\nParis 21°C, Zürich 18°C."),
    Message("user", "And Oslo?"),
    Message("assistant", "Let me check.\nOne moment."),
    Message("tool_call", json.dumps(call("Oslo"))),
    Message("tool", "<b>5</b>"),
    Message("assistant", "5°C."),
], tools=TOOLS)


def _roundtrip(conversation: Conversation, style: str, tmp_path: Path) -> Conversation:
    path = tmp_path / f"{style}.jsonl"
    assert write_jsonl([conversation], path, style) == 1
    (back,) = list(read([str(path)]))
    return back


def _without_ids(m: Message) -> dict:
    """A message as its meaning without call ids (ShareGPT and Hermes have none; OpenAI requires them)."""
    from sftune.data.toolcalls import call_text, tool_calls

    content = call_text(tool_calls(m.content)) if m.role == "tool_call" else m.content
    return {**m.to_dict(), "content": content, "tool_call_id": None}


def _same(a: Conversation, b: Conversation, ids: bool = False) -> None:
    shown = (lambda m: m.to_dict()) if ids else _without_ids
    assert [shown(m) for m in a.messages] == [shown(m) for m in b.messages]
    assert a.tools == b.tools


@pytest.mark.parametrize("style", ["openai", "sharegpt", "hermes", "messages"])
def test_each_shape_reads_back_as_the_same_conversation(style, tmp_path):
    _same(_roundtrip(RICH, style, tmp_path), RICH, ids=style == "messages")


def with_ids(*ids: str) -> Conversation:
    """RICH with the data's own call ids, its results naming them."""
    calls = iter(ids)
    results = iter(ids)
    messages = []
    for m in RICH.messages:
        if m.role == "tool_call":
            found = json.loads(m.content)
            found = [{**c, "id": next(calls)} for c in (found if isinstance(found, list) else [found])]
            m = Message("tool_call", json.dumps(found[0] if len(found) == 1 else found, ensure_ascii=False))
        elif m.role == "tool":
            m = Message("tool", m.content, tool_call_id=next(results))
        messages.append(m)
    return Conversation(messages, tools=TOOLS)


@pytest.mark.parametrize("style", ["openai", "messages"])
def test_call_ids_the_data_gave_are_kept_through_shapes_that_hold_them(style, tmp_path):
    conversation = with_ids("toolu_a", "toolu_b", "toolu_c")
    _same(_roundtrip(conversation, style, tmp_path), conversation, ids=True)


def test_a_chain_of_conversions_loses_nothing_and_keeps_train_flags(tmp_path):
    conversation = RICH
    for style in ("openai", "hermes", "sharegpt", "openai", "messages"):
        conversation = _roundtrip(conversation, style, tmp_path)
    _same(conversation, RICH)
    flagged = Conversation([Message("user", "Paris?"), Message("tool_call", json.dumps(call("Paris")), False),
                            Message("tool", "21"), Message("assistant", "21°C", weight=0.5)], tools=TOOLS)
    for style in ("openai", "hermes"):
        _same(_roundtrip(flagged, style, tmp_path), flagged)


def test_the_shapes_are_what_other_tools_read(tmp_path):
    from sftune.data.toolcalls import to_hermes, to_openai
    from sftune.data.writers import to_sharegpt

    openai = to_openai(RICH)["messages"]
    assert openai[2] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}}]}
    assert openai[3]["tool_call_id"] == "call_1" and openai[4]["tool_call_id"] == "call_2"
    hermes = to_hermes(RICH)["messages"]
    assert hermes[7]["content"] == ('Let me check.\nOne moment.\n<tool_call>\n{"name": "get_weather", "arguments": '
                                    '{"city": "Oslo"}}\n</tool_call>')
    assert hermes[8]["content"] == "<tool_response>\n<b>5</b>\n</tool_response>"
    assert [t["from"] for t in to_sharegpt(RICH)["conversations"]][:4] == ["human", "function_call", "observation",
                                                                          "observation"]


def test_cli_convert_and_check_tools(tmp_path):
    from typer.testing import CliRunner

    from sftune.cli import app

    runner = CliRunner()
    src = tmp_path / "in.jsonl"
    write_jsonl([RICH], src)
    out = runner.invoke(app, ["data", "convert", str(src), "-o", str(tmp_path / "h.jsonl"), "--to", "hermes"])
    assert out.exit_code == 0, out.output
    _same(next(iter(read([str(tmp_path / "h.jsonl")]))), RICH)
    out = runner.invoke(app, ["data", "check", str(FIXTURE), "--tools", "--json"])
    found = json.loads(out.output.strip().splitlines()[-1])["tools"]
    assert {k for k, v in found["kinds"].items() if v["count"]} == set(EXPECTED)


def _qwen_results_turn() -> str:
    """The user turn that Qwen2.5's official template renders for two tool results, cut from its render."""
    from tests.templates.chats import TOOL_CHAT, TOOLS, official

    text = official("qwen2.5", TOOL_CHAT, "", "<|im_end|>", TOOLS)
    start = text.index("<|im_start|>user\n<tool_response>") + len("<|im_start|>user\n")
    return text[start:text.index("<|im_end|>", start)]


def test_tool_results_in_a_qwen_user_turn_or_a_hermes_tool_message_read_as_tool_messages(tmp_path):
    """Qwen's templates put a run of results into one user turn, Hermes data into one tool message:
    each <tool_response> block is read as its own tool message, and converting back wraps each again."""
    from tests.templates.chats import TOOL_CHAT, TOOLS

    turn = _qwen_results_turn()
    assert turn == '<tool_response>\n{"temp": 21}\n</tool_response>\n<tool_response>\n{"temp": 18}\n</tool_response>'
    expected = next(iter(read_records([{"messages": TOOL_CHAT, "tools": TOOLS}], tmp_path)))
    for role in ("user", "tool"):
        shown = TOOL_CHAT[:3] + [{"role": role, "content": turn}] + TOOL_CHAT[5:]
        (got,) = read_records([{"messages": shown, "tools": TOOLS}], tmp_path)
        _same(got, expected)
        assert [m.content for m in got.messages if m.role == "tool"] == ['{"temp": 21}', '{"temp": 18}']
        for style in ("hermes", "openai", "sharegpt", "messages"):
            _same(_roundtrip(got, style, tmp_path), expected)
    from sftune.data.toolcalls import to_hermes

    wrapped = [m["content"] for m in to_hermes(expected)["messages"] if m["role"] == "tool"]
    assert "\n".join(wrapped) == turn  # each result wrapped as Qwen's template wraps it


def test_a_user_turn_of_tool_responses_is_a_query_where_no_call_precedes_it(tmp_path):
    """Only after calls is such a user turn a tool result (Qwen3 keeps such turns apart from queries)."""
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "<tool_response>\nx\n</tool_response>"}, {"role": "assistant", "content": "ok"}]
    (got,) = read_records([{"messages": chat}], tmp_path)
    assert [m.role for m in got.messages] == ["user", "assistant", "user", "assistant"]
    unclosed = [{"role": "tool", "content": "<tool_response>\nx"}]
    assert next(iter(read_records([{"messages": [{"role": "user", "content": "q"},
                                                 {"role": "assistant", "content": None, "tool_calls": [
                                                     {"type": "function", "function": call("Oslo")}]}] + unclosed}],
                                  tmp_path))).messages[-1].content == "<tool_response>\nx"


def read_records(records: list[dict], tmp_path: Path) -> list[Conversation]:
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return list(read([str(path)]))


def parallel_turn(calls: list, results: list) -> dict:
    """A user turn, one assistant message with `calls` (id, city), then tool results (tool_call_id or None, text)."""
    return {"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {**({"id": i} if i is not None else {}), "type": "function",
             "function": {"name": "get_weather", "arguments": json.dumps({"city": c})}} for i, c in calls]},
        *({"role": "tool", "content": text, **({"tool_call_id": i} if i is not None else {})} for i, text in results),
        {"role": "assistant", "content": "Done."}]}


TWO = [("a", "Paris"), ("b", "Oslo")]
ID_ERRORS = {  # case -> (calls, results, the field named, words of the problem)
    "unknown id": (TWO, [("a", "21"), ("z", "5")], "messages[3].tool_call_id", "'z', which no call"),
    "result without id beside ones with": (TWO, [("b", "5"), (None, "21")], "messages[3].tool_call_id", "is missing"),
    "answered twice": (TWO, [("a", "21"), ("a", "22")], "messages[3].tool_call_id", "answers already"),
    "call without its result": (TWO, [("b", "5")], "messages[1].tool_calls[0]", "has no result"),
    "two calls, one id": ([("a", "Paris"), ("a", "Oslo")], [("a", "21")], "messages[1].tool_calls[1].id", "too"),
    "call without id": ([("a", "Paris"), (None, "Oslo")], [("a", "21")], "messages[1].tool_calls[1].id", "is missing"),
}


@pytest.mark.parametrize("case", sorted(ID_ERRORS))
def test_results_and_calls_that_do_not_match_by_id_are_located_errors(case, jsonl):
    from sftune.data import DataError

    calls, results, field, problem = ID_ERRORS[case]
    path = jsonl([parallel_turn(calls, results)])
    with pytest.raises(DataError) as caught:
        list(read(path))
    error = caught.value
    assert (error.reason, error.field, error.location) == ("tool_call_id", field, "line 1")
    assert problem in error.problem and error.fix


def test_results_are_put_in_their_calls_order_and_keep_their_ids(jsonl):
    (conversation,) = read(jsonl([parallel_turn(TWO, [("b", "5"), ("a", "21")])]))
    results = [(m.tool_call_id, m.content) for m in conversation.messages if m.role == "tool"]
    assert results == [("a", "21"), ("b", "5")]
    without_ids = parallel_turn([(None, "Paris"), (None, "Oslo")], [(None, "21"), (None, "5")])
    (positional,) = read(jsonl([without_ids], "plain.jsonl"))  # no ids: the order given is the pairing
    assert [m.content for m in positional.messages if m.role == "tool"] == ["21", "5"]


def test_templates_get_the_ids_the_data_gave(jsonl):
    from sftune.templates.messages import normalize_messages, to_hf_messages

    (conversation,) = read(jsonl([parallel_turn(TWO, [("b", "5"), ("a", "21")])]))
    hf = to_hf_messages(normalize_messages(conversation))
    assert [c["id"] for c in hf[1]["tool_calls"]] == ["a", "b"]
    assert hf[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert [(m["tool_call_id"], m["content"]) for m in hf[2:4]] == [("a", "21"), ("b", "5")]
