"""The OpenAI-compatible server: FastAPI routes over the dynamic batcher.

    app = create_app(model, tokenizer, names, api_key=None, max_batch_size=16)
    uvicorn.run(app, host="127.0.0.1", port=8000)

/v1/chat/completions renders the messages with the served model's training template (tools too) and
reads tool calls back with its family's syntax (a vision-language run also takes `image_url` parts
holding data: URLs, see serve/images.py); /v1/completions takes raw text; /v1/models lists every
name a request may ask for. Every error is answered in OpenAI's error shape, never with a traceback, and a
request body can cause no 500: a body the rules refuse (protocol.py, rules.py) is a 400 naming the field,
and anything unexpected while reading the body into a prompt is a 400 too (a 500 is left for the model's
own failures). The API key, the body's size and its read deadline are checked before the app reads it
(guard.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
from contextlib import asynccontextmanager, contextmanager
from typing import Any, AsyncIterator, Iterator

from fastapi import FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException

from sftune import modality
from sftune.serve import images, reasoning
from sftune.serve import tools as tool_calls
from sftune.serve.adapters import Served, activate
from sftune.serve.batching import Batcher, Request
from sftune.serve.guard import HEADER_TIMEOUT_S, Guard, protocol
from sftune.serve.protocol import (ApiError, ChatRequest, CompletionRequest, chat_chunk, chat_message, error_body,
                                   new_id, now, usage)

log = logging.getLogger("sftune.serve")
DISCONNECT_POLL_S = 0.5  # how often a waiting non-streamed request checks that its client is still there
MAX_BODY_MB = 8.0  # a request body's default limit: long chats and a few data-URL images fit
BODY_TIMEOUT_S = 60.0  # a request body still arriving this long after the request began is refused (408)
KEEP_ALIVE_S = 5  # an idle kept-alive connection is closed after this long


def context_length(model: Any, tokenizer: Any) -> int:
    """The most tokens (prompt + answer) the model takes: its config's positions, else the tokenizer's limit."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return int(getattr(tokenizer, "model_max_length", 2048))


