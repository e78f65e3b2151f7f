"""The model's PSF rendered into the photometry's fit windows, with its derivatives.

:class:`engines.photometry.PhotometryFit` fits ``A * u + b_k`` in an ``S x S`` window per
plane around each localization; ``u`` is a unit-weight molecule of the model's own PSF
(:func:`engines.psf_model.psf_model_for`: the paper's Gaussian or a measured spline) at
the localized position, in plane k moved by an optional per-plane lateral ``shift`` (a
molecule appears in plane k at ``xy + shift[k]``, as the simulator's drift, Eq. 7).
This module renders ``u``, batched over localizations, and its derivatives by x, y, z
for the Cramer-Rao bound and the Gauss-Newton step: analytic for the Gaussian, central
differences of :data:`DIFF_STEP_NM` for the spline. ``flux`` is the
unit molecule's intensity summed over all pixels and planes (not only the window).
"""

from __future__ import annotations

import math

import torch

from engines.config import SimSettings
from engines.psf import render_planes
from engines.psf_model import SplineModel, psf_model_for

# central-difference steps of the spline's derivatives for the CRLB, nm: the error,
# (h / sigma)^2 / 6 of the slope, stays under 0.1 % for the in-focus PSF (sigma ~130 nm)
DIFF_STEP_NM = (10.0, 10.0, 20.0)


