"""Hostile requests against a real server on loopback: every bad body is a 4xx in OpenAI's error shape naming
the field, none a 500 (random bodies too, whose answers keep their counts and equal greedy generation); the key is checked before the body is read; bodies are bounded in
size and time; the docs need the key; a server open to the network without a key says so."""

from __future__ import annotations

import json
import socket

import httpx2 as httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sftune.generation import GenerationOptions, generate
from sftune.serve import adapters
from sftune.serve.background import running
from sftune.serve.server import create_app
from tests.serve.conftest import openai_error

KEY = "sekret"
USER = [{"role": "user", "content": "Hi"}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def loaded(base_dir):
    return adapters.load(str(base_dir), template="chatml")  # a template with a tool-call syntax


@pytest.fixture(scope="module")
def open_server(loaded, base_dir):
    model, tokenizer, names = loaded
    with running(create_app(model, tokenizer, names, max_batch_size=8)) as url:
        yield url, str(base_dir)


@pytest.fixture(scope="module")
def keyed_server(loaded):
    model, tokenizer, names = loaded
    app = create_app(model, tokenizer, names, api_key=KEY, max_body_bytes=64 * 1024, body_timeout_s=1.0)
    with running(app, header_timeout_s=1.0) as url:
        yield url


def _post(url, route, body):
    """POST `body` as a JSON client writes it (a lone surrogate travels as its \\ud800 escape)."""
    return httpx.post(f"{url}/v1/{route}", content=json.dumps(body).encode(),
                      headers={"content-type": "application/json"}, timeout=60)


def _chat(url, model, **fields):
    return _post(url, "chat/completions", {"model": model, "max_tokens": 2, "temperature": 0, **fields})


def _completion(url, model, **fields):
    return _post(url, "completions", {"model": model, "max_tokens": 2, **fields})


@pytest.mark.parametrize("route, fields, param", [
    ("chat", {"messages": [{"role": "user", "content": "caf\ud800"}]}, "messages[0].content"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
     "messages[0].content[0].text"),
    ("completions", {"prompt": "x\ud83d"}, "prompt"),
    ("completions", {"prompt": ["ok", "\udc80"]}, "prompt[1]"),
    ("chat", {"messages": USER, "seed": 2**64, "temperature": 1}, "seed"),
    ("chat", {"messages": USER, "seed": 2**63, "temperature": 1}, "seed"),
    ("completions", {"prompt": "", "seed": -(2**63) - 1}, "seed"),
    ("completions", {"prompt": ""}, "prompt"),
])
def test_bodies_that_gave_500_get_400_naming_the_field(open_server, route, fields, param):
    url, model = open_server
    post = _chat if route == "chat" else _completion
    error = openai_error(post(url, model, **fields), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_the_whole_seed_range_samples(open_server):
    url, model = open_server
    for seed in (-(2**63), 0, 2**63 - 1):
        assert _chat(url, model, messages=USER, seed=seed, temperature=1).status_code == 200


@pytest.mark.parametrize("route, fields, param", [
    ("chat", {"messages": [{"role": "system", "content": "Be brief."}]}, "messages"),
    ("chat", {"messages": [{"role": "assistant", "content": "Hello"}, *USER]}, "messages[0].role"),
    ("chat", {"messages": [*USER, {"role": "tool", "tool_call_id": "call_1", "content": "18C"}]},
     "messages[1].tool_call_id"),
    ("chat", {"messages": [*USER, {"role": "assistant", "tool_calls": [CALL]},
                           {"role": "tool", "tool_call_id": "call_2", "content": "18C"}]}, "messages[2].tool_call_id"),
    ("chat", {"messages": [*USER, {"role": "assistant", "tool_calls": [CALL]}, *USER]}, "messages[2]"),
    ("chat", {"messages": [*USER, {"role": "wizard", "content": "x"}]}, "messages[1].role"),
    ("chat", {"messages": USER, "max_tokens": "5"}, "max_tokens"),
    ("chat", {"messages": USER, "max_tokens": True}, "max_tokens"),
    ("completions", {"prompt": "x", "max_tokens": False}, "max_tokens"),
    ("chat", {"messages": USER, "tools": [{"type": "function"}]}, "tools[0].function"),
    ("chat", {"messages": USER, "tools": [{"type": "function", "function": {"name": 5}}]}, "tools[0].function.name"),
    ("chat", {"messages": USER, "tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
     "tools[0].function.parameters"),
    ("completions", {"prompt": []}, "prompt"),
    ("completions", {"prompt": ["a", ""]}, "prompt[1]"),
    ("chat", {"messages": USER, "stream_options": {"include_usage": True}}, "stream_options"),
])
def test_requests_openai_refuses_get_400(open_server, route, fields, param):
    url, model = open_server
    post = _chat if route == "chat" else _completion
    assert openai_error(post(url, model, **fields), 400)["param"] == param


def test_stream_options_with_stream_give_the_usage(open_server):
    url, model = open_server
    body = {"model": model, "messages": USER, "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        data = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]" and json.loads(data[-2])["usage"]["completion_tokens"] <= 2


def test_a_tool_conversation_in_openai_order_is_answered(open_server):
    url, model = open_server
    messages = [{"role": "system", "content": "You call tools."}, *USER,
                {"role": "assistant", "content": None, "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
                {"role": "tool", "tool_call_id": "call_2", "content": "19C"},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"}]
    reply = _chat(url, model, messages=messages, tools=[TOOL])
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"


def _raw(url: str, head: str, body: bytes = b"", timeout: float = 20) -> bytes:
    """What the server answers to a request sent by hand (headers, then `body`, then nothing more)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        conn.sendall(head.encode() + b"\r\n\r\n" + body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            piece = conn.recv(65536)
            if not piece:
                break
            answer += piece
    return answer


def test_the_key_is_checked_before_the_body_is_read(keyed_server):
    url = keyed_server
    error = openai_error(httpx.post(f"{url}/v1/chat/completions", content=b"{not json",
                              headers={"content-type": "application/json"}, timeout=30), 401)
    assert error["code"] == "invalid_api_key" and "Authorization: Bearer" in error["message"]
    # 100 MB announced and none of it sent: the answer comes from the headers alone
    answer = _raw(url, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       "Content-Length: 100000000")
    assert answer.startswith(b"HTTP/1.1 401")


def test_a_body_over_the_limit_gets_413(keyed_server):
    url = keyed_server
    auth = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    big = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 100_000}]}).encode()
    assert openai_error(httpx.post(f"{url}/v1/chat/completions", content=big, headers=auth, timeout=30),
                  413)["code"] == "request_too_large"
    # the same body sent in chunks, without a Content-Length
    chunked = httpx.post(f"{url}/v1/chat/completions", content=iter([big[:40_000], big[40_000:]]), headers=auth,
                         timeout=30)
    assert "--max-body-mb" in openai_error(chunked, 413)["message"]


def test_a_slow_body_gets_408(keyed_server):
    answer = _raw(keyed_server, f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                                "Content-Type: application/json\r\nContent-Length: 100", b'{"model": ')
    assert answer.startswith(b"HTTP/1.1 408") and b"--body-timeout" in answer


@pytest.mark.parametrize("sent", [b"", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"],
                         ids=["nothing", "headers never finished"])
def test_slow_headers_get_408_and_the_connection_closed(keyed_server, sent):
    """A slowloris client (headers sent a byte at a time, or never) is answered and disconnected, not held open."""
    host, port = keyed_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as conn:
        conn.sendall(sent)
        answer = b""
        while piece := conn.recv(65536):  # until the server closes the connection
            answer += piece
    assert answer.startswith(b"HTTP/1.1 408") and b"--header-timeout" in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"


def test_headers_in_time_then_a_kept_alive_second_request_are_answered(keyed_server):
    """The header deadline is per request: a kept-alive connection's next request gets its own."""
    with httpx.Client(base_url=keyed_server, timeout=30) as client:
        for _ in range(2):
            assert client.get("/health").json()["status"] == "ok"


def test_the_docs_need_the_key(keyed_server):
    url = keyed_server
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert openai_error(httpx.get(f"{url}{path}", timeout=30), 401)["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/openapi.json", headers={"authorization": f"Bearer {KEY}"}, timeout=30).status_code == 200
    assert httpx.get(f"{url}/health", timeout=30).json()["status"] == "ok"


@pytest.mark.parametrize("host, key, warned", [("0.0.0.0", None, True), ("192.168.1.5", None, True),
                                               ("my-host.example", None, True), ("0.0.0.0", KEY, False),
                                               ("127.0.0.1", None, False), ("localhost", None, False),
                                               ("::1", None, False)])
def test_a_server_open_to_the_network_without_a_key_warns(base_dir, monkeypatch, host, key, warned):
    import uvicorn
    from rich.console import Console

    from sftune.serve import server

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.update(kwargs))
    console = Console(record=True, width=200)
    server.serve(str(base_dir), host=host, api_key=key, console=console)
    printed = console.export_text()
    assert ("without an API key" in printed) == warned and started["host"] == host
    assert started["timeout_keep_alive"] > 0


def test_qlora_adapters_load_like_a_qlora_base():
    import torch
    from transformers import BitsAndBytesConfig

    def qlora(**fields):
        return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32,
                                                          **fields)}

    assert adapters.same_loading(qlora(bnb_4bit_quant_type="nf4"), qlora(bnb_4bit_quant_type="nf4"))
    assert not adapters.same_loading(qlora(bnb_4bit_quant_type="nf4"), qlora(bnb_4bit_quant_type="fp4"))
    assert not adapters.same_loading(qlora(), {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)})
    assert not adapters.same_loading(qlora(), {}) and adapters.same_loading({}, {})


# --- random bodies ------------------------------------------------------------------------------------------

JUNK = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
                    | st.text(st.characters(exclude_categories=()), max_size=8) | st.sampled_from(["\ud800", "", "user", "x"]),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)
ROLE = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "bot"]) | JUNK
CONTENT = (st.text(max_size=12) | st.sampled_from(["", "\ud800x", "<tool_call>\n{}\n</tool_call>"]) | JUNK
           | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "refusal"]) | JUNK},
                                            optional={"text": st.text(max_size=8) | JUNK,
                                                      "image_url": st.fixed_dictionaries({"url": JUNK}) | JUNK}),
                      max_size=2))
