"""Who may change the service: the guard of every state-changing endpoint.

:func:`require_token` (used through :data:`mutating`) is the one dependency every route
that changes anything declares (``dependencies=mutating``), the dashboard's and the
acquisition routes' included:

* with ``api.token`` configured, a request needs ``Authorization: Bearer <token>`` (401).
  A web page on another origin cannot read the token nor send the header without a CORS
  preflight, which the service never grants;
* without a token (loopback use), the request must not come from a web page of another
  origin, so that a page open in the user's browser cannot load models or change
  thresholds (403): an ``Origin`` header must name this service (the ``Host`` the
  request went to, on a loopback name, ``api.host`` or one of ``api.allowed_origins``:
  a DNS-rebound page has a matching but foreign host), ``Sec-Fetch-Site`` must be
  ``same-origin`` or ``none``, and a ``Content-Type`` other than JSON is refused (415),
  which closes HTML forms and ``no-cors`` fetches of older browsers that send no
  ``Origin``. Non-browser clients (curl, ``voxloc ctl``) send none of these headers.
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.schemas import ErrorAnswer

_bearer = HTTPBearer(auto_error=False, description="api.token from the service settings")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SAME_SITE = ("same-origin", "none")  # Sec-Fetch-Site values of the service's own page


def require_token(
    request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    token: str = getattr(request.app.state, "token", "") or ""
    if not token:
        check_same_origin(request)
        return
    if cred is None or cred.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not secrets.compare_digest(cred.credentials.encode(), token.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


def check_same_origin(request: Request) -> None:
    """403/415 unless the request can only come from this service's page or a non-browser
    client (see the module docstring)."""
    origin = request.headers.get("origin")
    if origin is not None and not _own_origin(origin, request):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"cross-origin request refused: Origin {origin!r} is not this service "
            f"(http://{request.headers.get('host', '')}); set api.token, or add the origin "
            "to api.allowed_origins",
        )
    site = request.headers.get("sec-fetch-site")
    if site is not None and site.lower() not in SAME_SITE and origin is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"cross-site request refused (Sec-Fetch-Site: {site}); set api.token to allow it",
        )
    ctype = request.headers.get("content-type")
    if ctype is not None and ctype.split(";", 1)[0].strip().lower() != "application/json":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"a request that changes the service takes application/json, got {ctype!r}",
        )


def _own_origin(origin: str, request: Request) -> bool:
    allowed: list[str] = list(getattr(request.app.state, "allowed_origins", ()) or ())
    if origin.rstrip("/") in (a.rstrip("/") for a in allowed):
        return True
    try:
        parts = urlsplit(origin)
        host, port = parts.hostname, parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False  # "null" (sandboxed frames, file:// pages) and other schemes
    own = urlsplit(f"//{request.headers.get('host', '')}")
    try:
        own_port = own.port
    except ValueError:
        return False
    default = 443 if parts.scheme == "https" else 80
    if host != (own.hostname or "") or (port or default) != (own_port or default):
        return False
    bind_host: str = getattr(request.app.state, "host", "") or ""
    return _is_loopback(host) or host == bind_host.lower()


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


mutating = [Depends(require_token)]
"""``dependencies=mutating`` on every route that changes the service."""

MUTATING_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorAnswer, "description": "missing or wrong bearer token"},
    403: {"model": ErrorAnswer, "description": "no token configured: request from another origin"},
    413: {"model": ErrorAnswer, "description": "request body too large"},
    415: {"model": ErrorAnswer, "description": "no token configured: body not application/json"},
}
"""The answers :data:`mutating` adds to a route's documented ``responses``."""
