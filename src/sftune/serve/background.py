"""The OpenAI-compatible app served from a background thread, for a notebook, a script or a benchmark
that talks to the server in the same process (`sftune serve` runs it in the foreground instead)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running(app: Any, *, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30.0,
            header_timeout_s: float | None = None) -> Iterator[str]:
    """Serve `app` with uvicorn on host:port (port 0: a free one) until the block ends; yields the base URL
    (without /v1). Raises RuntimeError if the server has not started within start_timeout seconds. A client's
    request headers have `header_timeout_s` (default guard.HEADER_TIMEOUT_S) to arrive, as under `sftune serve`."""
    import uvicorn

    from sftune.serve.guard import HEADER_TIMEOUT_S, protocol

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           http=protocol(header_timeout_s or HEADER_TIMEOUT_S)))
    thread = threading.Thread(target=server.run, daemon=True, name="sftune-server")
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError(f"the server did not start on {host}:{port} within {start_timeout:.0f} s "
                               "(is the port taken? see the log above)")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=start_timeout)
