"""The uvicorn server the ``serve`` command runs."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Generator

import uvicorn


class GracefulServer(uvicorn.Server):
    """A uvicorn server whose graceful shutdown on SIGTERM or SIGINT exits with status 0.

    uvicorn re-raises the signal it caught once it has shut down, so the process ends "killed by
    SIGTERM" even after finishing every request and flushing the sink. Supervisors (Kubernetes,
    systemd) and the delivery guarantee both treat a completed graceful shutdown as success.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original_handlers = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original_handlers.items():
                signal.signal(sig, handler)