MESSAGE = st.fixed_dictionaries({"role": ROLE}, optional={
    "content": CONTENT, "name": JUNK, "tool_call_id": st.sampled_from(["call_1", "call_2"]) | JUNK,
    "tool_calls": st.lists(st.fixed_dictionaries({"id": st.sampled_from(["call_1", "call_2"]) | JUNK},
                                                 optional={"type": st.just("function") | JUNK,
                                                           "function": st.fixed_dictionaries(
                                                               {"name": st.just("f") | JUNK,
                                                                "arguments": st.just("{}") | JUNK}) | JUNK}),
                           max_size=2) | JUNK})
SMALL_MAX = st.integers(1, 3) | st.sampled_from([0, -1, 2**64, "2", True, 1.5, None])
# Values OpenAI takes, so that a good share of the bodies is answered (and generation runs on random input)
TAME = {"temperature": st.sampled_from([0, 0, 0, 0.7, 1]),  # greedy answers are compared with generation
        "top_p": st.sampled_from([0.5, 1]),
        "seed": st.integers(-(2**63), 2**63 - 1), "stop": st.sampled_from(["\n", ["a", "b"], [], ""]),
        "stream": st.booleans(), "user": st.text(max_size=4)}
WILD = {**{key: value | JUNK for key, value in TAME.items()}, "seed": st.integers(-(2**65), 2**65) | JUNK,
        "stream_options": JUNK, "n": JUNK, "logprobs": JUNK, "logit_bias": JUNK, "presence_penalty": JUNK}
