"""Wire format (CONVENTIONS.md "Wire (ZeroMQ)", docs/protocol.md).

Every message is multipart: a msgpack header map, then the raw array bytes. Pixels are
never packed inside msgpack and nothing is ever pickled. Both message kinds carry the
format version, the source name and a frame index (from 0, per acquisition).

Versions are per kind: camera frames are version :data:`WIRE_VERSION` (1); localization
messages are version :data:`LOCS_VERSION` (2: photometry and precision columns), and
version-1 localization messages (five columns) are still read, their photometry NaN.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack
import numpy as np

from engines.errors import StreamError
from engines.types import LEGACY_LOC_COLUMNS, LOC_COLUMNS, Localizations

WIRE_VERSION = 1  # camera frames
LOCS_VERSION = 2  # localization messages; 2 added photometry and precision columns
# The columns of each localization message version this reader understands.
LOCS_COLUMNS_BY_VERSION: dict[int, tuple[str, ...]] = {1: LEGACY_LOC_COLUMNS, 2: LOC_COLUMNS}
FRAME_KIND = "frame"
LOCS_KIND = "locs"
FRAME_DTYPES = ("uint16", "float32")
MAX_SIDE = 8192


class Reject(str, enum.Enum):
    """Why a message was refused; the service counts rejects under these names."""

    MALFORMED = "malformed"  # not msgpack / not a map / missing parts
    VERSION = "version"  # unknown format version
    KIND = "kind"  # not a message of the expected kind
    FIELDS = "fields"  # missing or mistyped header field
    DTYPE = "dtype"  # pixel dtype not accepted
    SHAPE = "shape"  # shape not the configured one
    SIZE = "size"  # payload length does not match dtype x shape
    PLANE = "plane"  # plane index outside the configured planes
    SOURCE = "source"  # camera name not the one of this endpoint
    STALE = "stale"  # frame index older than the assembly window
    DUPLICATE = "duplicate"  # frame index already received from this camera
    NONFINITE = "nonfinite"  # NaN / inf pixels
    DESYNC = "desync"  # frame index inconsistent with the other cameras (service/sync.py)
    UNAUTHENTICATED = "unauthenticated"  # CURVE handshake refused (service/curve.py)


class WireError(StreamError):
    """A message that breaks the protocol; ``reason`` says how."""

    def __init__(self, reason: Reject, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class FrameMessage(NamedTuple):
    """One camera image: plane ``plane`` of time point ``frame``.

    A named tuple rather than a dataclass: the ingest builds one per camera message, and
    a tuple is built in a fifth of a frozen dataclass's time."""

    source: str
    plane: int
    frame: int
    t_ns: int
    image: np.ndarray  # (H, W) uint16 or float32, read-only view on the message buffer
    acquisition: str | None = None  # None: the service's current acquisition


def _pack(header: dict[str, Any]) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def encode_frame(
    source: str,
    plane: int,
    frame: int,
    image: np.ndarray,
    t_ns: int,
    acquisition: str | None = None,
) -> list:
    """Multipart message for one camera image (zero-copy: the array is the second part).

    ``acquisition`` names the acquisition the frame belongs to (frame indices count from
    0 in each); without it the frame belongs to the service's current acquisition."""
    img = np.ascontiguousarray(image)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) image, got shape {img.shape}")
    if img.dtype.name not in FRAME_DTYPES:
        raise ValueError(f"expected uint16 or float32 pixels, got {img.dtype}")
    header = {
        "v": WIRE_VERSION,
        "kind": FRAME_KIND,
        "source": source,
        "plane": int(plane),
        "frame": int(frame),
        "t_ns": int(t_ns),
        "dtype": img.dtype.name,
        "shape": [int(img.shape[0]), int(img.shape[1])],
    }
    if acquisition is not None:
        header["acquisition"] = _acquisition_id(acquisition, ValueError)
    return [_pack(header), img]


MAX_ACQUISITION_ID = 255


def _acquisition_id(value: object, error: type[Exception]) -> str:
    if isinstance(value, str) and 0 < len(value) <= MAX_ACQUISITION_ID:
        return value
    got = f"{len(value)} characters" if isinstance(value, str) else repr(value)[:40]
    text = f"acquisition id must be a string of 1-{MAX_ACQUISITION_ID} characters, got {got}"
    if error is WireError:
        raise WireError(Reject.FIELDS, text)
    raise error(text)