def create_app(model: Any, tokenizer: Any, names: dict[str, Served], *, api_key: str | None = None,
               max_batch_size: int = 16, max_context: int | None = None, max_body_bytes: int = int(MAX_BODY_MB * 2**20),
               body_timeout_s: float = BODY_TIMEOUT_S) -> FastAPI:
    """The FastAPI app answering as `names` (see adapters.load); its batcher runs while the app runs. With an
    api_key every path but /health needs it (checked before the body is read, see guard.py)."""
    text = modality.text(tokenizer)  # a name served without a modality (built by hand) answers in text
    names = {name: s if s.modality is not None else dataclasses.replace(s, modality=text) for name, s in names.items()}
    batcher = Batcher(model, tokenizer, lambda adapter: activate(model, adapter), max_batch_size=max_batch_size)
    limit = max_context or context_length(model, tokenizer)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="sftune", lifespan=lifespan)
    app.state.batcher = batcher
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s)
    _error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and load: requests in the running batch and waiting for it."""
        return {"status": "ok", **batcher.counts()}

    @app.get("/v1/models", )
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "sftune"}
                                           for name in names]}

    @app.post("/v1/chat/completions", )
    async def chat_completions(body: ChatRequest, http: HttpRequest):
        body.unsupported()
        served = _served(names, body.model)
        tools = body.active_tools
        style = tool_calls.tool_style(served.template)
        whole = bool(tools) or style == "harmony"  # read whole: calls, or gpt-oss's channels, parsed out
        if tools and style is None:
            raise ApiError(400, f"model {body.model!r} was trained with template {served.template.name!r}, which has "
                                "no tool-call syntax; send the request without tools", param="tools")
        with _body_at_fault("messages"):
            ids, model_inputs = images.prompt(body.messages, tools, served, model)
        request = Request(ids, body.options(_room(ids, body.requested_max_tokens, limit, "messages")),
                          frozenset(served.stop_token_ids), adapter=served.adapter, stream=body.stream and not whole,
                          special_tokens=reasoning.special_tokens(served.template), model_inputs=model_inputs)
        if body.stream:
            return EventSourceResponse(_chat_stream(batcher, request, http, body, served.template, tokenizer),
                                       ping=15)
        done = await _answer(batcher, request, http)
        thought, text, calls = _parsed(done, served.template, tools, tokenizer)
        message = chat_message(text, calls, thought, reasoning.style(served.template) is not None)
        return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": body.model,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": "tool_calls" if calls else done.finish_reason}],
                "usage": usage(done.prompt_tokens, done.completion_tokens)}

    @app.post("/v1/completions", )
    async def completions(body: CompletionRequest, http: HttpRequest):
        body.unsupported()
        served = _served(names, body.model)
        if body.stream and len(body.prompts) != 1:
            raise ApiError(400, "stream takes one prompt; send a list of prompts without stream", param="prompt")
        requests = []
        for k, text in enumerate(body.prompts):
            with _body_at_fault(f"prompt[{k}]"):
                ids = tokenizer(text, add_special_tokens=True)["input_ids"]
            requests.append(Request(ids, body.options(_room(ids, body.requested_max_tokens, limit, f"prompt[{k}]")),
                                    frozenset(served.stop_token_ids), adapter=served.adapter, stream=body.stream))
        if body.stream:
            return EventSourceResponse(_completion_stream(batcher, requests[0], http, body), ping=15)
        done = await asyncio.gather(*(_answer(batcher, r, http) for r in requests))
        return {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": body.model,
                "choices": [{"index": k, "text": d.text, "logprobs": None, "finish_reason": d.finish_reason}
                            for k, d in enumerate(done)],
                "usage": usage(sum(d.prompt_tokens for d in done), sum(d.completion_tokens for d in done))}

    return app


@contextmanager
def _body_at_fault(field: str) -> Iterator[None]:
    """Turn any error while reading the request's `field` into a prompt (render, tokenize) into a 400 naming it:
    the body passed validation, so what fails here is the body's content, not the server."""
    try:
        yield
    except ApiError:
        raise
    except Exception as err:  # noqa: BLE001  (a body must never cause a 500)
        log.info("request refused while reading %s: %s: %s", field, type(err).__name__, err)
        raise ApiError(400, f"{field}: {err}", param=field) from None


def _served(names: dict[str, Served], model: str) -> Served:
    if model not in names:
        raise ApiError(404, f"model {model!r} is not served here; served models: {', '.join(names)} "
                            "(GET /v1/models lists them)", param="model", code="model_not_found")
    return names[model]


def _room(ids: list[int], max_tokens: int | None, limit: int, field: str) -> int:
    """The default answer length (what the context leaves); 400 when the prompt or max_tokens do not fit."""
    if len(ids) >= limit:
        raise ApiError(400, f"the prompt ({field}) is {len(ids)} tokens, but the model's context length is {limit} "
                            "tokens (prompt and answer together); shorten the prompt", param=field,
                       code="context_length_exceeded")
    if max_tokens is not None and len(ids) + max_tokens > limit:
        raise ApiError(400, f"max_tokens={max_tokens} plus the prompt's {len(ids)} tokens exceed the model's context "
                            f"length of {limit} tokens; ask for at most {limit - len(ids)} tokens",
                       param="max_tokens", code="context_length_exceeded")
    return limit - len(ids)


