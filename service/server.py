"""The HTTP control plane's server: uvicorn, with signal handling left to the caller."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI


class Server(uvicorn.Server):
    """uvicorn's server without its own signal capture: uvicorn re-raises the signal after
    its shutdown, which would end the process before the pipeline stops."""

    def __init__(self, app: FastAPI, *, host: str, port: int) -> None:
        super().__init__(
            uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False)
        )

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def request_stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Ask the server to exit; a second SIGINT forces it (open connections dropped)."""
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True
