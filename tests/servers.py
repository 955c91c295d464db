"""Real uvicorn servers for tests, on a free loopback port, inside the test's event loop.

Binding the socket here (port 0) rather than letting uvicorn bind a guessed port removes the
race between finding a free port and using it when tests run in parallel.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from receiver.settings import Settings

STARTUP_TIMEOUT_S = 10.0


@asynccontextmanager
async def run_uvicorn(app: ASGIApp, **config_kwargs: Any) -> AsyncIterator[str]:
    """Serve ``app`` until the block ends; yields its base URL, ``http://127.0.0.1:PORT`` (https with TLS).

    ``config_kwargs`` go to ``uvicorn.Config`` and override the quiet test defaults. Raises
    ``RuntimeError`` when the server stops during start-up (a failing lifespan, for instance).
    """
    options: dict[str, Any] = {
        "log_config": None,  # keep the test process's logging (and caplog) as it is
        "log_level": "warning",
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": 2,
        **config_kwargs,
    }
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))

    async def serve() -> None:
        try:
            await server.serve(sockets=[listener])
        except SystemExit as exc:  # uvicorn exits the process when the lifespan start-up fails
            raise RuntimeError(f"uvicorn stopped during start-up (exit status {exc.code})") from exc

    task = asyncio.create_task(serve(), name=f"uvicorn-{port}")
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT_S):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before it started serving")
                await asyncio.sleep(0.005)
        yield f"{'https' if options.get('ssl_certfile') else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait({task})
        listener.close()
        failure = None if task.cancelled() else task.exception()
    # Reached only when the block ended normally; a server that crashed meanwhile must not pass.
    if failure is not None:
        raise RuntimeError("uvicorn failed while serving") from failure


def receiver_server_options(settings: Settings) -> dict[str, Any]:
    """What ``sf-receiver serve`` gives uvicorn for ``settings`` (the bounded protocol, TLS, no
    proxy headers), less what ``run_uvicorn`` decides itself: address, loop, logging, shutdown."""
    from receiver.cli import uvicorn_options

    options = uvicorn_options(settings)
    for name in ("host", "port", "loop", "log_config", "access_log", "timeout_graceful_shutdown"):
        options.pop(name, None)
    return options
