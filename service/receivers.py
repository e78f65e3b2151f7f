"""The ingest's thread bodies: every camera received in one thread, or one thread each.

Both hand what a camera sent to the aligner (:meth:`service.aligner.Aligner.accept_many`,
which copies the payload into the frame set's buffer) and queue completed sets through
the pipeline's ``flush``; they keep the same rules: a camera more than
``aligner.max_lead`` sets ahead of the slowest active one is not read until the others
catch up (its frames wait in its socket, so backpressure reaches it as on one trigger),
and timeouts, overflow and ended acquisitions are flushed at least every
``FLUSH_EVERY_S``.

Which one runs is ``[stream] ingest_threads`` (:func:`ingest_mode`). One thread for all
cameras (a ``zmq.Poller`` over their sockets) takes a third less CPU per frame set than
a thread per camera on a 2-core machine (docs/performance.md): the Python work per
message is the same, but four threads hand the GIL to each other for every message and
preempt one another. A thread per camera pays that to copy large frames in parallel
(numpy releases the GIL while it copies), which is what a many-core host with large
frames wants.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import zmq

from service.aligner import Aligner
from service.ingest import CameraEndpoint, Ingest
from service.settings import StreamSettings
from service.wire import FrameMessage

POLL_MS = 20
LEAD_WAIT_MS = 2  # a held camera's lead is looked at this often
LEAD_WAIT_S = LEAD_WAIT_MS / 1e3
FLUSH_EVERY_S = 0.005
DRAIN_MAX = 4  # messages taken from one camera per poll round (what has queued up)
# completed sets are queued at most this often (one flush for the sets of a few rounds:
# the batch consumer looks every max_delay anyway, unless a whole batch is waiting)
FLUSH_COMPLETED_MS = 1
FLUSH_COMPLETED_S = FLUSH_COMPLETED_MS / 1e3
# ingest_threads = "auto": a thread per camera only where a frame is at least this big
# and the host has more than two cores per camera (else one thread for all)
PER_CAMERA_MIN_FRAME_BYTES = 1 << 20


def ingest_mode(stream: StreamSettings, cameras: int, cores: int | None = None) -> str:
    """``"one"`` or ``"per_camera"``: the setting, or for ``"auto"`` the choice above."""
    if stream.ingest_threads != "auto":
        return stream.ingest_threads
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    frame_bytes = stream.height * stream.width * 2  # uint16, the cameras' usual type
    big = frame_bytes >= PER_CAMERA_MIN_FRAME_BYTES
    return "per_camera" if big and cores > 2 * cameras else "one"


class Receivers:
    """The receive loops over ``ingest``'s cameras, until ``stop`` is set."""

    def __init__(
        self, ingest: Ingest, aligner: Aligner, flush: Callable[[], None], stop: threading.Event
    ) -> None:
        self.ingest = ingest
        self.aligner = aligner
        self.flush = flush
        self.stop = stop

    def all_cameras(self) -> None:
        """Every camera in this thread: poll their sockets, take what waits in each that
        has a message (up to ``DRAIN_MAX``), then flush if a set completed at least
        ``FLUSH_COMPLETED_S`` after the last flush (or nothing came, or it is due)."""
        poller = zmq.Poller()
        by_sock: dict[zmq.Socket, CameraEndpoint] = {}
        monitors: dict[zmq.Socket, CameraEndpoint] = {}  # connection events as they come
        for cam in self.ingest.cameras:
            poller.register(cam.sock, zmq.POLLIN)
            poller.register(cam.monitor, zmq.POLLIN)
            by_sock[cam.sock], monitors[cam.monitor] = cam, cam
        lead = {cam.name: 0 for cam in self.ingest.cameras}
        held: set[str] = set()  # cameras too far ahead: not polled, so not read
        flushed = time.monotonic()
        to_flush = False  # a set completed since the last flush
        while not self.stop.is_set():
            self._hold_leaders(poller, lead, held)
            try:
                wait_ms = LEAD_WAIT_MS if held else POLL_MS
                # a completed set waiting for its flush does not wait for a message
                events = poller.poll(FLUSH_COMPLETED_MS if to_flush else wait_ms)
            except zmq.ZMQError:
                if self.stop.is_set():  # the sockets closed under a stopping pipeline
                    return
                raise
            frames: list[tuple[str, FrameMessage]] = []
            received: list[str] = []  # counted once per round
            for sock, _ in events:
                if sock in monitors:
                    self.ingest.monitor(monitors[sock])
                    continue
                cam = by_sock[sock]
                for m in self.ingest.receive_ready(cam, DRAIN_MAX, received):
                    frames.append((cam.name, m))
            if received:
                self.ingest.stats.frames_in_from(received)
            if frames:  # every camera's frames of this round under one hold of the lock
                completed, leads = self.aligner.accept_from(frames)
                lead.update(leads)
                to_flush |= completed
            now = time.monotonic()
            since = now - flushed
            if (to_flush and since >= FLUSH_COMPLETED_S) or not events or since >= FLUSH_EVERY_S:
                self.flush()
                flushed, to_flush = now, False

    def _hold_leaders(self, poller: zmq.Poller, lead: dict[str, int], held: set[str]) -> None:
        """Stop polling a camera that got too far ahead; poll it again once it is not."""
        max_lead = self.aligner.max_lead
        for cam in self.ingest.cameras:
            name = cam.name
            if name in held:
                lead[name] = self.aligner.lead(name)
                if lead[name] <= max_lead:
                    poller.modify(cam.sock, zmq.POLLIN)
                    held.discard(name)
            elif lead[name] > max_lead:
                poller.modify(cam.sock, 0)
                held.add(name)

    def one_camera(self, cam: CameraEndpoint) -> None:
        """One camera's own thread: a blocking receive (GIL released while it waits),
        its frames to the aligner, completed sets queued at once."""
        lead = 0  # sets ahead of the slowest active camera, as of its latest frames
        flushed = time.monotonic()
        while not self.stop.is_set():
            if lead > self.aligner.max_lead:
                self.stop.wait(LEAD_WAIT_S)
                self.flush()
                lead = self.aligner.lead(cam.name)
                continue
            msgs = self.ingest.receive_camera(cam, POLL_MS)
            completed = False
            if msgs:
                completed, lead = self.aligner.accept_many(cam.name, msgs)
            now = time.monotonic()
            # completed sets at once; timeouts, overflow and acquisitions that ended at
            # least every FLUSH_EVERY_S (a flush costs as much as taking the frames in)
            if completed or not msgs or now - flushed >= FLUSH_EVERY_S:
                self.flush()
                flushed = now
