"""Registration of the cameras into the reference plane, as an immutable snapshot.

Affine convention (docs/protocol.md Sec. 4): ``A`` (2x3, pixels) maps camera pixel
coordinates ``(x, y)`` to reference coordinates; pixel ``(i, j)`` has its centre at
``(j + 0.5, i + 0.5)``. Registered pixels are the camera image sampled bilinearly at
``A^-1`` of each reference pixel centre, then ``(adu - baseline) / gain``.

The live pipeline applies it on the engine's device, batched
(:class:`~engines.inference.registration.PlaneRegistration`, :attr:`Registration.device`).
:class:`PlaneWarp` is the same resampling on the host in numpy: the test reference, and
how the drift observer resamples the few small regions it fits
(:meth:`Registration.patches`), never whole frames.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from engines.inference.registration import PlaneRegistration
from service.settings import CameraRegistration


class PlaneWarp:
    """Precomputed bilinear resampling of one camera into the reference plane."""

    def __init__(
        self,
        *,
        affine: np.ndarray,
        height: int,
        width: int,
        gain_adu: float = 1.0,
        baseline_adu: float = 0.0,
    ) -> None:
        a = np.asarray(affine, dtype=np.float64).reshape(2, 3)
        self.height, self.width = int(height), int(width)
        self.gain_adu = np.float32(gain_adu)
        self.baseline_adu = np.float32(baseline_adu)
        self.identity = bool(np.array_equal(a, [[1, 0, 0], [0, 1, 0]]))
        if not self.identity:
            self._index, self._weight = self._bilinear_map(a)

    @classmethod
    def from_registration(cls, reg: CameraRegistration, height: int, width: int) -> PlaneWarp:
        return cls(
            affine=np.asarray(reg.affine),
            height=height,
            width=width,
            gain_adu=reg.gain_adu,
            baseline_adu=reg.baseline_adu,
        )

    def _bilinear_map(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.height, self.width
        inv = np.linalg.inv(a[:, :2])
        yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
        ref = np.stack([xx.ravel() - a[0, 2], yy.ravel() - a[1, 2]])
        cam_x, cam_y = inv @ ref
        col = np.clip(cam_x - 0.5, 0.0, w - 1.0)
        row = np.clip(cam_y - 0.5, 0.0, h - 1.0)
        j0 = np.minimum(np.floor(col), max(w - 2, 0)).astype(np.int64)
        i0 = np.minimum(np.floor(row), max(h - 2, 0)).astype(np.int64)
        fx, fy = col - j0, row - i0
        j1, i1 = np.minimum(j0 + 1, w - 1), np.minimum(i0 + 1, h - 1)
        index = np.stack([i0 * w + j0, i0 * w + j1, i1 * w + j0, i1 * w + j1])
        weight = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx])
        return index, weight.astype(np.float32)

    def apply(self, image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Registered ``(H, W)`` float32 image in model units, ``(adu - baseline) / gain``."""
        if out is None:
            out = np.empty((self.height, self.width), np.float32)
        if self.identity:
            np.subtract(image, self.baseline_adu, out=out, dtype=np.float32)
        else:
            flat = np.asarray(image, dtype=np.float32).ravel()
            acc = self._weight[0] * flat[self._index[0]]
            for k in range(1, 4):
                acc += self._weight[k] * flat[self._index[k]]
            np.subtract(acc.reshape(out.shape), self.baseline_adu, out=out)
        out /= self.gain_adu
        return out

    def sample(self, image: np.ndarray, flat: np.ndarray) -> np.ndarray:
        """Registered float32 values at reference pixels ``flat`` (``row * W + col``, any
        shape): :meth:`apply` at those pixels only."""
        src = np.asarray(image).ravel()
        if self.identity:
            acc = src[flat].astype(np.float32)
        else:
            acc = self._weight[0][flat] * src[self._index[0][flat]]
            for k in range(1, 4):
                acc += self._weight[k][flat] * src[self._index[k][flat]]
        return (acc - self.baseline_adu) / self.gain_adu


class Registration:
    """Every camera's registration at one moment (replaced, never changed).

    Frame sets carry the snapshot they are to be registered with, so an update applies
    from a named frame set on, whatever is still queued.
    """

    def __init__(
        self,
        cameras: dict[str, CameraRegistration],
        planes: dict[str, int],
        *,
        height: int,
        width: int,
    ) -> None:
        self.cameras = dict(cameras)
        self.planes = dict(planes)
        self.height, self.width = height, width
        self._by_plane = sorted(self.cameras, key=self.planes.__getitem__)

    def replace(self, changes: dict[str, CameraRegistration]) -> Registration:
        return Registration(
            {**self.cameras, **changes}, self.planes, height=self.height, width=self.width
        )

    @cached_property
    def device(self) -> PlaneRegistration:
        """The engine's input-stage parameters, by plane."""
        regs = [self.cameras[name] for name in self._by_plane]
        return PlaneRegistration.create(
            affine_px=np.array([r.affine for r in regs], dtype=np.float64),
            gain_adu=np.array([r.gain_adu for r in regs], dtype=np.float32),
            baseline_adu=np.array([r.baseline_adu for r in regs], dtype=np.float32),
        )

    @cached_property
    def warps(self) -> list[PlaneWarp]:
        """Host warps by plane (built on first use: the live path does not need them)."""
        return [
            PlaneWarp.from_registration(self.cameras[n], self.height, self.width)
            for n in self._by_plane
        ]

    def warp(self, camera: str) -> PlaneWarp:
        return self.warps[self._by_plane.index(camera)]

    def affines(self) -> np.ndarray:
        """``(P, 2, 3)`` float64 by plane."""
        return self.device.affine_px

    def patches(self, planes: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Registered ``(P, M, S, S)`` float32 patches of raw ``planes`` ``(P, H, W)``:
        reference rows ``rows`` ``(M, S)`` x columns ``cols`` ``(M, S)``."""
        flat = rows[:, :, None] * self.width + cols[:, None, :]
        return np.stack([w.sample(planes[k], flat) for k, w in enumerate(self.warps)])

    def registered(self, planes: np.ndarray) -> np.ndarray:
        """The whole ``(P, H, W)`` set registered on the host (tests, tools)."""
        return np.stack([w.apply(planes[k]) for k, w in enumerate(self.warps)])
