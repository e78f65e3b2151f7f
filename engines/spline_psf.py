"""A measured PSF: per plane a 3D cubic B-spline of the pixel value around a molecule.

For plane ``k`` the spline ``f_k(dx, dy, z)`` is the expected value of the pixel whose centre
lies ``(dx, dy)`` nm from the molecule (pixel centre minus molecule, x along columns), for
a molecule at sample depth ``z`` (CONVENTIONS.md: z = 0 at the lower edge of plane 0's
voxel). Depth enters absolutely, not as a defocus, so depth-dependent aberrations are kept.
``f_k`` is normalised to a unit pixel sum at the plane's focal position (the bead z of
maximum peak intensity).

The lateral knots are ``oversample`` times finer than the camera pixel, so an undersampled
PSF (sigma ~0.7 px) is still interpolated to well under 1% of its peak. Rendering is torch,
vectorised over molecules and planes: the cubic B-spline weights of one molecule are the
same for all pixels of its window (pixel centres are ``oversample`` knots apart), so a
window row is one weighted sum of 16 knot rows (4 z x 4 y taps) and its pixels a 4-tap
filter along that row. Positions are exact (no grid snapping) and differentiable.

File format (``.npz``, :data:`FORMAT` version :data:`FORMAT_VERSION`): ``coeffs`` ``(P, Z, G,
G)`` float32 B-spline coefficients, ``values`` the same shape (the sampled PSF), and the
scalars / vectors named in :class:`SplinePSF`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from engines.errors import FormatError

FORMAT = "voxloc-spline-psf"
FORMAT_VERSION = 1


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bspline_weights(t: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` cubic B-spline weights of taps ``i-1 .. i+2`` for fractions ``t`` in [0, 1)."""
    t2 = t * t
    t3 = t2 * t
    return torch.stack(
        [
            (1 - t) ** 3 / 6,
            (3 * t3 - 6 * t2 + 4) / 6,
            (-3 * t3 + 3 * t2 + 3 * t + 1) / 6,
            t3 / 6,
        ],
        dim=-1,
    )


def prefilter(values: np.ndarray) -> np.ndarray:
    """B-spline coefficients that interpolate ``(..., Z, G, G)`` samples at the knots.

    Laterally the samples are zero-padded (the PSF vanishes outside its window); in z the edge
    slices are repeated, so the spline stays flat beyond the measured range.
    """
    pad = 4
    v = np.pad(values, [(0, 0)] * (values.ndim - 3) + [(pad, pad), (pad, pad), (pad, pad)])
    v[..., :pad, :, :] = v[..., pad : pad + 1, :, :]
    v[..., -pad:, :, :] = v[..., -pad - 1 : -pad, :, :]
    axes = range(values.ndim - 3, values.ndim)
    c = v.astype(np.float64)
    for ax in axes:
        c = ndimage.spline_filter1d(c, order=3, axis=ax, mode="mirror")
    return c[..., pad:-pad, pad:-pad, pad:-pad].astype(np.float32)


