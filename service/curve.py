"""Optional ZeroMQ CURVE on the camera and localization sockets (docs/deploy.md).

With ``[security] curve = true`` every socket the service binds is a CURVE server with
the service's key pair, and a ZAP handler (pyzmq's :class:`~zmq.auth.thread.
ThreadAuthenticator`) lets in only clients whose public key is in the allowed-keys
directory (``*.key`` files, as ``voxloc keys`` writes them; re-read when the directory
changes, so a new camera needs no restart). Traffic is encrypted, and a camera or
subscriber without an allowed key never gets a message through: the ingest counts each
refused camera handshake under the reject reason ``unauthenticated``.

Clients (:class:`~clients.camera.CameraPublisher`, the subscribers, ``voxloc camera`` /
``voxloc record``) take a :class:`CurveClientKeys`: the service's public key and their
own key pair. In-process clients (the dashboard) get a key pair of their own from
:meth:`CurveServer.client_keys`, known only to this process.

Light on purpose (pyzmq only): the camera side imports it.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"


class CurveKeyError(ValueError):
    """A key file that is missing, unreadable or lacks the part needed."""


def load_public_key(path: str | os.PathLike) -> bytes:
    """The z85 public key in ``path`` (a ``.key`` or ``.key_secret`` file)."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"cannot read CURVE key {path}: {exc}") from exc
    return public


def load_key_pair(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a ``.key_secret`` file."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"cannot read CURVE key pair {path}: {exc}") from exc
    if not secret:
        raise CurveKeyError(
            f"{path} holds no secret key: give the {SECRET_SUFFIX} file of the pair, "
            f"not the {PUBLIC_SUFFIX} one"
        )
    return public, secret


@dataclass(frozen=True)
class CurveClientKeys:
    """What a client needs: the service's public key and its own key pair (z85)."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_files(
        cls, server_key: str | os.PathLike, client_key: str | os.PathLike
    ) -> CurveClientKeys:
        """``server_key``: the service's ``service.key``; ``client_key``: this client's
        ``.key_secret`` file (``voxloc keys``)."""
        public, secret = load_key_pair(client_key)
        return cls(load_public_key(server_key), public, secret)

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the service (before it connects)."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


class CurveServer:
    """The service's key pair and its ZAP handler on one ZeroMQ context."""

    def __init__(
        self,
        ctx: zmq.Context,
        *,
        server_key: str | os.PathLike,
        client_keys: str | os.PathLike,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if not zmq.has("curve"):
            raise CurveKeyError("this libzmq has no CURVE support (security.curve = true)")
        self.public, self._secret = load_key_pair(server_key)
        self.client_keys_dir = Path(client_keys)
        if not self.client_keys_dir.is_dir():
            raise CurveKeyError(f"allowed client keys directory {client_keys} does not exist")
        self._lock = threading.Lock()
        self._allowed: set[bytes] = set()
        self._own: set[bytes] = set()
        self._seen_mtime: float | None = None
        self.denied = 0
        self._p_denied = None
        if registry is not None:
            from prometheus_client import Counter

            self._p_denied = Counter(
                "voxloc_curve_refused", "clients refused: unknown CURVE key", registry=registry
            )
        self._reload()
        self._auth = ThreadAuthenticator(ctx, log=log)
        self._auth.start()
        self._auth.configure_curve_callback("*", credentials_provider=self)
        log.info("CURVE on: %d allowed client keys in %s", len(self._allowed), self.client_keys_dir)

    # -- the ZAP handler's credentials provider -----------------------------------------
    def callback(self, domain: str, key: bytes) -> bool:
        """True if the client's public ``key`` (z85) is allowed; runs on the ZAP thread."""
        self._reload()
        with self._lock:
            ok = key in self._allowed or key in self._own
            if not ok:
                self.denied += 1
        if not ok:
            if self._p_denied is not None:
                self._p_denied.inc()
            log.warning("CURVE: refused a client with unknown key %s", key.decode(errors="replace"))
        return ok

    def _reload(self) -> None:
        try:
            mtime = self.client_keys_dir.stat().st_mtime
        except OSError:
            return
        if mtime == self._seen_mtime:
            return
        keys: set[bytes] = set()
        for path in sorted(self.client_keys_dir.glob(f"*{PUBLIC_SUFFIX}")):
            try:
                keys.add(load_public_key(path))
            except CurveKeyError as exc:
                log.warning("CURVE: skipping %s", exc)
        with self._lock:
            self._allowed = keys
            self._seen_mtime = mtime

    # -- sockets --------------------------------------------------------------------------
    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server with the service's keys (before it binds)."""
        sock.curve_secretkey = self._secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def client_keys(self) -> CurveClientKeys:
        """A fresh key pair for an in-process client (the dashboard), allowed from now on."""
        public, secret = zmq.curve_keypair()
        with self._lock:
            self._own.add(public)
        return CurveClientKeys(self.public, public, secret)

    def close(self) -> None:
        self._auth.stop()