def _header(parts: list, kind: str, versions: tuple[int, ...] = (WIRE_VERSION,)) -> dict[str, Any]:
    if len(parts) != 2:
        raise WireError(Reject.MALFORMED, f"expected 2 message parts, got {len(parts)}")
    try:
        header = msgpack.unpackb(bytes(parts[0]), raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(Reject.MALFORMED, f"header is not msgpack: {exc}") from exc
    if not isinstance(header, dict):
        raise WireError(Reject.MALFORMED, f"header is a {type(header).__name__}, not a map")
    version = header.get("v")
    if version not in versions or isinstance(version, bool):
        raise WireError(Reject.VERSION, _version_text(kind, versions, version))
    if header.get("kind") != kind:
        raise WireError(Reject.KIND, f"expected a {kind!r} message, got {header.get('kind')!r}")
    return header


def _version_text(kind: str, versions: tuple[int, ...], got: object) -> str:
    newest, older = versions[-1], ", ".join(str(v) for v in versions[:-1])
    text = f"expected wire version {newest}" + (f" (or {older}, still read)" if older else "")
    text += f" for {kind!r} messages, got {got!r}"
    if isinstance(got, int) and got > newest:
        text += " from a newer voxloc: upgrade this reader"
    return text


def _field(header: dict, name: str, typ: type | tuple) -> Any:
    value = header.get(name)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise WireError(
            Reject.FIELDS,
            f"header field {name!r} missing or not {getattr(typ, '__name__', typ)}: {value!r}",
        )
    return value


def _flag(header: dict, name: str) -> bool:
    """An optional boolean header field (absent: False, as from a sender before it)."""
    value = header.get(name, False)
    if not isinstance(value, bool):
        raise WireError(Reject.FIELDS, f"header field {name!r} not a boolean: {value!r}")
    return value


def decode_frame(parts: list) -> FrameMessage:
    """Parse and check a camera message; raises :class:`WireError` with a reason."""
    header = _header(parts, FRAME_KIND)
    source = _field(header, "source", str)
    plane = _field(header, "plane", int)
    frame = _field(header, "frame", int)
    t_ns = _field(header, "t_ns", int)
    dtype = _field(header, "dtype", str)
    shape = _field(header, "shape", list)
    if frame < 0:
        raise WireError(Reject.FIELDS, f"frame index must be >= 0, got {frame}")
    if dtype not in FRAME_DTYPES:
        raise WireError(Reject.DTYPE, f"expected dtype uint16 or float32, got {dtype!r}")
    if len(shape) != 2 or not all(isinstance(s, int) and 0 < s <= MAX_SIDE for s in shape):
        raise WireError(
            Reject.SHAPE, f"expected shape [H, W] with 0 < H, W <= {MAX_SIDE}, got {shape!r}"
        )
    buf = memoryview(parts[1])
    expected = shape[0] * shape[1] * np.dtype(dtype).itemsize
    if buf.nbytes != expected:
        raise WireError(
            Reject.SIZE,
            f"payload of {buf.nbytes} bytes, expected {expected} for {shape[0]}x{shape[1]} {dtype}",
        )
    image = np.frombuffer(buf, dtype=dtype).reshape(shape)
    acquisition = header.get("acquisition")
    if acquisition is not None:
        acquisition = _acquisition_id(acquisition, WireError)
    return FrameMessage(source, plane, frame, t_ns, image, acquisition)


class FrameDecoder:
    """:func:`decode_frame` and the checks of one camera, on the path every frame takes.

    ``decode(parts)`` returns the message where the header carries exactly what this
    camera must send (its ``source`` and ``plane``, the configured shape, an accepted
    dtype, a frame index >= 0, an integer timestamp, a valid acquisition id or none) and
    the payload has the matching size (float32: finite pixels); one msgpack unpack and a
    chain of comparisons against values cached here. Anything else returns None: the
    caller then runs the full :func:`decode_frame` and its own checks, which name the
    :class:`Reject` reason. It never accepts a message those would refuse."""

    def __init__(
        self, *, source: str, plane: int, height: int, width: int, dtype: str | None
    ) -> None:
        self.source, self.plane = source, plane
        self.height, self.width = height, width
        dtypes = FRAME_DTYPES if dtype is None else (dtype,)
        # header dtype name -> (numpy dtype, payload bytes)
        self._dtypes = {d: (np.dtype(d), height * width * np.dtype(d).itemsize) for d in dtypes}

    def decode(self, parts: list) -> FrameMessage | None:
        try:
            if len(parts) != 2:
                return None
            header = msgpack.unpackb(parts[0], raw=False)
            get = header.get
            shape, frame, t_ns = get("shape"), get("frame"), get("t_ns")
            dtype = get("dtype")
            found = self._dtypes.get(dtype) if type(dtype) is str else None
            if not (
                found is not None
                and get("v") == WIRE_VERSION
                and get("kind") == FRAME_KIND
                and get("source") == self.source
                and type(get("plane")) is int  # bool and float compare equal to int
                and get("plane") == self.plane
                and type(frame) is int
                and frame >= 0
                and type(t_ns) is int
                and type(shape) is list
                and len(shape) == 2
                and type(shape[0]) is int
                and type(shape[1]) is int
                and shape[0] == self.height
                and shape[1] == self.width
                and memoryview(parts[1]).nbytes == found[1]
            ):
                return None
            acquisition = get("acquisition")
            if acquisition is not None and not (
                type(acquisition) is str and 0 < len(acquisition) <= MAX_ACQUISITION_ID
            ):
                return None
            image = np.frombuffer(parts[1], found[0]).reshape(self.height, self.width)
        except Exception:  # not msgpack, not a map, an odd part: the full decode says why
            return None
        if found[0].kind == "f" and not np.isfinite(image).all():
            return None
        return FrameMessage(self.source, self.plane, frame, t_ns, image, acquisition)


@dataclass(frozen=True)
class LocsMessage:
    """Localizations of one frame set, as published by the service."""

    source: str
    seq: int
    frame: int
    model: str
    model_version: str
    threshold: float
    t_cam_ns: int
    t_recv_ns: int
    t_pub_ns: int
    locs: Localizations
    acquisition: str = ""
    refined: bool = False  # positions refined by the photometry fit (the refine setting)

    def header(self) -> dict[str, Any]:
        return {
            "v": LOCS_VERSION,
            "kind": LOCS_KIND,
            "source": self.source,
            "seq": self.seq,
            "frame": self.frame,
            "model": self.model,
            "model_version": self.model_version,
            "threshold": self.threshold,
            "t_cam_ns": self.t_cam_ns,
            "t_recv_ns": self.t_recv_ns,
            "t_pub_ns": self.t_pub_ns,
            "acquisition": self.acquisition,
            "refined": self.refined,
            "columns": list(LOC_COLUMNS),
            "dtype": "float64",
            "shape": [len(self.locs), len(LOC_COLUMNS)],
        }


def encode_locs(msg: LocsMessage) -> list:
    """Multipart message: header, then ``(N, 10)`` float64 rows in ``LOC_COLUMNS`` (CSV)
    order; photometry and precision NaN where unknown."""
    return [_pack(msg.header()), np.ascontiguousarray(msg.locs.to_array())]


def decode_locs(parts: list) -> LocsMessage:
    """Parse a localization message of version 2, or of version 1 (five columns, read
    with NaN photometry and precision); raises :class:`WireError` with a reason."""
    header = _header(parts, LOCS_KIND, tuple(LOCS_COLUMNS_BY_VERSION))
    columns = LOCS_COLUMNS_BY_VERSION[header["v"]]
    if tuple(header.get("columns", columns)) != columns:
        raise WireError(
            Reject.FIELDS,
            f"expected the columns {list(columns)} in a version {header['v']} 'locs' "
            f"message, got {header.get('columns')!r}",
        )
    shape = _field(header, "shape", list)
    width = len(columns)
    if (
        len(shape) != 2
        or shape[1] != width
        or not isinstance(shape[0], int)
        or shape[0] < 0
        or header.get("dtype") != "float64"
    ):
        raise WireError(
            Reject.SHAPE,
            f"expected (N, {width}) float64 rows, got {shape!r} {header.get('dtype')!r}",
        )
    buf = memoryview(parts[1])
    if buf.nbytes != shape[0] * width * 8:
        raise WireError(Reject.SIZE, f"payload of {buf.nbytes} bytes for {shape[0]} rows")
    rows = np.frombuffer(buf, dtype=np.float64).reshape(shape)
    frame = _field(header, "frame", int)
    return LocsMessage(
        source=_field(header, "source", str),
        seq=_field(header, "seq", int),
        frame=frame,
        model=_field(header, "model", str),
        model_version=str(header.get("model_version", "")),
        threshold=float(_field(header, "threshold", (float, int))),
        t_cam_ns=int(header.get("t_cam_ns", 0)),
        t_recv_ns=int(header.get("t_recv_ns", 0)),
        t_pub_ns=int(header.get("t_pub_ns", 0)),
        locs=Localizations.from_array(frame, rows),
        acquisition=str(header.get("acquisition", "")),
        refined=_flag(header, "refined"),
    )
