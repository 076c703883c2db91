"""What an HTTP request passes before the app sees it: its request line and headers, under a deadline at the
connection (uvicorn's HTTP protocol, `protocol(header_timeout_s)`), then an ASGI middleware around the whole app:

0. the headers: a connection that has not sent a whole request line and headers `header_timeout_s` after it opened
   (or after its previous answer) gets a 408 and is closed (a slowloris client holds no connection);
1. the API key, read from the headers alone: a client without it gets 401 before one byte of its body is read
   (every path but /health, the docs and /openapi.json included);
2. the body, read whole here: more than `max_body_bytes` (announced by Content-Length or sent) is a 413,
   a body still arriving `body_timeout_s` after the request began is a 408 (a slow client holds no slot).

The app then reads the body from memory; later reads (a streaming answer watching for a disconnect) go to
the connection as before. Every refusal is in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any, Awaitable, Callable

from sftune.serve.protocol import error_body

OPEN_PATHS = ("/health",)
HEADER_TIMEOUT_S = 20.0  # a request line and headers still arriving this long after the connection opened: 408
KEY_HINT = ("send it as the header 'Authorization: Bearer KEY' (the key given to `sftune serve --api-key` or "
            "SFTUNE_API_KEY)")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def key_matches(authorization: str, api_key: str) -> bool:
    """Whether an Authorization header carries `api_key` as a bearer token (compared in constant time)."""
    token = authorization[7:] if authorization.lower().startswith("bearer ") else ""
    return secrets.compare_digest(token.encode("utf-8", "surrogateescape"), api_key.encode())


class Guard:
    """The middleware: `Guard(app, api_key=..., max_body_bytes=..., body_timeout_s=...)`."""

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int, body_timeout_s: float):
        self.app, self.api_key = app, api_key
        self.max_body_bytes, self.body_timeout_s = max_body_bytes, body_timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        if self.api_key is not None and scope["path"] not in OPEN_PATHS \
                and not key_matches(headers.get("authorization", ""), self.api_key):
            await _refuse(send, 401, f"invalid or missing API key: {KEY_HINT}", code="invalid_api_key")
            return
        declared = headers.get("content-length", "0")
        if not declared.isdigit():
            await _refuse(send, 400, f"Content-Length {declared[:40]!r} is not a number of bytes")
            return
        if int(declared) > self.max_body_bytes:
            await _refuse(send, 413, self._too_large(int(declared)), code="request_too_large")
            return
        body = await self._read(receive, send)
        if body is None:
            return

        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None once the request was refused (413, 408) or its client left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                await _refuse(send, 408, f"the request body did not arrive within {self.body_timeout_s:g} s "
                                         "(`sftune serve --body-timeout`); send it at once", code="request_timeout")
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _refuse(send, 413, self._too_large(size), code="request_too_large")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, size: int) -> str:
        return (f"the request body is {size:,} bytes or more, over this server's limit of {self.max_body_bytes:,} "
                "bytes (`sftune serve --max-body-mb`); send a shorter request")


def protocol(header_timeout_s: float = HEADER_TIMEOUT_S) -> type:
    """uvicorn's h11 HTTP protocol with a deadline for each request's line and headers (uvicorn's own timeouts start
    only after a request's headers, or while a kept-alive connection is idle); pass it as uvicorn's `http`."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    answer = json.dumps(error_body(f"the request headers did not arrive within {header_timeout_s:g} s "
                                   "(`sftune serve --header-timeout`); send them at once",
                                   code="request_timeout")).encode()
    timeout_response = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                        b"content-length: %d\r\n\r\n%s" % (len(answer), answer))

    class HeaderDeadline(H11Protocol):
        deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.cycle is None or self.cycle.response_complete:  # bytes of a new request
                self._arm()
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:  # its headers are complete: the app (and the guard's body deadline) has it
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self.deadline is None:
                self.deadline = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def _too_slow(self) -> None:
            self.deadline = None
            if not self.transport.is_closing():
                self.transport.write(timeout_response)
                self.transport.close()

    return HeaderDeadline


async def _refuse(send: Send, status: int, message: str, *, code: str | None = None) -> None:
    body = json.dumps(error_body(message, code=code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
