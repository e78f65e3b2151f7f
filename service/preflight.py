"""Before anything starts: can every endpoint the service will bind be bound?

``voxloc serve`` calls :func:`check_endpoints` after reading its settings and before it
loads a model or opens a socket, so that a busy port is one line naming the endpoint and
the setting (or flag) that moves it, within a second, instead of a traceback in a log
after the model has loaded. Light on purpose (standard library and the settings only).
"""

from __future__ import annotations

import errno
import re
import socket
from dataclasses import dataclass

from service.settings import ServiceSettings

_TCP = re.compile(r"^tcp://(?P<host>\[[^\]]+\]|[^:/]+):(?P<port>\*|\d+)$")


class EndpointBusyError(OSError):
    """An endpoint of the settings cannot be bound; the message names it and its setting."""

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass(frozen=True)
class Endpoint:
    what: str  # "control-plane port", "camera cam0 endpoint", ...
    host: str
    port: int
    setting: str  # how to change it: settings key, environment variable, flag

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def bind_error(host: str, port: int) -> OSError | None:
    """Why a TCP listener on ``host:port`` cannot be made now (None: it can). Port 0 and
    names that do not resolve are left to the real bind."""
    if port == 0:
        return None
    host = "0.0.0.0" if host in ("*", "") else host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError):
        return None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        # as uvicorn and ZeroMQ do: a port left in TIME_WAIT is free, a listener is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            return exc
    return None


def describe_bind_error(exc: OSError, what: str, where: str, setting: str) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"{what} {where} is already in use (another voxloc service?); change {setting}"
    return f"cannot bind {what} {where}: {exc.strerror or exc}; change {setting}"


def planned_endpoints(settings: ServiceSettings) -> list[Endpoint]:
    """Every TCP endpoint ``settings`` will bind with a fixed port."""
    out = [
        Endpoint(
            "control-plane port",
            settings.api.host,
            settings.api.port,
            "--port or api.port (VOXLOC_API__PORT)",
        )
    ]
    for k, cam in enumerate(settings.cameras):
        out += _zmq(f"camera {cam.name} endpoint", cam.endpoint, f"cameras[{k}].endpoint")
    out += _zmq(
        "localization endpoint", settings.stream.publish, "stream.publish (VOXLOC_STREAM__PUBLISH)"
    )
    return [e for e in out if e.port != 0]


def _zmq(what: str, endpoint: str, setting: str) -> list[Endpoint]:
    m = _TCP.match(endpoint)
    if m is None or m["port"] == "*":
        return []  # ipc://, inproc:// and random ports cannot be busy
    return [Endpoint(what, m["host"], int(m["port"]), setting)]


def check_endpoints(settings: ServiceSettings) -> None:
    """EndpointBusyError naming the first endpoint that cannot be bound, or two of them
    that share a port."""
    planned = planned_endpoints(settings)
    by_port: dict[int, Endpoint] = {}
    for ep in planned:
        other = by_port.get(ep.port)
        if other is not None and _overlap(other.host, ep.host):
            raise EndpointBusyError(
                errno.EADDRINUSE,
                f"{ep.what} {ep.where} and {other.what} {other.where} share port {ep.port}; "
                f"change {ep.setting}",
            )
        by_port.setdefault(ep.port, ep)
    for ep in planned:
        exc = bind_error(ep.host, ep.port)
        if exc is not None:
            raise EndpointBusyError(
                exc.errno, describe_bind_error(exc, ep.what, ep.where, ep.setting)
            )


def _overlap(a: str, b: str) -> bool:
    wild = ("*", "0.0.0.0", "::", "[::]", "")
    return a == b or a in wild or b in wild
