"""napari dock widget: follow a running service's localization stream, live.

:class:`LiveBuffer` (no Qt) subscribes to the service's stream and keeps the newest
``max_points`` localizations; older ones are discarded and counted. :class:`LiveWidget`
drains it ``refresh_hz`` times a second on the GUI thread (at most ``max_messages`` per
refresh, the rest waits in the socket, whose high-water mark bounds it; what the socket
loses shows as missed messages) and updates one Points layer, ``voxloc live``: positions
in nm in napari's ``(z, y, x)`` order, coloured by z, features ``frame`` (from 0, as on
the wire), ``z [nm]`` and ``confidence``. Its controls call the service's REST API
(:class:`~clients.control.ControlClient`): the threshold, refining the positions, and
which model runs; a setting another client changes shows in them when the stream has it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from clients.control import DEFAULT_URL, ControlClient, ControlError
from clients.napari_plugin.reader import COLORMAP, POINT_SIZE_NM, UNITS, zyx
from clients.subscriber import DEFAULT_LOCS_ENDPOINT, LocalizationSubscriber
from engines.errors import VoxlocError

if TYPE_CHECKING:
    from napari.layers import Points
    from napari.qt.threading import FunctionWorker

log = logging.getLogger(__name__)

LAYER_NAME = "voxloc live"
DEFAULT_MAX_POINTS = 200_000
DEFAULT_REFRESH_HZ = 4.0
DEFAULT_MAX_MESSAGES = 2_000  # per refresh
STREAM_RCVHWM = 20_000  # messages the socket holds between refreshes before it drops


class LiveBuffer:
    """The newest ``max_points`` localizations of a service's stream.

    Attributes: ``xyz_nm`` ``(N, 3)`` float64 (x, y, z) nm, ``frame`` ``(N,)`` int64 from
    0, ``confidence`` ``(N,)`` float64; ``discarded`` counts rows dropped to stay bounded.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_LOCS_ENDPOINT,
        *,
        max_points: int = DEFAULT_MAX_POINTS,
        max_messages: int = DEFAULT_MAX_MESSAGES,
    ) -> None:
        if max_points < 1 or max_messages < 1:
            raise ValueError(
                f"max_points and max_messages must be >= 1, got {max_points}, {max_messages}"
            )
        self.max_points, self.max_messages = max_points, max_messages
        self.sub = LocalizationSubscriber(endpoint, rcvhwm=STREAM_RCVHWM)
        self.xyz_nm = np.zeros((0, 3))
        self.frame = np.zeros(0, np.int64)
        self.confidence = np.zeros(0)
        self.messages = self.discarded = 0
        self.model = ""
        self.threshold: float | None = None
        self.refined = False  # the latest message's positions were refined

    @property
    def missed(self) -> int:
        return self.sub.gaps.missed

    def poll(self) -> int:
        """Take what has arrived (up to ``max_messages``); the number of new rows."""
        rows = []
        for _ in range(self.max_messages):
            msg = self.sub.recv(0)
            if msg is None:
                break
            self.messages += 1
            self.model, self.threshold, self.refined = msg.model, msg.threshold, msg.refined
            if len(msg.locs):
                rows.append(msg.locs.to_array())
        if not rows:
            return 0
        new = np.concatenate(rows)
        self.xyz_nm = np.concatenate([self.xyz_nm, new[:, 1:4]])
        self.frame = np.concatenate([self.frame, new[:, 0].astype(np.int64)])
        self.confidence = np.concatenate([self.confidence, new[:, 4]])
        excess = len(self.frame) - self.max_points
        if excess > 0:
            self.xyz_nm, self.frame = self.xyz_nm[excess:], self.frame[excess:]
            self.confidence = self.confidence[excess:]
            self.discarded += excess
        return len(new)

    def clear(self) -> None:
        self.xyz_nm, self.frame, self.confidence = (
            self.xyz_nm[:0],
            self.frame[:0],
            self.confidence[:0],
        )

    def features(self) -> dict[str, np.ndarray]:
        return {"frame": self.frame, "z [nm]": self.xyz_nm[:, 2], "confidence": self.confidence}

    def close(self) -> None:
        self.sub.close()


