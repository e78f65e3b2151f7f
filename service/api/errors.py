"""Bounded, well-formed request bodies and one error format for every refusal.

* :class:`BodyGuard` (ASGI middleware) reads a request body once, refuses one larger
  than ``max_body_bytes`` (413) and a JSON body holding ``NaN``, ``Infinity`` or
  ``-Infinity`` (422, naming where): Python's ``json`` accepts those literals, JSON does
  not, and a NaN that got in would turn an answer into a 500 later.
* :func:`validation_error` answers a refused request as ``{"detail": "..."}`` (the
  :class:`~service.api.schemas.ErrorAnswer` of every documented error), one line naming
  each refused field, its rule and the value that arrived.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 1 << 20  # the largest control-plane body is a registration: a few kB


class _NonFinite(float):
    """A NaN/Infinity literal found while parsing; remembered by its spelling."""

    literal: str

    def __new__(cls, literal: str) -> _NonFinite:
        value = super().__new__(cls, float(literal.replace("Infinity", "inf")))
        value.literal = literal
        return value


def non_finite_at(body: bytes) -> str | None:
    """Where ``body`` (JSON) holds NaN/Infinity, e.g. ``body.cameras.cam0.gain_adu:
    NaN``; None when it holds none (or is not JSON at all: the route refuses that)."""
    try:
        doc = json.loads(body, parse_constant=_NonFinite)
    except (ValueError, RecursionError):
        return None
    found = _find(doc, ["body"])
    return None if found is None else f"{'.'.join(found[0])}: {found[1]}"


def _find(value: Any, path: list[str]) -> tuple[list[str], str] | None:
    if isinstance(value, _NonFinite):
        return path, value.literal
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _find(item, [*path, str(key)])
        if found is not None:
            return found
    return None


def _is_json(scope: Scope) -> bool:
    for key, val in scope.get("headers", ()):
        if key == b"content-type":
            media = val.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return False


class BodyGuard:
    """ASGI middleware: size limit and no non-finite numbers in JSON bodies."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _answer(
                    scope,
                    send,
                    status.HTTP_413_CONTENT_TOO_LARGE,
                    f"request body larger than {self.max_body_bytes} bytes",
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        where = non_finite_at(body) if body and _is_json(scope) else None
        if where is not None:
            await _answer(
                scope,
                send,
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"{where} is not a JSON number (JSON has no NaN or Infinity)",
            )
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _answer(scope: Scope, send: Send, code: int, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=code)
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def describe_errors(errors: Any) -> str:
    """One line for pydantic/FastAPI validation errors: ``loc: message (got value)``."""
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ())) or "value"
        shown = f" (got {_short(e['input'])})" if "input" in e else ""
        parts.append(f"{loc}: {e.get('msg', 'invalid')}{shown}")
    return "; ".join(parts)


def _short(value: Any, limit: int = 120) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        text = repr(value)
    else:
        try:
            text = json.dumps(jsonable_encoder(value), allow_nan=False)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """422 ``{"detail": "<field>: <rule> (got <value>)"; ...}`` for a refused request."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(
        {"detail": describe_errors(exc.errors())},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )
