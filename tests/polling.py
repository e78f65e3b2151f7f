"""Waiting for a condition in tests that drive real sockets and threads."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(
    cond: Callable[[], bool], what: str, timeout_s: float, interval_s: float = 0.01
) -> None:
    """Poll ``cond`` until it holds; TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what} ({timeout_s:g} s)")
        time.sleep(interval_s)
