"""Publisher: one localization message per frame set, in frame order, on an XPUB socket.

XPUB instead of PUB so the service can count subscribers (their subscribe/unsubscribe
messages arrive on the socket). Messages carry a gap-free ``seq``; a subscriber that is
too slow loses messages at its high-water mark and sees the gap in ``seq``.
Every published message is also handed to the registered observers (drift estimation,
recorders in-process), in order, on the publishing thread.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from engines.types import Localizations
from service.curve import CurveServer
from service.inference import LoadedModel
from service.stats import ServiceStats
from service.types import Batch, LocalizationObserver
from service.wire import LocsMessage, encode_locs

log = logging.getLogger(__name__)

COPY_BELOW_BYTES = 64 * 1024  # smaller localization payloads are copied (zero-copy costs more)


class Publisher:
    def __init__(
        self,
        ctx: zmq.Context,
        *,
        endpoint: str,
        source: str,
        sndhwm: int,
        stats: ServiceStats,
        curve: CurveServer | None = None,
    ) -> None:
        self.source = source
        self.stats = stats
        self.observers: list[LocalizationObserver] = []
        self.subscribers = 0
        self._seq = 0
        self._sock = ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.XPUB_VERBOSER, 1)  # see every (un)subscribe, not just first
        if curve is not None:
            curve.apply(self._sock)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close()
            raise OSError(f"cannot bind localization endpoint {endpoint!r}: {exc}") from exc
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("publishing localizations on %s", self.endpoint)

    @property
    def seq(self) -> int:
        """Sequence number of the last published message (-1: none yet)."""
        return self._seq - 1

    def poll_subscriptions(self) -> None:
        """Count (un)subscriptions waiting on the socket; never blocks."""
        while True:
            try:
                msg = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if msg[:1] == b"\x01":
                self.subscribers += 1
            elif msg[:1] == b"\x00":
                self.subscribers = max(self.subscribers - 1, 0)
        self.stats.p_subscribers.set(self.subscribers)

    def publish(
        self,
        batch: Batch,
        locs: list[Localizations],
        model: LoadedModel,
        threshold: float,
        *,
        refined: bool = False,
    ) -> None:
        """One message per frame set of ``batch`` (frame order is the batch order);
        ``refined``: the positions were refined (the header says so)."""
        # counted before anyone can see them, once for the batch (latency to the start of
        # its publication; each message carries the time it was sent itself)
        t0 = time.time_ns()
        self.stats.published_many([t0 - fs.t_cam_ns for fs in batch.sets])
        send = self._sock.send
        for fs, loc in zip(batch.sets, locs, strict=True):
            t_pub = time.time_ns()
            msg = LocsMessage(
                source=self.source,
                seq=self._seq,
                frame=fs.frame,
                model=model.name,
                model_version=model.version,
                threshold=threshold,
                t_cam_ns=fs.t_cam_ns,
                t_recv_ns=fs.t_recv_ns,
                t_pub_ns=t_pub,
                locs=loc,
                acquisition=fs.acquisition,
                refined=refined,
            )
            self._seq += 1
            header, rows = encode_locs(msg)
            send(header, zmq.SNDMORE)  # two sends: a third of send_multipart's cost
            send(rows, copy=rows.nbytes < COPY_BELOW_BYTES)
            for obs in self.observers:
                try:
                    obs.observe(msg, fs)
                except Exception:  # an observer must never stop the stream
                    log.exception("localization observer %r failed", obs.name)
            fs.release()  # the buffer goes back to the pool

    def observer_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for obs in self.observers:
            fn = getattr(obs, "stats", None)
            if not callable(fn):
                continue  # an observer without stats (the acquisition registry) is not listed
            try:
                out[obs.name] = fn()
            except Exception as exc:
                out[obs.name] = {"error": str(exc)}
        return out

    def close(self) -> None:
        self._sock.close(linger=0)