USER_MESSAGE = st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=12)})


def _body(data, model: str, chat: bool) -> tuple[object, bool]:
    """A body for the route and whether it is tame (every field of a type OpenAI takes, the served model,
    max_tokens 1 to 3) or wild (any field of any type, or no object at all); max_tokens is always there and small
    when it is valid, so an accepted body answers in a few tokens."""
    if data.draw(st.booleans()):
        fields = {"model": st.just(model), "max_tokens": st.integers(1, 3)}
        if chat:
            fields["messages"] = st.lists(USER_MESSAGE, min_size=1, max_size=2) | st.lists(MESSAGE, max_size=3)
        else:
            fields["prompt"] = st.text(min_size=1, max_size=12) | st.lists(st.text(max_size=6), max_size=3)
        extra = {"tools": st.lists(st.just(TOOL), max_size=1)} if chat else {}
        return data.draw(st.fixed_dictionaries(fields, optional={**TAME, **extra})), True
    extra = ({"messages": st.lists(MESSAGE, max_size=4) | JUNK, "tools": st.lists(st.just(TOOL) | JUNK, max_size=2),
              "tool_choice": JUNK, "max_completion_tokens": SMALL_MAX, "response_format": JUNK}
             if chat else {"prompt": st.text(max_size=12) | st.lists(st.text(max_size=6), max_size=3) | JUNK,
                           "echo": JUNK, "suffix": JUNK})
    return data.draw(st.fixed_dictionaries({"model": st.just(model) | JUNK, "max_tokens": SMALL_MAX},
                                           optional={**WILD, **extra}) | JUNK), False