async def _events(batcher: Batcher, request: Request, http: HttpRequest) -> AsyncIterator[dict[str, Any]]:
    """The request's events from the worker thread; the request is cancelled if its reader stops early."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    request.on_event = lambda event: loop.call_soon_threadsafe(queue.put_nowait, event)
    batcher.submit(request)
    finished = False
    try:
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await http.is_disconnected():
                    return
                continue
            if "error" in event:
                finished = True
                raise ApiError(500, event["error"], kind="server_error")
            yield event
            if "done" in event:
                finished = True
                return
    finally:
        if not finished:
            batcher.cancel(request)


async def _answer(batcher: Batcher, request: Request, http: HttpRequest):
    """The finished Completion of a non-streamed request."""
    async for event in _events(batcher, request, http):
        if "done" in event:
            return event["done"]
    raise ApiError(499, "the client closed the request", kind="client_closed_request")


def _parsed(done: Any, template: Any, tools: list[dict] | None, tokenizer: Any
            ) -> tuple[str | None, str, list[dict]]:
    """The answer's reasoning (None without), its text and its tool calls, read in the template family's layout:
    the reasoning split off first (serve/reasoning.py), then calls read from the rest (serve/tools.py)."""
    style = tool_calls.tool_style(template)
    if not tools and style != "harmony" and reasoning.style(template) is None:
        return None, done.text, []
    text = tokenizer.decode(done.token_ids, skip_special_tokens=False) if reasoning.special_tokens(template) \
        else tool_calls.answer_text(tokenizer, done.token_ids, done.text, style)
    thought, answer = reasoning.split(template, text) if reasoning.style(template) else (None, text)
    if not tools and style != "harmony":
        return thought, answer, []
    text, calls = tool_calls.parse(text if style == "harmony" else answer, style, tools)
    return thought, text, calls if tools else []


async def _chat_stream(batcher: Batcher, request: Request, http: HttpRequest, body: ChatRequest,
                       template: Any, tokenizer: Any) -> AsyncIterator[dict[str, str]]:
    """Server-sent chat.completion.chunk events: the role, text pieces (reasoning as `reasoning_content`
    deltas), the finish reason, [DONE]."""
    chunk_id, created = new_id("chatcmpl"), now()
    splitter = reasoning.Splitter.of(template)

    def event(delta: dict[str, Any], finish: str | None = None) -> dict[str, str]:
        return {"data": json.dumps(chat_chunk(chunk_id, body.model, created, delta, finish), ensure_ascii=False)}

    def pieces(split: list[tuple[str, str]]) -> Iterator[dict[str, str]]:
        for kind, text in split:
            yield event({"reasoning_content" if kind == reasoning.REASONING else "content": text})

    try:
        yield event({"role": "assistant", "content": ""})
        async for item in _events(batcher, request, http):
            if "text" in item:
                for piece in pieces(splitter.feed(item["text"])):
                    yield piece
                continue
            done = item["done"]
            finish = done.finish_reason
            if request.stream:
                for piece in pieces(splitter.close()):
                    yield piece
            else:  # a request with tools (or gpt-oss's channels): read whole, then sent
                thought, text, calls = _parsed(done, template, body.active_tools, tokenizer)
                if thought:
                    yield event({"reasoning_content": thought})
                if text:
                    yield event({"content": text})
                if calls:
                    yield event({"tool_calls": [{"index": k, **call} for k, call in enumerate(calls)]})
                    finish = "tool_calls"
            yield event({}, finish)
            if body.include_usage:
                yield {"data": json.dumps({"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                                           "model": body.model, "choices": [],
                                           "usage": usage(done.prompt_tokens, done.completion_tokens)})}
    except ApiError as err:
        yield {"data": json.dumps(err.body())}
    yield {"data": "[DONE]"}


async def _completion_stream(batcher: Batcher, request: Request, http: HttpRequest,
                             body: CompletionRequest) -> AsyncIterator[dict[str, str]]:
    chunk_id, created = new_id("cmpl"), now()

    def event(text: str, finish: str | None = None, extra: dict | None = None) -> dict[str, str]:
        return {"data": json.dumps({"id": chunk_id, "object": "text_completion", "created": created,
                                    "model": body.model, "choices": [{"index": 0, "text": text, "logprobs": None,
                                                                      "finish_reason": finish}], **(extra or {})},
                                   ensure_ascii=False)}

    try:
        async for item in _events(batcher, request, http):
            if "text" in item:
                yield event(item["text"])
            else:
                done = item["done"]
                extra = {"usage": usage(done.prompt_tokens, done.completion_tokens)} if body.include_usage else None
                yield event("", done.finish_reason, extra)
    except ApiError as err:
        yield {"data": json.dumps(err.body())}
    yield {"data": "[DONE]"}


def _error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape: bad requests 4xx naming the field, unexpected ones 500 without a traceback."""

    @app.exception_handler(ApiError)
    async def api_error(_: HttpRequest, err: ApiError) -> JSONResponse:
        return ErrorResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: HttpRequest, err: RequestValidationError) -> JSONResponse:
        problems, param = [], None
        for e in err.errors()[:5]:
            loc = ".".join(str(p) for p in e.get("loc", ())[1:] if p != "body") or "body"
            if e.get("type") == "invalid_request":  # a broken rule (rules.py): its context names the field
                param = param or e["ctx"]["param"]
                problems.append(e["ctx"]["message"])
                continue
            param = param or loc
            if e.get("type") == "json_invalid":
                problems.append(f"the request body is not valid JSON ({e.get('ctx', {}).get('error', e['msg'])})")
            elif e.get("type") == "extra_forbidden":
                problems.append(f"{loc}: unknown field; this server takes the OpenAI fields it implements")
            else:
                problems.append(f"{loc}: {e['msg']}")
        return ErrorResponse(error_body("; ".join(problems), param=param), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: HttpRequest, err: HTTPException) -> JSONResponse:
        return ErrorResponse(error_body(str(err.detail)), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_: HttpRequest, err: Exception) -> JSONResponse:
        log.exception("unexpected error")  # the traceback goes to the server's log, never to the client
        return ErrorResponse(error_body(f"internal error ({type(err).__name__}): {err}", kind="server_error"),
                             status_code=500)