class WindowPSF:
    """Unit molecules of ``settings``' PSF in fit windows of ``window_px`` (odd) pixels, or
    the spline's own window where that is smaller (:attr:`side`)."""

    def __init__(self, settings: SimSettings, window_px: int) -> None:
        self.settings = settings
        psf = psf_model_for(settings)
        self.spline = psf if isinstance(psf, SplineModel) else None
        self.side = window_px if self.spline is None else min(window_px, self.spline.window_px())
        g = settings.geometry
        self.focal = torch.tensor(settings.focal_planes_nm(), dtype=torch.float32)
        # point samples of a Gaussian of sigma >= 0.5 px sum to its integral within 1e-4
        self.gauss_flux = g.planes * settings.psf.a_prime / g.px_nm**2

    def render(
        self, xyz: torch.Tensor, origin: torch.Tensor, shift: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(N, P, S', S')`` unit-weight molecules (S' = S, or the spline's own window),
        moved in plane k by ``shift`` ``(N, P, 2)`` nm (None: not moved)."""
        n = xyz.shape[0]
        g = self.settings.geometry
        if self.spline is not None:
            return self._render_spline(xyz, origin, shift)
        drift = torch.zeros(n, g.planes, 2, device=xyz.device, dtype=xyz.dtype)
        if shift is not None:
            drift = shift.to(xyz.dtype)
        rel = (xyz - origin)[:, None, :]
        ones = torch.ones(n, 1, device=xyz.device, dtype=xyz.dtype)
        out = render_planes(
            rel,
            ones,
            drift,
            self.focal.to(xyz.device),
            px_nm=g.px_nm,
            height=self.side,
            width=self.side,
            psf=self.settings.psf,
        )
        return out.reshape(n, g.planes, self.side, self.side)

    def _render_spline(
        self, xyz: torch.Tensor, origin: torch.Tensor, shift: torch.Tensor | None
    ) -> torch.Tensor:
        """The spline's own ``R x R`` windows, all placed so that the fit window (origin
        ``origin``) is their centre: a position moved across a pixel border (the
        derivatives' shifted copies) would otherwise get a window one pixel over."""
        assert self.spline is not None
        sp = self.spline.spline
        px = self.settings.geometry.px_nm
        side = sp.roi_px
        lo = side // 2 - self.side // 2
        want_r = torch.round(origin[:, 1] / px).long() - lo
        want_c = torch.round(origin[:, 0] / px).long() - lo
        offs = torch.arange(side, device=xyz.device)
        n = xyz.shape[0]
        planes = []
        for k in range(sp.planes):
            x, y = xyz[:, 0], xyz[:, 1]
            if shift is not None:
                x, y = x + shift[:, k, 0], y + shift[:, k, 1]
            win, r0, c0 = sp.windows(k, x, y, xyz[:, 2], exact=False)
            ri = ((want_r - r0)[:, None] + offs).clamp(0, side - 1)  # edge rows: cropped
            ci = ((want_c - c0)[:, None] + offs).clamp(0, side - 1)
            win = win.gather(1, ri[:, :, None].expand(n, side, side))
            planes.append(win.gather(2, ci[:, None, :].expand(n, side, side)))
        return torch.stack(planes, dim=1) * self.spline.amplitude

    def _crop(self, full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fit window and flux from a rendering."""
        if self.spline is None:
            return full, torch.full(full.shape[:1], self.gauss_flux, device=full.device)
        lo = full.shape[-1] // 2 - self.side // 2
        win = full[..., lo : lo + self.side, lo : lo + self.side]
        return win, full.sum(dim=(1, 2, 3))

    def unit(
        self, xyz: torch.Tensor, origin: torch.Tensor, shift: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, P, S, S)`` unit windows of ``(N, 3)`` positions, their ``(N,)`` flux."""
        return self._crop(self.render(xyz, origin, shift))

    def unit_with_derivatives(
        self, xyz: torch.Tensor, origin: torch.Tensor, shift: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unit windows, their ``(3, N, P, S, S)`` derivatives by x, y, z (per nm), flux.

        The Gaussian's derivatives are analytic; the spline's are central differences of
        :data:`DIFF_STEP_NM` (one rendering call for all of them)."""
        if self.spline is None:
            u, du = self._gauss_with_derivatives(xyz, origin, shift)
            return u, du, torch.full(xyz.shape[:1], self.gauss_flux, device=xyz.device)
        n = xyz.shape[0]
        step = torch.tensor(DIFF_STEP_NM, device=xyz.device, dtype=xyz.dtype)
        offsets = torch.cat(
            [torch.zeros(1, 3, device=xyz.device), torch.diag(step), -torch.diag(step)]
        )
        pos = (xyz[None] + offsets[:, None, :].to(xyz.dtype)).reshape(-1, 3)  # (7N, 3)
        shifts = None if shift is None else shift.repeat(7, 1, 1)
        full = self.render(pos, origin.repeat(7, 1), shifts).reshape(7, n, *self.shape(xyz))
        u, flux = self._crop(full[0])
        win = self._crop(full.flatten(0, 1))[0].reshape(7, n, *u.shape[1:])
        du = (win[1:4] - win[4:7]) / (2 * step[:, None, None, None, None])
        return u, du, flux

    def _gauss_with_derivatives(
        self, xyz: torch.Tensor, origin: torch.Tensor, shift: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`engines.psf.render_planes` of unit molecules in their windows (moved by
        ``shift`` per plane), and its derivatives by x, y, z, from the separable factors
        (in plane k also the derivatives by that plane's shift)."""
        psf, px = self.settings.psf, self.settings.geometry.px_nm
        rel = xyz - origin
        focal = self.focal.to(xyz.device, xyz.dtype)
        t = (focal[None, :] - rel[:, 2:3]) / psf.d_nm  # (N, P) defocus / D
        q = 1.0 + t**2 + psf.a3 * t**3 + psf.b4 * t**4
        r = psf.r0_nm * torch.sqrt(q)
        dr_dz = -psf.r0_nm / (2.0 * torch.sqrt(q)) * (2 * t + 3 * psf.a3 * t**2 + 4 * psf.b4 * t**3)
        dr_dz = dr_dz / psf.d_nm
        amp = psf.a_prime / (2.0 * math.pi * r**2)
        centres = (torch.arange(self.side, device=xyz.device, dtype=xyz.dtype) + 0.5) * px
        mx, my = rel[:, 0, None], rel[:, 1, None]  # (N, 1), or (N, P) with a shift
        if shift is not None:
            mx, my = mx + shift[..., 0].to(xyz.dtype), my + shift[..., 1].to(xyz.dtype)
        dx = centres[None, None, :] - mx[..., None]  # (N, 1 or P, S) pixel - molecule
        dy = centres[None, None, :] - my[..., None]
        r2 = (r**2)[..., None]  # (N, P, 1)
        gx = torch.exp(-(dx**2) / (2 * r2))  # (N, P, S)
        gy = torch.exp(-(dy**2) / (2 * r2))
        a = amp[..., None, None]
        u = a * gy[..., :, None] * gx[..., None, :]
        du_dx = a * gy[..., :, None] * (gx * dx / r2)[..., None, :]
        du_dy = a * (gy * dy / r2)[..., :, None] * gx[..., None, :]
        r3 = r2 * r[..., None]
        du_dr = -2.0 * u / r[..., None, None] + a * (
            (gy * dy**2 / r3)[..., :, None] * gx[..., None, :]
            + gy[..., :, None] * (gx * dx**2 / r3)[..., None, :]
        )
        return u, torch.stack([du_dx, du_dy, du_dr * dr_dz[..., None, None]])

    def shape(self, xyz: torch.Tensor) -> tuple[int, int, int]:
        """Planes and side of one rendering (the spline renders its own window)."""
        side = self.side if self.spline is None else self.spline.window_px()
        return (self.settings.geometry.planes, side, side)
