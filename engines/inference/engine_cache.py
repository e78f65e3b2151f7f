"""On-disk cache of serialised TensorRT engines (no TensorRT import here).

A TensorRT engine only runs with the TensorRT version and GPU it was built for, and only
for shapes inside its optimisation profile, at the precision it was built with. The cache
key holds all of these plus the ONNX file's hash; the file name carries a digest of the
key and a JSON sidecar the key itself. A cached engine whose sidecar does not match the
key, whose bytes do not match the sidecar's hash, or that TensorRT refuses to deserialise
is stale: it is rebuilt and replaced, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from engines.errors import EngineError
from engines.io.atomic import write_bytes, write_text

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Profile:
    """Optimisation profile: batch and square-side ranges (H and W each within min..max)."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    min_size: int = 16
    opt_size: int = 256
    max_size: int = 1024

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise EngineError(
                f"profile batch must satisfy 1 <= min <= opt <= max, got "
                f"{self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )
        if not 1 <= self.min_size <= self.opt_size <= self.max_size:
            raise EngineError(
                f"profile size must satisfy 1 <= min <= opt <= max, got "
                f"{self.min_size}/{self.opt_size}/{self.max_size}"
            )

    def shapes(self, planes: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) input shapes ``(B, P, H, W)``."""
        return (
            (self.min_batch, planes, self.min_size, self.min_size),
            (self.opt_batch, planes, self.opt_size, self.opt_size),
            (self.max_batch, planes, self.max_size, self.max_size),
        )

    def check_frame(self, height: int, width: int) -> None:
        """EngineError if a frame size is outside the profile (batch is chunked instead)."""
        for name, n in (("height", height), ("width", width)):
            if not self.min_size <= n <= self.max_size:
                raise EngineError(
                    f"frame {name} {n} px is outside the TensorRT engine's profile "
                    f"({self.min_size}..{self.max_size} px); rebuild with "
                    f"`voxloc build-engine --min-size/--max-size`"
                )


@dataclass(frozen=True)
class CacheKey:
    """Everything a serialised engine depends on."""

    model: str
    onnx_sha256: str
    trt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: Profile = field(default_factory=Profile)

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def filename(self) -> str:
        return f"{self.model}-{self.precision}-{self.digest()[:16]}.engine"


class EngineCache:
    """A folder of ``*.engine`` files with ``*.engine.json`` sidecars."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, key: CacheKey) -> Path:
        return self.folder / key.filename()

    def load(self, key: CacheKey) -> bytes | None:
        """The cached engine bytes for ``key``, or None if absent or stale."""
        path = self.path(key)
        sidecar = path.with_name(path.name + ".json")
        if not path.is_file():
            return None
        try:
            meta = json.loads(sidecar.read_text())
            blob = path.read_bytes()
        except (OSError, ValueError) as exc:
            log.warning("engine cache %s unreadable (%s); rebuilding", path, exc)
            return None
        if meta.get("key") != key.to_dict():
            log.warning(
                "engine cache %s was built for %s, need %s; rebuilding",
                path,
                meta.get("key"),
                key.to_dict(),
            )
            return None
        if meta.get("sha256") != hashlib.sha256(blob).hexdigest():
            log.warning("engine cache %s is corrupt (hash mismatch); rebuilding", path)
            return None
        return blob

    def store(self, key: CacheKey, blob: bytes) -> Path:
        """Write engine and sidecar atomically."""
        path = self.path(key)
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = {"key": key.to_dict(), "sha256": hashlib.sha256(blob).hexdigest()}
        write_bytes(path, blob)
        write_text(path.with_name(path.name + ".json"), json.dumps(meta, indent=2) + "\n")
        return path

    def get_or_build(
        self,
        key: CacheKey,
        build: Callable[[], bytes],
        deserialize: Callable[[bytes], T | None],
        *,
        force: bool = False,
    ) -> tuple[T, Path]:
        """Deserialise the cached engine, or build, store and deserialise a new one.

        ``deserialize`` returns None (or raises) for bytes it cannot use, e.g. an engine of
        another TensorRT build under the same key; that counts as stale and is rebuilt.
        """
        blob = None if force else self.load(key)
        if blob is not None:
            try:
                obj = deserialize(blob)
            except Exception as exc:  # TensorRT raises RuntimeError/TypeError variants
                log.warning("cached engine %s failed to load (%s)", self.path(key), exc)
                obj = None
            if obj is not None:
                log.info("loaded cached engine %s", self.path(key))
                return obj, self.path(key)
            log.warning("cached engine %s is stale; rebuilding", self.path(key))
        log.info("building engine %s (this takes a while, once)", self.path(key))
        blob = build()
        path = self.store(key, blob)
        obj = deserialize(blob)
        if obj is None:
            raise EngineError(f"freshly built engine {path} cannot be deserialised")
        return obj, path