class ErrorResponse(JSONResponse):
    """JSON written as ASCII: an error message quoting what a client sent stays valid whatever it held."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """A warning when the server is reachable beyond this machine and anyone reaching it may use it."""
    if api_key:
        return None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        loopback = False
    if loopback:
        return None
    return (f"warning: serving on {host} without an API key: anyone who can reach this address can use the model. "
            "Set --api-key (or SFTUNE_API_KEY), or bind --host 127.0.0.1.")


def serve(run_or_model: str, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          adapters: dict[str, str] | None = None, max_batch_size: int = 16, template: str | None = None,
          template_kwargs: dict | None = None,
          max_body_mb: float = MAX_BODY_MB, body_timeout_s: float = BODY_TIMEOUT_S,
          header_timeout_s: float = HEADER_TIMEOUT_S, console: Any = None) -> None:
    """Load the run (and adapters on its base) once, then answer on host:port until interrupted."""
    import uvicorn

    from sftune.serve import adapters as adapters_module

    warning = exposure_warning(host, api_key)
    model, tokenizer, names = adapters_module.load(run_or_model, adapters, template=template,
                                                  template_kwargs=template_kwargs)
    app = create_app(model, tokenizer, names, api_key=api_key, max_batch_size=max_batch_size,
                     max_body_bytes=int(max_body_mb * 2**20), body_timeout_s=body_timeout_s)
    if console is not None:
        console.print(f"serving {', '.join(names)} at http://{host}:{port}/v1 (batches of up to {max_batch_size}; "
                      f"API key {'required' if api_key else 'not required'})", highlight=False)
    if warning and console is not None:
        console.print(f"[yellow]{warning}[/yellow]", highlight=False)
    elif warning:
        log.warning(warning)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_keep_alive=KEEP_ALIVE_S,
                http=protocol(header_timeout_s))