@dataclass
class SplinePSF:
    """Per-plane cubic-spline PSF (see the module docstring).

    Attributes:
        coeffs: ``(P, Z, G, G)`` float32 B-spline coefficients (z, row = dy, col = dx).
        values: ``(P, Z, G, G)`` float32 PSF samples at the knots (unit sum at focus).
        z0_nm: sample z of knot 0, nm; ``z_step_nm`` the knot spacing in z.
        px_nm: camera pixel; ``oversample`` lateral knots per pixel; ``roi_px`` the rendered
            window side (odd), px.
        dz_nm: plane spacing of the geometry it was measured for; ``focal_nm`` ``(P,)``
            each plane's focal position (bead z of maximum peak intensity), nm.
        meta: provenance (beads used, background, smoothing, source), JSON-serialisable.
    """

    coeffs: np.ndarray
    values: np.ndarray
    z0_nm: float
    z_step_nm: float
    px_nm: float
    oversample: int
    roi_px: int
    dz_nm: float
    focal_nm: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    _torch: dict[tuple[str, torch.dtype], torch.Tensor] = field(
        default_factory=dict, repr=False, compare=False
    )

    # --- construction and files -------------------------------------------------------
    @classmethod
    def from_values(cls, values: np.ndarray, **kw: Any) -> SplinePSF:
        values = np.asarray(values, dtype=np.float32)
        return cls(coeffs=prefilter(values), values=values, **kw)

    @property
    def planes(self) -> int:
        return int(self.coeffs.shape[0])

    @property
    def knots(self) -> int:
        return int(self.coeffs.shape[-1])

    @property
    def step_nm(self) -> float:
        """Lateral knot spacing, nm."""
        return self.px_nm / self.oversample

    @property
    def z_range_nm(self) -> tuple[float, float]:
        return self.z0_nm, self.z0_nm + (self.coeffs.shape[1] - 1) * self.z_step_nm

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "planes": self.planes,
            "px_nm": self.px_nm,
            "dz_nm": self.dz_nm,
            "oversample": self.oversample,
            "roi_px": self.roi_px,
            "z0_nm": self.z0_nm,
            "z_step_nm": self.z_step_nm,
            "z_range_nm": list(self.z_range_nm),
            "focal_nm": [float(v) for v in self.focal_nm],
            "meta": self.meta,
        }
        with open(path, "wb") as fh:  # np.savez would append .npz to other suffixes
            np.savez_compressed(
                fh, header=np.array(json.dumps(header)), coeffs=self.coeffs, values=self.values
            )
        return path

    @classmethod
    def load(cls, path: str | Path, sha256: str | None = None) -> SplinePSF:
        """Read a spline file; with ``sha256``, refuse a file whose hash differs."""
        path = Path(path)
        if sha256 is not None and (got := file_sha256(path)) != sha256:
            raise FormatError(
                f"spline PSF {path}: expected sha256 {sha256} (recorded in the model), got {got}"
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                coeffs, values = z["coeffs"], z["values"]
        except (OSError, ValueError, KeyError) as exc:
            raise FormatError(f"cannot read spline PSF {path}: {exc}") from exc
        if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
            raise FormatError(
                f"spline PSF {path}: expected format {FORMAT} v{FORMAT_VERSION}, got "
                f"{header.get('format')} v{header.get('format_version')}"
            )
        return cls(
            coeffs=coeffs.astype(np.float32),
            values=values.astype(np.float32),
            z0_nm=float(header["z0_nm"]),
            z_step_nm=float(header["z_step_nm"]),
            px_nm=float(header["px_nm"]),
            oversample=int(header["oversample"]),
            roi_px=int(header["roi_px"]),
            dz_nm=float(header["dz_nm"]),
            focal_nm=np.asarray(header["focal_nm"], dtype=np.float64),
            meta=header.get("meta", {}),
        )

    def check_geometry(self, planes: int, px_nm: float) -> None:
        if planes != self.planes or not math.isclose(px_nm, self.px_nm, rel_tol=1e-6):
            raise FormatError(
                f"spline PSF is for {self.planes} planes of {self.px_nm:g} nm pixels, the "
                f"settings ask for {planes} planes of {px_nm:g} nm"
            )

    # --- evaluation -------------------------------------------------------------------
    def _coeffs(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (str(device), dtype)
        if key not in self._torch:
            self._torch[key] = torch.as_tensor(self.coeffs).to(device=device, dtype=dtype)
        return self._torch[key]

    def peak_reference(self) -> float:
        """Mean over planes of the in-focus value of a pixel centred on the molecule."""
        xy = torch.zeros(self.planes, 1, 2, dtype=torch.float64)
        z = torch.as_tensor(self.focal_nm, dtype=torch.float64)[:, None]
        vals = [
            float(self.evaluate(k, xy[k, :, 0], xy[k, :, 1], z[k])[0]) for k in range(self.planes)
        ]
        return float(np.mean(vals))

    def evaluate(
        self, plane: int, dx_nm: torch.Tensor, dy_nm: torch.Tensor, z_nm: torch.Tensor
    ) -> torch.Tensor:
        """Spline value at arbitrary offsets (same shapes, broadcast), for tests and plots."""
        c = self._coeffs(dx_nm.device, dx_nm.dtype)[plane]
        dx, dy, z = torch.broadcast_tensors(dx_nm, dy_nm, z_nm)
        centre = (self.knots - 1) / 2
        u = dx / self.step_nm + centre
        v = dy / self.step_nm + centre
        w = self._z_coord(z)
        out = torch.zeros_like(u)
        iu, iv, iw = (torch.floor(a).long() for a in (u, v, w))
        wu, wv, ww = (bspline_weights(a - torch.floor(a)) for a in (u, v, w))
        nz, g = c.shape[0], c.shape[-1]
        for r in range(4):
            zi = (iw - 1 + r).clamp(0, nz - 1)
            for q in range(4):
                yi = iv - 1 + q
                for p in range(4):
                    xi = iu - 1 + p
                    inside = (yi >= 0) & (yi < g) & (xi >= 0) & (xi < g)
                    val = c[zi, yi.clamp(0, g - 1), xi.clamp(0, g - 1)] * inside
                    out = out + ww[..., r] * wv[..., q] * wu[..., p] * val
        return out

    def _z_coord(self, z_nm: torch.Tensor) -> torch.Tensor:
        """Fractional z knot index, clamped to the measured range."""
        nz = self.coeffs.shape[1]
        return ((z_nm - self.z0_nm) / self.z_step_nm).clamp(0.0, nz - 1 - 1e-6)

    def windows(
        self,
        plane: int,
        x_nm: torch.Tensor,
        y_nm: torch.Tensor,
        z_nm: torch.Tensor,
        *,
        exact: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rendered windows of ``(N,)`` molecules in one plane.

        Both paths evaluate the same cubic spline (they agree to float rounding).
        ``exact``: in primitives that forward-mode autodiff (``torch.func.jvp``) can
        differentiate, for the CRLB. Otherwise the fused rendering path (:meth:`_windows_fast`,
        several times faster and lighter in memory; reverse-mode autograd only).

        Returns ``(win, row0, col0)``: ``(N, S, S)`` pixel values (S = ``roi_px``) and the
        ``(N,)`` int64 row / column of each window's first pixel.
        """
        if exact:
            return self._windows_exact(plane, x_nm, y_nm, z_nm)
        return self._windows_fast(plane, x_nm, y_nm, z_nm)

    def _lateral(
        self, x_nm: torch.Tensor, y_nm: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``row0, col0`` of the windows, the first lateral knot ``iv, iu`` of their first
        pixel's taps and the ``(N, 4)`` tap weights ``wv, wu`` (the same for every pixel: pixel
        centres are ``oversample`` knots apart)."""
        half, dtype = self.roi_px // 2, x_nm.dtype
        centre = (self.knots - 1) / 2
        col0 = torch.floor(x_nm / self.px_nm).long() - half
        row0 = torch.floor(y_nm / self.px_nm).long() - half
        # knot coordinate of the first pixel's centre; pixel a adds a * oversample. The knot
        # grid holds every tap of every window (SplinePSF.knots >= s * (roi + 1) + 7).
        u0 = ((col0.to(dtype) + 0.5) * self.px_nm - x_nm) / self.step_nm + centre
        v0 = ((row0.to(dtype) + 0.5) * self.px_nm - y_nm) / self.step_nm + centre
        iu, iv = torch.floor(u0).detach().long(), torch.floor(v0).detach().long()
        wu, wv = bspline_weights(u0 - iu.to(dtype)), bspline_weights(v0 - iv.to(dtype))
        return row0, col0, iv - 1, iu - 1, wv, wu

    def _axial(self, z_nm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 4)`` z knot indices of the taps (clamped to the range) and their weights."""
        w0 = self._z_coord(z_nm)
        iw = torch.floor(w0).detach().long()
        taps = torch.arange(4, device=z_nm.device)
        zi = (iw[:, None] - 1 + taps).clamp(0, self.coeffs.shape[1] - 1)
        return zi, bspline_weights(w0 - iw.to(z_nm.dtype))

    def _windows_exact(
        self,
        plane: int,
        x_nm: torch.Tensor,
        y_nm: torch.Tensor,
        z_nm: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`windows` in jvp-differentiable primitives: z-blend of the 4 coefficient
        slices of each molecule, then gathers of its rows and columns."""
        s, side = self.oversample, self.roi_px
        dev, dtype = x_nm.device, x_nm.dtype
        n, g = x_nm.shape[0], self.knots
        row0, col0, iv, iu, wv, wu = self._lateral(x_nm, y_nm)
        zi, ww = self._axial(z_nm)
        c = self._coeffs(dev, dtype)[plane]  # (Z, G, G)
        blend = torch.bmm(ww[:, None, :], c[zi].reshape(n, 4, g * g)).reshape(n, g, g)
        taps = torch.arange(4, device=dev)
        pix = torch.arange(side, device=dev) * s
        rows = (iv[:, None, None] + pix[None, :, None] + taps).reshape(n, side * 4, 1)
        picked = blend.gather(1, rows.expand(n, side * 4, g)).reshape(n, side, 4, g)
        by_row = torch.einsum("nbqg,nq->nbg", picked, wv)  # (N, S, G)
        cols = (iu[:, None, None] + pix[None, :, None] + taps).reshape(n, 1, side * 4)
        picked = by_row.gather(2, cols.expand(n, side, side * 4)).reshape(n, side, side, 4)
        win = torch.einsum("nbap,np->nba", picked, wu)
        return win, row0, col0

    def _windows_fast(
        self,
        plane: int | torch.Tensor,
        x_nm: torch.Tensor,
        y_nm: torch.Tensor,
        z_nm: torch.Tensor,
        *,
        scale: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`windows` for rendering; ``plane`` may be ``(N,)`` (one per molecule) and
        ``scale`` ``(N,)`` multiplies each window (at the cost of 4 weights, not S x S).

        The spline is a tensor product and a molecule's 64 tap weights are the same for all
        pixels of its window. A window row is the weighted sum of 16 knot rows (4 z taps x 4
        y taps) of the ``(P * Z * G, G)`` coefficient table: one fused ``embedding_bag``
        gives every window's ``(S, G)`` rows without materialising its ``(4, G, G)`` slices.
        The 4 x taps are then a 4-tap filter along each row, read at the pixel centres.
        """
        s, side = self.oversample, self.roi_px
        dev, dtype = x_nm.device, x_nm.dtype
        n, g, nz = x_nm.shape[0], self.knots, self.coeffs.shape[1]
        row0, col0, iv, iu, wv, wu = self._lateral(x_nm, y_nm)
        zi, ww = self._axial(z_nm)
        if scale is not None:
            wu = wu * scale[:, None]
        pix = torch.arange(side, device=dev) * s  # first tap of each pixel, from iv / iu
        plane_t = torch.as_tensor(plane, device=dev).reshape(-1, 1)
        z_row = (plane_t * nz + zi) * g + iv[:, None]  # (N, 4) table row of tap (z, y=0)
        y_taps = pix[:, None] + torch.arange(4, device=dev)  # (S, 4)
        knot_rows = z_row[:, None, :, None] + y_taps[None, :, None, :]  # (N, S, 4 z, 4 y)
        weights = (ww[:, :, None] * wv[:, None, :]).reshape(n, 1, 16).expand(n, side, 16)
        rows = torch.nn.functional.embedding_bag(
            knot_rows.reshape(n * side, 16),
            self._coeffs(dev, dtype).reshape(-1, g),
            per_sample_weights=weights.reshape(n * side, 16),
            mode="sum",
        ).reshape(n, side, g)
        filtered = rows[..., : g - 3] * wu[:, 0, None, None]  # (N, S, G - 3), tap 0 at j
        for p in range(1, 4):
            filtered = filtered.addcmul_(rows[..., p : g - 3 + p], wu[:, p, None, None])
        at = (iu[:, None] + pix)[:, None, :].expand(n, side, side)
        return filtered.gather(2, at), row0, col0


def scatter_windows(
    windows: torch.Tensor,
    row0: torch.Tensor,
    col0: torch.Tensor,
    frame_index: torch.Tensor,
    *,
    frames: int,
    height: int,
    width: int,
) -> torch.Tensor:
    """Sum ``(N, S, S)`` windows into ``(frames, height, width)`` images (clipped at edges).

    The windows go into a canvas padded by the farthest window reach, so no pixel needs a
    mask; a window beyond the pad is clamped to it (the pad is cropped away).
    """
    side = windows.shape[-1]
    dev = windows.device
    pad = side
    if row0.numel():
        lo = int(torch.minimum(row0.min(), col0.min()))
        hi = int(torch.maximum(row0.max() - height, col0.max() - width)) + side
        pad = max(pad, -lo, hi, 0)
    hp, wp = height + 2 * pad, width + 2 * pad
    first = (frame_index * hp + row0 + pad) * wp + col0 + pad  # (N,) flat index of (0, 0)
    offs = torch.arange(side, device=dev)
    flat = first[:, None, None] + (offs[:, None] * wp + offs)  # (N, S, S)
    out = torch.zeros(frames * hp * wp, device=dev, dtype=windows.dtype)
    out = out.index_add(0, flat.reshape(-1), windows.reshape(-1))
    return out.reshape(frames, hp, wp)[:, pad : pad + height, pad : pad + width]


def render_spline(
    spline: SplinePSF,
    xyz_nm: torch.Tensor,
    amplitude: torch.Tensor,
    drift_nm: torch.Tensor,
    *,
    height: int,
    width: int,
    exact: bool = False,
) -> torch.Tensor:
    """``(B, P, H, W)`` intensity of ``(B, M, 3)`` molecules with ``(B, M)`` amplitudes
    (``exact``: the jvp-differentiable evaluation, see :meth:`SplinePSF.windows`).

    ``amplitude`` multiplies the unit-sum spline (0 marks padding, skipped); ``drift_nm``
    ``(B, P, 2)`` shifts a molecule to ``xy + drift[k]`` in plane ``k`` (paper Eq. 7). All
    planes' windows are evaluated and summed into the frames in one call each.
    """
    batch, planes = xyz_nm.shape[0], spline.planes
    keep = amplitude != 0
    b_idx = torch.arange(batch, device=xyz_nm.device)[:, None].expand_as(keep)[keep]
    xyz, amp = xyz_nm[keep], amplitude[keep]
    n = xyz.shape[0]
    # one window per (plane, molecule), plane-major: plane k is rows k * n .. (k + 1) * n
    plane = torch.arange(planes, device=xyz.device).repeat_interleave(n)
    x, y = (xyz[None, :, :2] + drift_nm[b_idx].transpose(0, 1)).reshape(-1, 2).unbind(1)
    z, amp = xyz[:, 2].repeat(planes), amp.repeat(planes)
    if exact:
        cut = [slice(k * n, (k + 1) * n) for k in range(planes)]
        parts = [spline.windows(k, x[c], y[c], z[c], exact=True) for k, c in enumerate(cut)]
        win, r0, c0 = (torch.cat(t) for t in zip(*parts, strict=True))
        win = win * amp[:, None, None]
    else:
        win, r0, c0 = spline._windows_fast(plane, x, y, z, scale=amp)
    frame = b_idx.repeat(planes) * planes + plane
    out = scatter_windows(win, r0, c0, frame, frames=batch * planes, height=height, width=width)
    return out.reshape(batch, planes, height, width)
