"""The background starter the tests, the benchmarks and notebook users serve through."""

from __future__ import annotations

import socket

import pytest

from sftune.serve.background import running


async def app(scope, receive, send):  # the smallest ASGI app: answers every request with "ok"
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_serves_on_a_free_loopback_port_and_stops():
    import httpx

    with running(app) as url:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(url + "/anything").text == "ok"
    with pytest.raises(httpx.ConnectError):  # stopped when the block ended
        httpx.get(url + "/anything", timeout=2)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # uvicorn's thread exits on the bind error
def test_a_taken_port_is_an_error_not_a_hang():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(RuntimeError, match="did not start"):
            with running(app, port=taken.getsockname()[1], start_timeout=10):
                pass