def _events(text: str) -> list[dict]:
    """The JSON events of a streamed answer, checked to end with [DONE]."""
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", text
    return [json.loads(event) for event in events[:-1]]


def _prompt_ids(loaded, body: dict, chat: bool) -> list[list[int]] | None:
    """The token ids of each prompt of a tame body, as the server reads them; None where the body's messages are
    not plain user texts or it gives tools (then what the server renders is not this test's to redo)."""
    model, tokenizer, names = loaded
    if not chat:
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        return [tokenizer(text, add_special_tokens=True)["input_ids"] for text in prompts]
    plain = all(m.get("role") == "user" and type(m.get("content")) is str for m in body["messages"])
    if not plain or body.get("tools"):
        return None
    rendered = names[body["model"]].template.render(body["messages"], add_generation_prompt=True)
    return [tokenizer(rendered, add_special_tokens=False)["input_ids"]]


def _check_answer(loaded, body: dict, chat: bool, response) -> None:
    """An answered tame body: one choice per prompt, in order, one finish reason each; usage adds up over the
    prompts' own token counts and stays within max_tokens; a greedy body's text (streamed or not) is
    sftune.generation's greedy answer to the same prompt, with the same stop strings."""
    prompts = _prompt_ids(loaded, body, chat)
    if body.get("stream"):
        chunks = _events(response.text)
        assert not any("error" in chunk for chunk in chunks), chunks
        choices = [chunk["choices"][0] for chunk in chunks if chunk["choices"]]
        texts = ["".join((c["delta"].get("content") or "") if chat else c["text"] for c in choices)]
        assert len([c for c in choices if c["finish_reason"]]) == 1 and choices[-1]["finish_reason"], chunks
        usage = next((chunk["usage"] for chunk in chunks if chunk.get("usage")), None)
    else:
        reply = response.json()
        assert reply["object"] == ("chat.completion" if chat else "text_completion")
        assert [c["index"] for c in reply["choices"]] == list(range(len(prompts) if prompts else 1))
        assert all(c["finish_reason"] in ("stop", "length", "tool_calls") for c in reply["choices"])
        texts = [(c["message"]["content"] or "") if chat else c["text"] for c in reply["choices"]]
        usage = reply["usage"]
    if usage is not None:
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert 0 <= usage["completion_tokens"] <= body["max_tokens"] * len(texts)
        if prompts is not None:
            assert usage["prompt_tokens"] == sum(map(len, prompts))
    if prompts is None or body.get("temperature") != 0:
        return
    model, tokenizer, names = loaded
    stop = body.get("stop") or ()
    options = GenerationOptions(max_new_tokens=body["max_tokens"], stop=tuple(filter(None, [stop] if isinstance(
        stop, str) else stop)))
    done = generate(model, tokenizer, prompts, options, stop_token_ids=names[body["model"]].stop_token_ids)
    event("greedy answer compared")
    assert texts == [d.text for d in done], (body, texts)
    if usage is not None:
        assert usage["completion_tokens"] == sum(d.completion_tokens for d in done)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_random_bodies_never_get_a_500(open_server, loaded, data):
    url, model = open_server
    chat = data.draw(st.booleans())
    body, tame = _body(data, model, chat)
    response = _post(url, "chat/completions" if chat else "completions", body)
    event(f"status {response.status_code}")  # pytest --hypothesis-show-statistics: how many were answered
    assert response.status_code < 500, (body, response.text)
    if response.status_code != 200:
        openai_error(response, response.status_code)
    elif tame:
        _check_answer(loaded, body, chat, response)
