"""SIGINT/SIGTERM as a clean stop for the long-running commands (serve, camera, record)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def on_stop_signals(handle: Callable[[signal.Signals], None]) -> Iterator[None]:
    """Call ``handle`` on SIGINT/SIGTERM instead of interrupting; old handlers restored after.

    Off the main thread (where Python cannot install handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(sig: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(sig).name)
        handle(signal.Signals(sig))

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_on_signals(stop: threading.Event) -> contextlib.AbstractContextManager[None]:
    """SIGINT/SIGTERM set ``stop`` (a clean end) instead of interrupting."""
    return on_stop_signals(lambda _sig: stop.set())
