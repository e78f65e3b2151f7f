"""A measured PSF: per plane a 3D cubic B-spline of the pixel value around a molecule.

For plane ``k`` the spline ``f_k(dx, dy, z)`` is the expected value of the pixel whose centre
lies ``(dx, dy)`` nm from the molecule (pixel centre minus molecule, x along columns), for
a molecule at sample depth ``z`` (CONVENTIONS.md: z = 0 at the lower edge of plane 0's
voxel). Depth enters absolutely, not as a defocus, so depth-dependent aberrations are kept.
``f_k`` is normalised to a unit pixel sum at the plane's focal position (the bead z of
maximum peak intensity).

The lateral knots are ``oversample`` times finer than the camera pixel, so an undersampled
PSF (sigma ~0.7 px) is still interpolated to well under 1% of its peak. Rendering is torch,
vectorised over molecules: the cubic B-spline weights of one molecule are the same for all
pixels of its window, so each window is a z-blend of 4 coefficient slices followed by two
gathers (rows, columns). Positions are exact (no grid snapping) and differentiable.

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

    def _table(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, float]:
        """Spline values tabulated ``TABLE_XY`` times finer than the knots laterally and
        ``TABLE_Z`` times in z, over the reach of a window: ``(P, 1, Zt, Nt, Nt)`` and the
        lateral offset of entry 0, nm (entry ``i`` at ``offset0 + i * step / TABLE_XY``)."""
        key = ("table-" + str(device), dtype)
        if key not in self._torch:
            g, nz = self.knots, self.coeffs.shape[1]
            centre = (g - 1) / 2
            reach = (self.roi_px // 2 + 1) * self.oversample  # knots from the centre
            u = centre + torch.arange(-reach * TABLE_XY, reach * TABLE_XY + 1) / TABLE_XY
            w = torch.arange((nz - 1) * TABLE_Z + 1, dtype=torch.float64) / TABLE_Z
            bu, bz = _basis(u.double(), g), _basis(w, nz)
            c = torch.as_tensor(self.coeffs, dtype=torch.float64)
            t = torch.einsum("fz,pzyx->pfyx", bz, c)
            t = torch.einsum("vy,pfyx->pfvx", bu, t)
            t = torch.einsum("ux,pfvx->pfvu", bu, t)
            self._torch[key] = t[:, None].to(device=device, dtype=dtype).contiguous()
        return self._torch[key], -(self.roi_px // 2 + 1) * self.px_nm

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

        ``exact``: evaluate the cubic spline (use it for derivatives). Otherwise trilinear
        interpolation of the spline tabulated on a grid ``TABLE_XY`` times finer than the
        knots laterally and ``TABLE_Z`` in z (one fused ``grid_sample``, ~10x faster; within
        ~0.3% of the peak; positions are still exact, not snapped to the grid).

        Returns ``(win, row0, col0)``: ``(N, S, S)`` pixel values (S = ``roi_px``) and the
        ``(N,)`` int64 row / column of each window's first pixel.
        """
        if exact:
            return self._windows_exact(plane, x_nm, y_nm, z_nm)
        side, half = self.roi_px, self.roi_px // 2
        dev, dtype = x_nm.device, x_nm.dtype
        table, offset0 = self._table(dev, dtype)
        n_t = table.shape[-1]
        col0 = torch.floor(x_nm / self.px_nm).long() - half
        row0 = torch.floor(y_nm / self.px_nm).long() - half
        pix = (torch.arange(side, device=dev, dtype=dtype) + 0.5) * self.px_nm
        dx = (col0.to(dtype) * self.px_nm - x_nm)[:, None] + pix  # (N, S) pixel - molecule
        dy = (row0.to(dtype) * self.px_nm - y_nm)[:, None] + pix
        span = (n_t - 1) * self.step_nm / TABLE_XY
        gx = 2 * (dx - offset0) / span - 1
        gy = 2 * (dy - offset0) / span - 1
        gz = 2 * self._z_coord(z_nm) / (self.coeffs.shape[1] - 1) - 1
        n = x_nm.shape[0]
        grid = torch.empty(n, side, side, 3, device=dev, dtype=dtype)
        grid[..., 0] = gx[:, None, :]
        grid[..., 1] = gy[:, :, None]
        grid[..., 2] = gz[:, None, None]
        out = torch.nn.functional.grid_sample(
            table[plane : plane + 1], grid[None], mode="bilinear", align_corners=True
        )
        return out[0, 0], row0, col0

    def _windows_exact(
        self,
        plane: int,
        x_nm: torch.Tensor,
        y_nm: torch.Tensor,
        z_nm: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`windows` by evaluating the spline exactly (used for derivatives)."""
        s, side, step = self.oversample, self.roi_px, self.step_nm
        dev, dtype = x_nm.device, x_nm.dtype
        n, g = x_nm.shape[0], self.knots
        half = side // 2
        centre = (g - 1) / 2
        col0 = torch.floor(x_nm / self.px_nm).long() - half
        row0 = torch.floor(y_nm / self.px_nm).long() - half
        # knot coordinate of the first pixel's centre; pixel a adds a * s. The knot grid
        # holds every tap of every window (SplinePSF.knots >= s * (roi + 1) + 7).
        u0 = ((col0.to(dtype) + 0.5) * self.px_nm - x_nm) / step + centre
        v0 = ((row0.to(dtype) + 0.5) * self.px_nm - y_nm) / step + centre
        iu, iv = torch.floor(u0).detach().long(), torch.floor(v0).detach().long()
        wu, wv = bspline_weights(u0 - iu.to(dtype)), bspline_weights(v0 - iv.to(dtype))
        w0 = self._z_coord(z_nm)
        c = self._coeffs(dev, dtype)[plane]  # (Z, G, G)
        iw = torch.floor(w0).detach().long()
        ww = bspline_weights(w0 - iw.to(dtype))
        zi = (iw[:, None] - 1 + torch.arange(4, device=dev)).clamp(0, c.shape[0] - 1)
        blend = torch.bmm(ww[:, None, :], c[zi].reshape(n, -1, g * g)).reshape(n, g, g)
        taps = torch.arange(4, device=dev)
        pix = torch.arange(side, device=dev) * s
        rows = (iv[:, None, None] - 1 + pix[None, :, None] + taps).reshape(n, side * 4, 1)
        picked = blend.gather(1, rows.expand(n, side * 4, g)).reshape(n, side, 4, g)
        by_row = torch.einsum("nbqg,nq->nbg", picked, wv)  # (N, S, G)
        cols = (iu[:, None, None] - 1 + pix[None, :, None] + taps).reshape(n, 1, side * 4)
        picked = by_row.gather(2, cols.expand(n, side, side * 4)).reshape(n, side, side, 4)
        win = torch.einsum("nbap,np->nba", picked, wu)
        return win, row0, col0


FINE_Z = 4
TABLE_XY = 6
TABLE_Z = 2


def _basis(u: torch.Tensor, n: int) -> torch.Tensor:
    """``(len(u), n)`` dense cubic B-spline basis at knot coordinates ``u`` (clamped)."""
    i = torch.floor(u).long()
    w = bspline_weights(u - i)
    out = torch.zeros(len(u), n, dtype=u.dtype)
    for r in range(4):
        out.index_put_(
            (torch.arange(len(u)), (i - 1 + r).clamp(0, n - 1)), w[:, r], accumulate=True
        )
    return out


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
    r = row0 + pad
    c = col0 + pad
    offs = torch.arange(side, device=dev)
    flat = (frame_index[:, None, None] * hp + (r[:, None] + offs)[:, :, None]) * wp
    flat = flat + (c[:, None] + offs)[:, None, :]
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
    (``exact``: evaluate the spline, else its fine table, see :meth:`SplinePSF.windows`).

    ``amplitude`` multiplies the unit-sum spline (0 marks padding, skipped); ``drift_nm``
    ``(B, P, 2)`` shifts a molecule to ``xy + drift[k]`` in plane ``k`` (paper Eq. 7).
    """
    batch, planes = xyz_nm.shape[0], spline.planes
    keep = amplitude != 0
    b_idx = torch.arange(batch, device=xyz_nm.device)[:, None].expand_as(keep)[keep]
    xyz, amp = xyz_nm[keep], amplitude[keep]
    out = []
    for k in range(planes):
        d = drift_nm[b_idx, k]
        win, r0, c0 = spline.windows(
            k, xyz[:, 0] + d[:, 0], xyz[:, 1] + d[:, 1], xyz[:, 2], exact=exact
        )
        out.append(
            scatter_windows(
                win * amp[:, None, None], r0, c0, b_idx, frames=batch, height=height, width=width
            )
        )
    return torch.stack(out, dim=1)
