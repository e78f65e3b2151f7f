"""``ControlClient``: the service's REST control plane from Python (docs/protocol.md Sec. 5).

    ctl = ControlClient("http://127.0.0.1:8750", token=os.environ.get("VOXLOC_TOKEN"))
    ctl.set_threshold(0.7)
    ctl.load_model("default")
    print(ctl.stats()["fps_out"])

Errors from the service (4xx/5xx) become :class:`ControlError` carrying the HTTP status
and the service's message; an unreachable service becomes :class:`ControlError` too.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

from engines.errors import VoxlocError
from service.runtime_config import RuntimeConfig

DEFAULT_URL = "http://127.0.0.1:8750"
TOKEN_ENV = "VOXLOC_TOKEN"
CONFIG_KEYS = tuple(RuntimeConfig.model_fields)  # what PUT /config accepts


class ControlError(VoxlocError):
    """The control plane refused a request or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ControlClient:
    """Thin typed wrapper around the control-plane endpoints.

    Args:
        url: base URL of the service, e.g. ``http://127.0.0.1:8750``.
        token: bearer token for mutating calls (default: ``$VOXLOC_TOKEN``; none if unset).
        timeout_s: per-request timeout; model loads get ``load_timeout_s``.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout_s: float = 10.0,
        load_timeout_s: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        token = os.environ.get(TOKEN_ENV) if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.load_timeout_s = load_timeout_s
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout_s, transport=transport
        )

    def _call(
        self, method: str, path: str, *, json: Any = None, timeout: float | None = None
    ) -> Any:
        kwargs: dict[str, Any] = {"json": json} if json is not None else {}
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ControlError(f"{method} {self.url}{path} failed: {exc}") from exc
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            raise ControlError(
                f"{method} {path}: HTTP {resp.status_code}: {detail}", resp.status_code
            )
        ctype = resp.headers.get("content-type", "")
        return resp.json() if ctype.startswith("application/json") else resp.text

    # -- health ---------------------------------------------------------------------------
    def live(self) -> dict[str, Any]:
        return self._call("GET", "/health/live")

    def ready(self) -> bool:
        try:
            self._call("GET", "/health/ready")
        except ControlError as exc:
            if exc.status == 503:
                return False
            raise
        return True

    def instance(self) -> str:
        """The id of the service process answering (``voxloc serve --instance-id``)."""
        return str(self.live().get("instance", ""))

    def is_instance(self, instance: str | None) -> bool:
        """True if the service answering is ``instance`` (None: any service)."""
        return instance is None or self.instance() == instance

    def wait_ready(
        self, timeout_s: float = 60.0, poll_s: float = 0.2, *, instance: str | None = None
    ) -> None:
        """Block until ``/health/ready`` answers 200 (from the service ``instance``, if
        given: another service on the same port is not waited for); ControlError after
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if self.is_instance(instance) and self.ready():
                    return
            except ControlError as exc:
                last = exc
            time.sleep(poll_s)
        raise ControlError(
            f"service at {self.url} not ready after {timeout_s:.0f} s"
            + (f" (last error: {last})" if last else "")
        )

    # -- models ---------------------------------------------------------------------------
    def models(self) -> dict[str, Any]:
        return self._call("GET", "/models")

    def load_model(self, name: str) -> dict[str, Any]:
        """Load ``name`` beside the running model and switch to it (blocks until done)."""
        if not name or "/" in name:
            raise ValueError(f"model name must be a plain name, got {name!r}")
        return self._call("POST", f"/models/{name}/load", timeout=self.load_timeout_s)

    # -- config ---------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return self._call("GET", "/config")

    def set_config(self, **changes: Any) -> dict[str, Any]:
        unknown = sorted(set(changes) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known: {list(CONFIG_KEYS)}")
        return self._call("PUT", "/config", json=changes)

    def threshold(self) -> float:
        return float(self.config()["threshold"])

    def set_threshold(self, threshold: float) -> dict[str, Any]:
        return self.set_config(threshold=float(threshold))

    # -- registration ---------------------------------------------------------------------
    def registration(self) -> dict[str, Any]:
        return self._call("GET", "/registration")

    def set_registration(self, cameras: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """``{"cam1": {"affine": [[...], [...]], "gain_adu": 1.0, "baseline_adu": 0}}``.

        The read-only ``plane`` of :meth:`registration` answers is left out, so an answer
        saved earlier can be sent back as it is.
        """
        body = {
            name: {k: v for k, v in cam.items() if k != "plane"} for name, cam in cameras.items()
        }
        return self._call("PUT", "/registration", json={"cameras": body})

    # -- stats ----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def metrics(self) -> str:
        return self._call("GET", "/metrics")

    def wait_subscribers(self, count: int = 1, timeout_s: float = 10.0) -> None:
        """Block until the localization stream has ``count`` subscribers."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.stats().get("publisher", {}).get("subscribers", 0) >= count:
                return
            time.sleep(0.05)
        raise ControlError(f"fewer than {count} subscribers after {timeout_s:.0f} s")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
