"""Photons, background and Cramer-Rao bound of every localization, on the engine's device.

For each localization the frames the network saw (registered, model units) are cut into
one ``S x S`` window per plane around the molecule's pixel and converted to photons with
the model's camera (:meth:`engines.cameras.Camera.zero_level`, ``intensity_scale``). The
model's own PSF (:func:`engines.psf_model.psf_model_for`: the paper's Gaussian or a
measured spline) renders a unit-weight molecule at the localized position into the same
windows, ``u``, and a linear least-squares fit

    pixels_k = A * u_k + b_k        (one amplitude A shared by the planes, b_k per plane)

gives A and the backgrounds in closed form, batched over localizations (no Python per
localization). ``photons = A * flux`` with ``flux`` the unit molecule's intensity summed over
all pixels and planes (not only the window), so the photons are the molecule's own, the
quantity the simulator renders; ``background`` is the mean of ``b_k`` over the planes,
photons per pixel and plane. Pixels outside the frame are left out of the fit.

In paper-noise mode (arbitrary intensity units, ``intensity_scale`` 1, zero level 0) the
"photons" are the PSF's intensity units: a weight-1 molecule of the default settings has
``planes * a' / px^2`` (5425) of them, and the background is ``b + poisson_rate``.

The same windows give the Cramer-Rao bound at the estimate (x, y, z, A, b): derivatives of
``u`` by forward-mode autodiff, the camera's per-pixel Fisher information at
``A u + b_k`` (:meth:`engines.cameras.Camera.pixel_information`), and with the residual
the Gauss-Newton step of the same fit, ``I^-1 J^T W (pixels - A u - b)``: how far, and
which way, the windows pull the position away from the estimate (a telltale of a gross
z error, docs/photometry.md). :mod:`engines.precision` turns both into a calibrated
precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engines.config import SimSettings
from engines.plane_shift import fit_shifts, joint_bound, schur_terms, shift_limits
from engines.window_psf import WindowPSF

if TYPE_CHECKING:  # engines.inference imports this module
    from engines.inference.registration import PlaneRegistration

DEFAULT_WINDOW_PX = 9  # 4.6 in-focus sigmas of the default PSF either side of the centre
# fits after the first with the neighbours' fitted light taken out of each window: a
# bright molecule at a window's edge otherwise lifts its background and sinks its photons.
# Each pass moves the amplitudes half way to the new fit (damped Jacobi iteration of the
# joint fit): undamped, two localizations of one molecule would take each other's light
# out in turn and oscillate between all of it and none; damped, they converge to half
# each, and distant neighbours' error shrinks 2x per pass.
NEIGHBOUR_PASSES = 4
# Gauss-Newton iterations of the opt-in refinement (PhotometryFit.refine): one gives most of
# the gain, a third made the 50-per-frame set slightly worse (docs/photometry.md)
REFINE_ITERATIONS = 2
# a refined position is kept only where the one-molecule window model then fits, chi^2 per
# pixel (noise variance units, ~1 for a lone molecule) at most this: light the model does
# not hold (a neighbour, also one beyond the frame's edge) pulls the fit off the molecule
# by up to ~150 nm where the network's estimate is within ~10 nm (docs/interop.md)
REFINE_MAX_CHI2 = 3.0


@dataclass(frozen=True)
class Photometry:
    """Per-localization photometry of one model's settings (see the module docstring).

    Attributes:
        photons: ``(N,)`` float32 photons summed over the planes.
        background: ``(N,)`` float32 background per pixel and plane, photons.
        crlb_nm: ``(N, 3)`` float32 Cramer-Rao bound of x, y, z, nm (NaN where not asked
            for or where the fit found no molecule, A <= 0).
        chi2: ``(N,)`` float32 mean squared residual of the fit per pixel, in units of the
            camera's noise variance (about 1 for a lone molecule the PSF model fits; NaN
            where the bound was not asked for).
        step_nm: ``(N, 3)`` float32 Gauss-Newton step of x, y, z of the window fit at the
            estimate, nm (NaN where the bound is).
        shift_info, shift_grad: each localization's share of the normal equations of the
            planes' lateral shifts against plane 0, ``(N, Q, Q)`` and ``(N, Q)`` float64
            (Q = 2 (P - 1); its own parameters eliminated, :mod:`engines.plane_shift`), or
            None where not asked for.
        shift_sens: ``(N, 3, Q)`` float64 response of x, y, z to the shifts, nm per nm
            (None where not asked for).
    """

    photons: torch.Tensor
    background: torch.Tensor
    crlb_nm: torch.Tensor
    chi2: torch.Tensor
    step_nm: torch.Tensor
    shift_info: torch.Tensor | None = None
    shift_grad: torch.Tensor | None = None
    shift_sens: torch.Tensor | None = None


class PhotometryFit:
    """Fits every localization's amplitude and background with the settings' PSF."""

    def __init__(self, settings: SimSettings, *, window_px: int = DEFAULT_WINDOW_PX) -> None:
        if window_px < 3 or window_px % 2 == 0:
            raise ValueError(f"the photometry window must be odd and >= 3 px, got {window_px}")
        self.settings = settings
        self.camera = settings.noise.to_camera()
        self.zero = float(self.camera.zero_level())
        self.scale = float(self.camera.intensity_scale())
        self.psf = WindowPSF(settings, window_px)
        self.side = self.psf.side
        self._j_const = (
            float(self.camera.pixel_information(torch.zeros(1))[0])
            if self.camera.additive_noise
            else None
        )
        self._bg_in_info = float(getattr(self.camera, "background_photons", 0.0))
        self._grid_key: tuple[object, ...] | None = None
        self._grid_cache = torch.zeros(0, 2)
        self._grid_ref: PlaneRegistration | None = None
        # each frame's plane shifts (frames, P, 2) nm of the last refine, None without
        self.plane_shift_nm: torch.Tensor | None = None

    # --- entry points ------------------------------------------------------------------
    def measure(
        self,
        frames: torch.Tensor,
        frame_idx: torch.Tensor,
        xyz_nm: torch.Tensor,
        *,
        crlb: bool = True,
        shift_nm: torch.Tensor | None = None,
        system: bool = False,
    ) -> Photometry:
        """Photometry of ``(N, 3)`` localizations (nm) in ``(B, P, H, W)`` registered
        frames (model units) on any device; ``frame_idx`` ``(N,)`` indexes ``frames``;
        ``crlb``: also the bound (else NaN); ``shift_nm`` ``(N, P, 2)``: each plane's
        lateral shift against plane 0 at each localization (None: 0); ``system``: also
        the shifts' normal equations (needs ``crlb``)."""
        with _one_thread(frames.device):
            h, w = frames.shape[-2:]
            origin, rows, cols, inside = self._window(xyz_nm, h, w)
            pix = frames.reshape(-1)[_flat_index(frames.shape, frame_idx, rows, cols)].float()
            layout = _Layout(tuple(frames.shape), frame_idx, rows, cols)
            return self._fit(pix, inside, xyz_nm, origin, crlb, layout, _Shift(shift_nm, system))

    def measure_raw(
        self,
        raw: torch.Tensor,
        registration: PlaneRegistration,
        frame_idx: torch.Tensor,
        xyz_nm: torch.Tensor,
        *,
        crlb: bool = True,
        shift_nm: torch.Tensor | None = None,
        system: bool = False,
    ) -> Photometry:
        """:meth:`measure` on raw camera frames ``(B, P, H, W)`` (uint16 as int16 bit
        patterns, or float32): only the windows are registered (bilinear, border clamp:
        what the input stage does to the whole frame,
        :func:`engines.inference.registration.register`)."""
        with _one_thread(raw.device):
            shift = _Shift(shift_nm, system)
            return self._measure_raw(raw, registration, frame_idx, xyz_nm, crlb, shift)

    def _measure_raw(
        self,
        raw: torch.Tensor,
        registration: PlaneRegistration,
        frame_idx: torch.Tensor,
        xyz_nm: torch.Tensor,
        crlb: bool,
        shift: _Shift | None = None,
    ) -> Photometry:
        from engines.inference.registration import as_float  # that package imports us

        b, p, h, w = raw.shape
        origin, rows, cols, inside = self._window(xyz_nm, h, w)
        dev = raw.device
        if registration.is_identity:
            pix = as_float(raw.reshape(-1)[_flat_index(raw.shape, frame_idx, rows, cols)])
        else:
            grid = self._grid(registration, h, w, dev)  # (P * H * W, 2)
            at = _flat_index((1, p, h, w), torch.zeros_like(frame_idx), rows, cols)
            pix = _bilinear(raw, frame_idx, grid[at])
        base, gain = (torch.from_numpy(a).to(dev) for a in registration.scale_shift())
        pix = (pix.float() - base) / gain
        layout = _Layout((b, p, h, w), frame_idx, rows, cols)
        return self._fit(pix, inside, xyz_nm, origin, crlb, layout, shift or _Shift())

    def _grid(
        self, registration: PlaneRegistration, h: int, w: int, dev: torch.device
    ) -> torch.Tensor:
        """The registration's sampling grid on ``dev``, ``(P * H * W, 2)``, kept while the
        registration and frame shape stay the same (one copy per change on a GPU)."""
        key = (id(registration), h, w, str(dev))
        if self._grid_key != key:
            grid = torch.from_numpy(registration.grid(h, w)).to(dev)
            self._grid_cache, self._grid_key = grid.reshape(-1, 2), key
            self._grid_ref = registration  # keeps the id valid
        return self._grid_cache

    def refine(
        self,
        measure: Callable[..., Photometry],
        xyz_nm: torch.Tensor,
        *,
        extent_nm: tuple[float, float] = (math.inf, math.inf),
        iterations: int = REFINE_ITERATIONS,
        frame_idx: torch.Tensor | None = None,
        frames: int = 0,
    ) -> tuple[torch.Tensor, Photometry]:
        """Opt-in refinement of ``(N, 3)`` positions by the fit's Gauss-Newton steps.

        ``measure`` is :meth:`measure` (or :meth:`measure_raw`) of the frames, with the
        bound, at given positions. Each iteration moves every localization by its step
        where that lowers the window fit's chi^2 (and keeps A > 0), else leaves it; the
        position stays within one pixel laterally and one plane spacing in z of the start,
        inside the frame (``extent_nm``: its width and height) and the depth. Returns the
        positions and their photometry. Where the window model does not fit at the
        refined position (chi^2 > ``REFINE_MAX_CHI2``) the start position and its
        photometry are kept.

        Given ``frame_idx`` (each localization's frame of ``frames``) and settings with a
        per-plane drift (``drift_max_nm`` > 0), each iteration first fits every frame's
        plane shifts against plane 0 (:mod:`engines.plane_shift`; ``measure`` then takes
        ``shift_nm`` and ``system`` keywords) and the positions are fitted with them;
        the last estimate is :attr:`plane_shift_nm`, and the returned bound is the joint
        problem's (:func:`engines.plane_shift.joint_bound`: the shifts' uncertainty too).
        Without it the window model cannot see the drift, puts molecules at the planes'
        mean and worsens the network's lateral error on drifted frames
        (docs/photometry.md)."""
        g = self.settings.geometry
        focal = self.settings.focal_planes_nm()
        dz = float(abs(focal[1] - focal[0])) if len(focal) > 1 else g.depth_nm
        lim = torch.tensor([g.px_nm, g.px_nm, dz], device=xyz_nm.device, dtype=xyz_nm.dtype)
        lo = torch.zeros(3, device=xyz_nm.device, dtype=xyz_nm.dtype)
        edge = [e - 0.01 for e in extent_nm]  # inside: readers drop x == width
        hi = torch.tensor([*edge, g.depth_nm], device=lo.device, dtype=lo.dtype)
        start = measure(xyz_nm)
        if xyz_nm.shape[0] == 0:  # nothing to refine (and no shifts to fit)
            self.plane_shift_nm = None
            return xyz_nm, start
        pos, ph = xyz_nm, start
        limits = shift_limits(self.settings)
        shift = None
        if frame_idx is not None and limits is not None:
            shift = torch.zeros(frames, g.planes, 2, device=xyz_nm.device)
        for _ in range(iterations):
            if shift is not None and frame_idx is not None and limits is not None:
                prior, bound = limits
                shift = fit_shifts(measure, pos, shift, frame_idx, prior_nm=prior, limit_nm=bound)
                ph = measure(pos, shift_nm=shift[frame_idx])
            moved = pos + ph.step_nm.to(pos.dtype).nan_to_num(0.0) - xyz_nm
            cand = (xyz_nm + moved.clamp(-lim, lim)).clamp(lo, hi)
            if shift is not None and frame_idx is not None:
                new = measure(cand, shift_nm=shift[frame_idx])
            else:
                new = measure(cand)
            # False where either is NaN; a move that loses the molecule (A <= 0) is refused
            better = (new.chi2 < ph.chi2) & torch.isfinite(new.crlb_nm).all(dim=1)
            pos, ph = torch.where(better[:, None], cand, pos), _where(better, new, ph)
        if shift is not None and frame_idx is not None and limits is not None:
            ph = joint_bound(measure, pos, shift, frame_idx, prior_nm=limits[0])
        fits = ph.chi2 <= REFINE_MAX_CHI2  # False where NaN
        self.plane_shift_nm = shift
        return torch.where(fits[:, None], pos, xyz_nm), _where(fits, ph, start)

    # --- the fit ------------------------------------------------------------------------
    def _window(
        self, xyz_nm: torch.Tensor, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Window origin ``(N, 3)`` nm, pixel rows / columns ``(N, S)``, ``(N, 1, S, S)``
        mask of the pixels inside the frame."""
        px = self.settings.geometry.px_nm
        half = self.side // 2
        offs = torch.arange(self.side, device=xyz_nm.device)
        col0 = torch.floor(xyz_nm[:, 0] / px).long() - half
        row0 = torch.floor(xyz_nm[:, 1] / px).long() - half
        rows, cols = row0[:, None] + offs, col0[:, None] + offs
        inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[
            :, None, :
        ]
        origin = torch.stack([col0 * px, row0 * px, torch.zeros_like(row0)], dim=1)
        return origin.to(xyz_nm.dtype), rows, cols, inside[:, None]

    def _fit(
        self,
        pix: torch.Tensor,
        inside: torch.Tensor,
        xyz_nm: torch.Tensor,
        origin: torch.Tensor,
        crlb: bool,
        layout: _Layout,
        shift: _Shift,
    ) -> Photometry:
        n = xyz_nm.shape[0]
        dev = pix.device
        if n == 0:
            empty, empty3 = torch.zeros(0, device=dev), torch.zeros(0, 3, device=dev)
            return Photometry(empty, empty, empty3, empty, empty3)
        y = (pix - self.zero) / self.scale  # photons (PSF units)
        m = inside.to(y.dtype)
        xyz = xyz_nm.float()
        if crlb:
            u, du, flux = self.psf.unit_with_derivatives(xyz, origin.float(), shift.nm)
        else:
            u, flux = self.psf.unit(xyz, origin.float(), shift.nm)
        amp, bg = _solve(y, m, u)
        if NEIGHBOUR_PASSES:
            for _ in range(NEIGHBOUR_PASSES):  # the light of the others in each window
                others = _neighbours(amp.clamp_min(0.0)[:, None, None, None] * u, layout)
                amp = 0.5 * (amp + _solve(y - others, m, u)[0])  # damped (NEIGHBOUR_PASSES)
            y = y - _neighbours(amp.clamp_min(0.0)[:, None, None, None] * u, layout)
            bg = _background(y, m, u, amp)
        cnt = m.sum(dim=(-2, -1)).clamp_min(1.0)  # (N, 1)
        photons = amp * flux
        background = bg.mean(dim=1)
        if not crlb:
            nan = torch.full((n, 3), math.nan, device=dev)
            return Photometry(photons, background, nan, nan[:, 0], nan)
        mu = amp[:, None, None, None] * u + bg[:, :, None, None]  # photons, background in
        j = self._information(mu)
        resid = y - mu
        chi2 = (m * j * resid**2).sum(dim=(1, 2, 3)) / (cnt.sum(dim=1) * u.shape[1])
        bound, step, *system = self._bound_and_step(amp, j, u, du, m, resid, shift.system)
        return Photometry(photons, background, bound, chi2, step, *system)

    def _information(self, mu: torch.Tensor) -> torch.Tensor:
        """Per-pixel Fisher information (about 1 / noise variance) at mean ``mu``, photons."""
        if self._j_const is not None:
            return torch.full_like(mu, self._j_const)
        # the camera adds its background_photons to mu itself
        return self.camera.pixel_information(mu.clamp_min(0.0) - self._bg_in_info)

    def _bound_and_step(
        self,
        amp: torch.Tensor,
        j: torch.Tensor,
        u: torch.Tensor,
        du: torch.Tensor,
        m: torch.Tensor,
        resid: torch.Tensor,
        system: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """``(N, 3)`` CRLB of x, y, z at the estimate and ``(N, 3)`` Gauss-Newton step of
        x, y, z from the ``(N, P, S, S)`` residual; parameters (x, y, z, A, b). With
        ``system`` also each localization's share of the planes' shift equations
        (:func:`engines.plane_shift.schur_terms`)."""
        n = u.shape[0]
        w = (j * m).expand_as(u).reshape(n, 1, -1)
        d = torch.cat(
            [amp[None, :, None, None, None] * du, u[None], torch.ones_like(u)[None]]
        )  # (5, N, P, S, S): d mu / d (x, y, z, A, b)
        d = d.reshape(5, n, -1).transpose(0, 1)  # (N, 5, pixels)
        # unit-information columns: float32 is then accurate (entries are correlations)
        scale = ((d * d * w).sum(dim=2)).clamp_min(1e-30).sqrt()  # (N, 5)
        d = d / scale[:, :, None]
        info = torch.bmm(d * w, d.transpose(1, 2)).double()
        eye = torch.eye(5, dtype=info.dtype, device=info.device)
        ok = amp > 0
        info = torch.where(ok[:, None, None], info, eye)
        cov = torch.linalg.inv(info)
        var = torch.diagonal(cov, dim1=-2, dim2=-1)[:, :3].float()
        bound = var.clamp_min(0.0).sqrt() / scale[:, :3]
        grad = (d * w * resid.reshape(n, 1, -1)).sum(dim=2).double()  # (N, 5): J^T W r
        step = (cov @ grad[:, :, None])[:, :3, 0].float() / scale[:, :3]
        nan = torch.full_like(bound, math.nan)
        out = (torch.where(ok[:, None], bound, nan), torch.where(ok[:, None], step, nan))
        if not system:
            return out
        wr = (w * resid.reshape(n, 1, -1)).double()
        return out + schur_terms(amp * ok, du, d.double() * w, cov, grad, wr, w, scale)


@contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """One intra-op thread on the CPU: window-sized operations are too small to share,
    and on a busy CPU the hand-off between threads made them ~5x slower (measured,
    docs/photometry.md). The setting is process-wide; the engine's lock serialises the
    engine's own calls, and the previous count comes back on exit."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class _Shift:
    """The planes' lateral shifts at each localization, ``(N, P, 2)`` nm (None: 0), and
    whether their normal equations are wanted."""

    nm: torch.Tensor | None = None
    system: bool = False


@dataclass(frozen=True)
class _Layout:
    """Where the windows lie: frames ``(B, P, H, W)``, each window's frame ``(N,)`` and
    its rows / columns ``(N, S)`` (may reach outside the frame)."""

    shape: tuple[int, ...]
    frame_idx: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor


def _where(cond: torch.Tensor, a: Photometry, b: Photometry) -> Photometry:
    """Per localization, ``a``'s photometry where ``cond`` ``(N,)`` holds, else ``b``'s."""
    return Photometry(
        *(
            torch.where(cond.reshape(-1, *[1] * (x.dim() - 1)), x, y)
            for x, y in zip(
                (a.photons, a.background, a.crlb_nm, a.chi2, a.step_nm),
                (b.photons, b.background, b.crlb_nm, b.chi2, b.step_nm),
                strict=True,
            )
        )
    )  # the shifts' equations are for one set of positions: not merged


def _solve(y: torch.Tensor, m: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares of ``y = A u + b_k`` over the pixels ``m`` of ``(N, P, S, S)``
    windows: ``A (N,)``, ``b (N, P)``."""
    cnt = m.sum(dim=(-2, -1)).clamp_min(1.0)  # (N, 1)
    su = (m * u).sum(dim=(-2, -1))  # (N, P)
    sy = (m * y).sum(dim=(-2, -1))
    suu = (m * u * u).sum(dim=(-2, -1))
    suy = (m * u * y).sum(dim=(-2, -1))
    den = (suu - su * su / cnt).sum(dim=1)
    amp = (suy - su * sy / cnt).sum(dim=1) / den.clamp_min(1e-12)
    return amp, (sy - amp[:, None] * su) / cnt  # = _background(y, m, u, amp)


def _background(
    y: torch.Tensor, m: torch.Tensor, u: torch.Tensor, amp: torch.Tensor
) -> torch.Tensor:
    """``(N, P)`` background per plane of :func:`_solve` at a given amplitude."""
    cnt = m.sum(dim=(-2, -1)).clamp_min(1.0)
    return ((m * y).sum(dim=(-2, -1)) - amp[:, None] * (m * u).sum(dim=(-2, -1))) / cnt


def _neighbours(model: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """``(N, P, S, S)``: in each window, the fitted light of the other localizations of
    its frame (their windows summed on a canvas padded by a window, then cut out again
    less the window's own)."""
    b, p, h, w = layout.shape
    side = model.shape[-1]
    hp, wp = h + 2 * side, w + 2 * side
    k = torch.arange(p, device=model.device)[None, :, None, None]
    r = (layout.rows + side)[:, None, :, None]
    c = (layout.cols + side)[:, None, None, :]
    at = ((layout.frame_idx[:, None, None, None] * p + k) * hp + r) * wp + c
    canvas = torch.zeros(b * p * hp * wp, device=model.device, dtype=model.dtype)
    canvas.index_add_(0, at.reshape(-1), model.reshape(-1))
    return canvas[at] - model


def _flat_index(
    shape: tuple[int, ...] | torch.Size,
    frame_idx: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> torch.Tensor:
    """``(N, P, S, S)`` flat indices into a ``(B, P, H, W)`` tensor of the windows' pixels
    (rows and columns clamped to the frame; one gather is far faster than four index
    tensors)."""
    _, p, h, w = shape
    k = torch.arange(p, device=rows.device)[None, :, None, None]
    r = rows.clamp(0, h - 1)[:, None, :, None]
    c = cols.clamp(0, w - 1)[:, None, None, :]
    return ((frame_idx[:, None, None, None] * p + k) * h + r) * w + c


def _bilinear(raw: torch.Tensor, frame_idx: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``raw[frame_idx[n], k]`` at normalised ``grid`` ``(N, P, S, S, 2)``
    (``grid_sample`` with ``align_corners=False``, ``padding_mode="border"``), float32."""
    from engines.inference.registration import as_float  # that package imports us

    _, p, h, w = raw.shape
    ix = (((grid[..., 0] + 1) * w - 1) / 2).clamp(0, w - 1)
    iy = (((grid[..., 1] + 1) * h - 1) / 2).clamp(0, h - 1)
    x0, y0 = ix.floor(), iy.floor()
    fx, fy = ix - x0, iy - y0
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    base = (
        frame_idx[:, None, None, None] * p + torch.arange(p, device=raw.device)[:, None, None]
    ) * h
    flat = raw.reshape(-1)

    def at(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return as_float(flat[(base + y) * w + x])

    top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
    return top * (1 - fy) + bottom * fy