class LiveWidget(QWidget):
    """Dock widget (npe2 ``voxloc.live_widget``); see the module docstring."""

    def __init__(
        self,
        napari_viewer: Any,
        *,
        locs_endpoint: str = DEFAULT_LOCS_ENDPOINT,
        url: str = DEFAULT_URL,
        refresh_hz: float = DEFAULT_REFRESH_HZ,
        max_points: int = DEFAULT_MAX_POINTS,
        max_messages: int = DEFAULT_MAX_MESSAGES,
    ) -> None:
        super().__init__()
        if refresh_hz <= 0:
            raise ValueError(f"refresh_hz must be > 0, got {refresh_hz}")
        self.viewer = napari_viewer
        self.max_points, self.max_messages = max_points, max_messages
        self.buffer: LiveBuffer | None = None
        self.control: ControlClient | None = None
        self.layer: Points | None = None
        self._worker: FunctionWorker[dict[str, Any]] | None = None
        self._stream_seen: tuple[str, float | None, bool] | None = None  # see _follow
        self.timer = QTimer(self)
        self.timer.setInterval(int(1000 / refresh_hz))
        self.timer.timeout.connect(self.refresh)
        self._build(locs_endpoint, url)

    # -- UI -------------------------------------------------------------------------------
    def _build(self, locs_endpoint: str, url: str) -> None:
        self.endpoint_edit = QLineEdit(locs_endpoint)
        self.url_edit = QLineEdit(url)
        self.connect_button = QPushButton("Connect")
        self.connect_button.clicked.connect(self.toggle)
        self.clear_button = QPushButton("Clear")
        self.clear_button.clicked.connect(self.clear)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(3)
        self.threshold_button = QPushButton("Set")
        self.threshold_button.clicked.connect(self.apply_threshold)
        self.refine_box = QCheckBox("refine positions (photometry fit)")
        self.refine_box.clicked.connect(self.apply_refine)  # the user's clicks, not setChecked
        self.model_combo = QComboBox()
        self.model_button = QPushButton("Load")
        self.model_button.clicked.connect(self.load_model)
        self.status = QLabel("not connected")  # the stream
        self.status.setWordWrap(True)
        self.message = QLabel("")  # answers of the REST calls
        self.message.setWordWrap(True)
        form = QFormLayout(self)
        form.addRow("stream", self.endpoint_edit)
        form.addRow("REST API", self.url_edit)
        form.addRow(_row(self.connect_button, self.clear_button))
        form.addRow("threshold", _row(self.threshold_spin, self.threshold_button))
        form.addRow(self.refine_box)
        form.addRow("model", _row(self.model_combo, self.model_button))
        form.addRow(self.status)
        form.addRow(self.message)

    # -- stream ---------------------------------------------------------------------------
    def toggle(self) -> None:
        self.stop() if self.buffer is not None else self.start()

    def start(self) -> None:
        """Subscribe to the stream, read threshold and models, start refreshing."""
        try:
            self.buffer = LiveBuffer(
                self.endpoint_edit.text().strip(),
                max_points=self.max_points,
                max_messages=self.max_messages,
            )
        except VoxlocError as exc:
            self._say(f"cannot subscribe: {exc}")
            return
        self.control = ControlClient(self.url_edit.text().strip(), timeout_s=5.0)
        self._stream_seen = None
        self._ensure_layer()
        self.sync_controls()
        self.connect_button.setText("Disconnect")
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        if self.buffer is not None:
            self.buffer.close()
            self.buffer = None
        if self.control is not None:
            self.control.close()
            self.control = None
        self.connect_button.setText("Connect")

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        self.stop()
        super().closeEvent(event)

    def refresh(self) -> None:
        """One rate-limited update: drain the buffer, redraw the layer if rows came."""
        buf = self.buffer
        if buf is None:
            return
        new = buf.poll()
        if new:
            layer = self._ensure_layer()
            layer.data = zyx(buf.xyz_nm)
            layer.features = buf.features()
            layer.refresh_colors(update_color_mapping=True)
        self._follow(buf)
        self._say(
            f"{buf.messages} frames, {len(buf.frame)} points shown"
            + (f", {buf.discarded} oldest dropped" if buf.discarded else "")
            + (f", {buf.missed} messages missed" if buf.missed else "")
            + (f"; model {buf.model}, threshold {buf.threshold:g}" if buf.model else "")
            + (", refined" if buf.refined else "")
        )

    def _follow(self, buf: LiveBuffer) -> None:
        """Show a model, threshold or refine setting that changed in the stream (another
        client set it). Only a change moves the controls: a value the user is editing, or one
        just set that the stream has not reached yet, stays as it is."""
        seen = (buf.model, buf.threshold, buf.refined)
        if not buf.model or seen == self._stream_seen:
            return
        old = self._stream_seen or ("", None, None)
        self._stream_seen = seen
        if buf.threshold is not None and buf.threshold != old[1]:
            if not self.threshold_spin.hasFocus():
                self.threshold_spin.setValue(buf.threshold)
        if buf.refined != old[2]:
            self.refine_box.setChecked(buf.refined)  # emits toggled, not clicked
        if buf.model != old[0] and self.model_combo.findText(buf.model) >= 0:
            self.model_combo.setCurrentText(buf.model)

    def clear(self) -> None:
        if self.buffer is not None:
            self.buffer.clear()
        if self.layer is not None:
            self.layer.data = np.zeros((0, 3))

    def _ensure_layer(self) -> Points:
        if self.layer is not None and self.layer in self.viewer.layers:
            return self.layer
        self.layer = self.viewer.add_points(
            np.zeros((0, 3)),
            ndim=3,
            name=LAYER_NAME,
            features={
                "frame": np.zeros(0, np.int64),
                "z [nm]": np.zeros(0),
                "confidence": np.zeros(0),
            },
            face_color="z [nm]",
            face_colormap=COLORMAP,
            size=POINT_SIZE_NM,
            border_width=0,
            axis_labels=("z", "y", "x"),
            units=UNITS,
        )
        return self.layer

    # -- REST controls --------------------------------------------------------------------
    def sync_controls(self) -> None:
        """Show the service's threshold and its models."""
        if self.control is None:
            return
        try:
            config = self.control.config()
            self.threshold_spin.setValue(float(config["threshold"]))
            self.refine_box.setChecked(bool(config.get("refine", False)))
            models = self.control.models()
        except ControlError as exc:
            self._tell(f"REST API: {exc}")
            return
        active = models["active"]["name"]
        self.model_combo.clear()
        self.model_combo.addItems(sorted(m["name"] for m in models["available"]))
        self.model_combo.setCurrentText(active)

    def apply_threshold(self) -> None:
        if self.control is None:
            self._tell("connect first")
            return
        try:
            config = self.control.set_threshold(self.threshold_spin.value())
        except ControlError as exc:
            self._tell(f"threshold not set: {exc}")
            return
        self._tell(f"threshold set to {config['threshold']:g}")

    def apply_refine(self, on: bool) -> None:
        if self.control is None:
            self.refine_box.setChecked(False)
            self._tell("connect first")
            return
        try:
            config = self.control.set_config(refine=bool(on))
        except ControlError as exc:
            self.refine_box.setChecked(not on)
            self._tell(f"refine not set: {exc}")
            return
        self._tell(
            "refined positions from the next batch"
            if config["refine"]
            else "network positions from the next batch"
        )

    def load_model(self) -> None:
        """Load the chosen model beside the running one (in a worker: loads take a while)."""
        from napari.qt.threading import create_worker

        if self.control is None:
            self._tell("connect first")
            return
        name = self.model_combo.currentText()
        self.model_button.setEnabled(False)
        self._tell(f"loading model {name} ...")
        worker: FunctionWorker[dict[str, Any]] = create_worker(self.control.load_model, name)
        worker.returned.connect(self._model_loaded)
        worker.errored.connect(lambda exc: self._model_failed(name, exc))
        worker.finished.connect(lambda: self.model_button.setEnabled(True))
        worker.start()
        self._worker = worker

    def _model_loaded(self, answer: dict) -> None:
        self._tell(f"model {answer['active']['name']} {answer['active']['version']} serving")

    def _model_failed(self, name: str, exc: Exception) -> None:
        self._tell(f"model {name} not loaded (the old one keeps serving): {exc}")

    def _say(self, text: str) -> None:
        self.status.setText(text)

    def _tell(self, text: str) -> None:
        self.message.setText(text)
        log.info("%s", text)


def _row(*widgets: QWidget) -> QWidget:
    box = QWidget()
    lay = QHBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        lay.addWidget(w)
    return box
