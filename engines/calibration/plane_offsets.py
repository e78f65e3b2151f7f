"""Residual lateral offset of each plane to the reference plane, measured in registered frames.

Every camera image is registered into the reference plane before inference, so a molecule
should sit at the same lateral position in all planes. A residual misregistration
``d_k`` of plane ``k`` (the paper's Fig. 7b bias) moves every molecule's image in that
plane by ``d_k``. It is measured directly in the registered frames, at the positions of
the published localizations (any sample: single emitters suffice, no structure needed):

* for each isolated localization, cut a small patch around it in every plane and fit a
  symmetric 2D Gaussian on a flat background (Levenberg-Marquardt, all patches at once).
  The PSF is radially symmetric in every plane, so defocus changes its width, never its
  centre; the fit's covariance gives each centre's variance;
* molecule ``i`` seen in plane ``k`` at ``c_ik = m_i + d_k + noise``. The unknown true
  position ``m_i`` drops out (the localization only seeds the fit; its error does not
  matter), and ``d_1..d_{P-1}`` (``d_0 = 0``) follow from weighted least squares over all
  molecules of a sliding window, with Huber weights against neighbours and bad fits.
  Defocused planes have large variances and weigh little, so each molecule ties together
  the planes near its depth and the chain of planes closes through them.

Offsets are in nm, positive when the molecules appear displaced towards +x/+y in that
plane compared with plane 0 (the simulator's ``drift_nm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

_PARAMS = 5  # x, y, log(sigma), amplitude, background


def isolated(xy_px: np.ndarray, isolation_px: float) -> np.ndarray:
    """``(N,)`` bool: no other position within ``isolation_px``."""
    n = len(xy_px)
    if isolation_px <= 0 or n < 2:
        return np.ones(n, bool)
    if n <= 256:  # all pairs: cheaper than building a tree for one frame's localizations
        d2 = ((xy_px[:, None, :] - xy_px[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d2, np.inf)
        return d2.min(1) > isolation_px**2
    keep = np.ones(n, bool)
    keep[cKDTree(xy_px).query_pairs(isolation_px, output_type="ndarray").ravel()] = False
    return keep


@dataclass(frozen=True)
class Patches:
    """Patches around isolated localizations, cut from every plane of one or more sets.

    Attributes:
        pixels: ``(M, P, S, S)`` float32, model units.
        gx, gy: ``(M, S)`` float64 pixel-centre x of the columns / y of the rows, pixels,
            relative to each localization.
        frac: ``(M, P, 2)`` float64 bilinear resampling fractions (x, y) each plane's
            registration used around the patch (0: not resampled).
    """

    pixels: np.ndarray
    gx: np.ndarray
    gy: np.ndarray
    frac: np.ndarray

    def __len__(self) -> int:
        return len(self.pixels)

    @staticmethod
    def concat(parts: list[Patches]) -> Patches:
        return Patches(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("pixels", "gx", "gy", "frac")
            )
        )


def bilinear_fractions(affines: np.ndarray | None, col: np.ndarray, row: np.ndarray) -> np.ndarray:
    """``(M, P, 2)`` sub-pixel fractions at which the registration (service/aligner.py:
    camera sampled bilinearly at ``A^-1`` of each reference pixel centre) resampled
    reference pixels ``(row, col)`` of each plane; ``affines`` ``(P, 2, 3)``, None or an
    identity: not resampled (0). The fraction of the patch's centre pixel stands for the
    whole patch (rotations and scales of a registration are small)."""
    if affines is None:
        return np.zeros((len(col), 1, 2))
    a = np.asarray(affines, np.float64)
    rx = (col + 0.5)[:, None] - a[None, :, 0, 2]  # (M, P)
    ry = (row + 0.5)[:, None] - a[None, :, 1, 2]
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
    cam_x = (a[:, 1, 1] * rx - a[:, 0, 1] * ry) / det - 0.5  # camera pixel index
    cam_y = (a[:, 0, 0] * ry - a[:, 1, 0] * rx) / det - 0.5
    frac = np.stack([cam_x - np.floor(cam_x), cam_y - np.floor(cam_y)], -1)
    frac[:, np.all(a == np.eye(2, 3), axis=(1, 2))] = 0.0
    return frac


def cut_patches(
    frames: np.ndarray,
    xy_nm: np.ndarray,
    *,
    px_nm: float,
    patch_px: int = 9,
    isolation_px: float = 4.0,
    max_locs: int | None = None,
    affines: np.ndarray | None = None,
) -> Patches:
    """Patches of every plane around the isolated localizations ``xy_nm`` ``(N, 2)``.

    ``frames`` ``(P, H, W)`` are registered frames; pixel ``(i, j)`` has its centre at
    ``((j + 0.5) px_nm, (i + 0.5) px_nm)``; ``affines`` ``(P, 2, 3)`` the registration
    they went through (None: none). Localizations with a neighbour closer than
    ``isolation_px`` or whose patch leaves the frame are skipped; at most ``max_locs``.
    """
    _, h, w = frames.shape
    half = patch_px // 2
    xy_px = np.asarray(xy_nm, np.float64).reshape(-1, 2) / px_nm
    xy_px = xy_px[isolated(xy_px, isolation_px)]
    col = np.floor(xy_px[:, 0]).astype(np.int64)
    row = np.floor(xy_px[:, 1]).astype(np.int64)
    inside = (col >= half) & (col < w - half) & (row >= half) & (row < h - half)
    if max_locs is not None:
        inside &= np.cumsum(inside) <= max_locs
    off = np.arange(-half, half + 1)
    cols = col[inside, None] + off
    rows = row[inside, None] + off
    pixels = frames[:, rows[:, :, None], cols[:, None, :]]  # (P, M, S, S)
    frac = bilinear_fractions(affines, col[inside], row[inside])
    return Patches(
        np.ascontiguousarray(np.moveaxis(pixels, 0, 1), dtype=np.float32),
        cols + 0.5 - xy_px[inside, :1],
        rows + 0.5 - xy_px[inside, 1:],
        np.broadcast_to(frac, (len(cols), frames.shape[0], 2)).copy(),
    )


def _profile(d: np.ndarray, inv: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """1D profile of the fitted spot along one axis and its derivatives' building blocks:
    ``(M, 3, S)`` = ``sum_c w_c e(u_c) u_c^k`` for k = 0, 1, 2 with ``e(u) =
    exp(-u^2 inv / 2)``, over the two taps of a bilinear resampling at fraction ``frac``
    (``u = d - frac`` with weight ``1 - frac``, ``u = d - frac + 1`` with weight
    ``frac``; ``frac = 0`` is a plain Gaussian). Products, not ``**``: numpy's float power
    is slow."""
    out = np.zeros((d.shape[0], 3, d.shape[1]))
    for w, shift in ((1.0 - frac, frac), (frac, frac - 1.0)):
        u = d - shift[:, None]
        e = w[:, None] * np.exp(-0.5 * u * u * inv[:, None])
        out[:, 0] += e
        out[:, 1] += e * u
        out[:, 2] += e * u * u
    return out


class _Separable:
    """A symmetric Gaussian ``a exp(-r^2 / 2 s^2) + b`` as the service's registration shows
    it: resampled bilinearly at a sub-pixel fraction ``(fx, fy)`` per patch, which skews
    the spot (its mean stays put, its peak moves by up to ~5 nm for in-focus spots). Both
    are separable, so the normal matrix and gradient of the least-squares fit come from 1D
    Gram matrices and one iteration costs a few passes over the pixels."""

    def __init__(self, theta: np.ndarray, gx: np.ndarray, gy: np.ndarray, frac: np.ndarray) -> None:
        x, y, log_s, a, _ = theta.T
        inv = np.exp(-2.0 * log_s)  # 1 / s^2
        self.amp = a * inv
        self.ex = _profile(gx - x[:, None], inv, frac[:, 0])  # (M, 3, S)
        self.ey = _profile(gy - y[:, None], inv, frac[:, 1])
        self.image = (
            a[:, None, None] * self.ey[:, 0, :, None] * self.ex[:, 0, None, :]
            + theta[:, 4, None, None]
        )  # (M, S, S)

    def normal_matrix(self) -> np.ndarray:
        """``J^T J`` ``(M, 5, 5)``, parameters (x, y, log s, a, b)."""
        gx = self.ex @ self.ex.transpose(0, 2, 1)  # (M, 3, 3)
        gy = self.ey @ self.ey.transpose(0, 2, 1)
        nx, ny = self.ex.sum(2), self.ey.sum(2)  # (M, 3)
        a = self.amp

        def g(p: int, q: int, r: int, t: int) -> np.ndarray:  # <F_p E_q, F_r E_t>
            return gy[:, p, r] * gx[:, q, t]

        xx, yy, xy = a * a * g(0, 1, 0, 1), a * a * g(1, 0, 1, 0), a * a * g(0, 1, 1, 0)
        xs = a * a * (g(0, 1, 0, 2) + g(0, 1, 2, 0))
        ys = a * a * (g(1, 0, 0, 2) + g(1, 0, 2, 0))
        ss = a * a * (g(0, 2, 0, 2) + 2 * g(0, 2, 2, 0) + g(2, 0, 2, 0))
        xa, ya = a * g(0, 1, 0, 0), a * g(1, 0, 0, 0)
        sa = a * (g(0, 2, 0, 0) + g(2, 0, 0, 0))
        xb, yb = a * ny[:, 0] * nx[:, 1], a * ny[:, 1] * nx[:, 0]
        sb = a * (ny[:, 0] * nx[:, 2] + ny[:, 2] * nx[:, 0])
        aa, ab = g(0, 0, 0, 0), ny[:, 0] * nx[:, 0]
        bb = np.full_like(a, float(self.ex.shape[2] * self.ey.shape[2]))
        rows = [
            [xx, xy, xs, xa, xb],
            [xy, yy, ys, ya, yb],
            [xs, ys, ss, sa, sb],
            [xa, ya, sa, aa, ab],
            [xb, yb, sb, ab, bb],
        ]
        return np.stack([np.stack(r, -1) for r in rows], -2)

    def gradient(self, resid: np.ndarray) -> np.ndarray:
        """``J^T r`` ``(M, 5)`` for residual images ``(M, S, S)``."""
        t = self.ey @ (resid @ self.ex.transpose(0, 2, 1))  # (M, 3, 3): F_q r E_p
        a = self.amp
        return np.stack(
            [
                a * t[:, 0, 1],
                a * t[:, 1, 0],
                a * (t[:, 0, 2] + t[:, 2, 0]),
                t[:, 0, 0],
                resid.sum((1, 2)),
            ],
            1,
        )


def fit_gaussians(
    patches: np.ndarray,
    gx: np.ndarray,
    gy: np.ndarray,
    frac: np.ndarray | None = None,
    *,
    sigma0_px: float = 1.0,
    iterations: int = 12,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares symmetric Gaussian fits of ``(M, S, S)`` patches (vectorised LM).

    ``gx``/``gy`` ``(M, S)`` are the pixel-centre coordinates of each patch's columns and
    rows, pixels; ``frac`` ``(M, 2)`` the bilinear resampling fractions the patches went
    through (:func:`bilinear_fractions`; None: not resampled). Returns the centres
    ``(M, 2)`` px (same coordinates), their variances ``(M, 2)`` px^2 (fit covariance
    scaled by the residual variance), and the ``(M, 5)`` parameters (x, y, log sigma,
    amplitude, background)."""
    m, s, _ = patches.shape
    border = np.concatenate(
        [patches[:, 0], patches[:, -1], patches[:, 1:-1, 0], patches[:, 1:-1, -1]], axis=1
    )
    b0 = np.median(border, axis=1)
    c = s // 2
    a0 = np.maximum(patches[:, c - 1 : c + 2, c - 1 : c + 2].mean(axis=(1, 2)) - b0, 1e-3)
    theta = np.stack([np.zeros(m), np.zeros(m), np.full(m, np.log(sigma0_px)), a0, b0], 1)
    lam = np.full(m, 1e-2)
    frac = np.zeros((m, 2)) if frac is None else frac
    model = _Separable(theta, gx, gy, frac)
    cost = ((patches - model.image) ** 2).sum((1, 2))
    eye = np.eye(_PARAMS)
    for _ in range(iterations):
        jtj = model.normal_matrix()
        grad = model.gradient(patches - model.image)
        damp = jtj + lam[:, None, None] * jtj * eye + 1e-12 * eye
        trial = theta + np.linalg.solve(damp, grad[..., None])[..., 0]
        trial[:, 2] = np.clip(trial[:, 2], np.log(0.3), np.log(6.0))
        new = _Separable(trial, gx, gy, frac)
        cost_new = ((patches - new.image) ** 2).sum((1, 2))
        better = np.isfinite(cost_new) & (cost_new < cost)
        theta[better], cost[better] = trial[better], cost_new[better]
        model = _Separable(theta, gx, gy, frac) if not better.all() else new
        lam = np.where(better, lam / 3.0, np.minimum(lam * 4.0, 1e6))
    jtj = model.normal_matrix()
    ok = np.linalg.cond(jtj) < 1e12
    cov = np.full((m, _PARAMS, _PARAMS), np.inf)
    cov[ok] = np.linalg.inv(jtj[ok])
    resid_var = cost / max(s * s - _PARAMS, 1)
    var = np.stack([cov[:, 0, 0], cov[:, 1, 1]], 1) * resid_var[:, None]
    return theta[:, :2].copy(), var, theta


@dataclass(frozen=True)
class PlaneMeasurements:
    """Per-plane fitted centres of isolated localizations of one or more frame sets.

    Attributes:
        rel_nm: ``(N, P, 2)`` float64 fitted centre minus the localization, nm
            (NaN where the fit was rejected).
        var_nm2: ``(N, P)`` float64 variance of each centre (mean of x and y), nm^2;
            ``inf`` where rejected.
    """

    rel_nm: np.ndarray
    var_nm2: np.ndarray

    def __len__(self) -> int:
        return len(self.rel_nm)

    @staticmethod
    def concat(parts: list[PlaneMeasurements], planes: int) -> PlaneMeasurements:
        if not parts:
            return PlaneMeasurements(np.zeros((0, planes, 2)), np.zeros((0, planes)))
        return PlaneMeasurements(
            np.concatenate([p.rel_nm for p in parts]), np.concatenate([p.var_nm2 for p in parts])
        )


def fit_planes(patches: Patches, *, px_nm: float, max_shift_px: float = 2.0) -> PlaneMeasurements:
    """Fit every plane of every patch; reject fits that failed, wandered off or are vague."""
    n, planes, s, _ = patches.pixels.shape
    if n == 0:
        return PlaneMeasurements(np.zeros((0, planes, 2)), np.zeros((0, planes)))
    gx = np.repeat(patches.gx, planes, axis=0)
    gy = np.repeat(patches.gy, planes, axis=0)
    centre, var, theta = fit_gaussians(
        patches.pixels.reshape(n * planes, s, s).astype(np.float64),
        gx,
        gy,
        patches.frac.reshape(n * planes, 2),
    )
    sigma = np.exp(theta[:, 2])
    ok = (
        np.isfinite(var).all(1)
        & (theta[:, 3] > 0)
        & (sigma > 0.35)
        & (sigma < 5.5)
        & (np.abs(centre) < max_shift_px).all(1)
        & (var.max(1) < max_shift_px**2)
    )
    rel = np.where(ok[:, None], centre * px_nm, np.nan).reshape(n, planes, 2)
    var_nm2 = np.where(ok, var.mean(1) * px_nm**2, np.inf).reshape(n, planes)
    return PlaneMeasurements(rel, var_nm2)


def measure_planes(
    frames: np.ndarray,
    xy_nm: np.ndarray,
    *,
    px_nm: float,
    patch_px: int = 9,
    isolation_px: float = 4.0,
    max_shift_px: float = 2.0,
    affines: np.ndarray | None = None,
) -> PlaneMeasurements:
    """:func:`cut_patches` then :func:`fit_planes` for one ``(P, H, W)`` frame set."""
    patches = cut_patches(
        np.asarray(frames),
        xy_nm,
        px_nm=px_nm,
        patch_px=patch_px,
        isolation_px=isolation_px,
        affines=affines,
    )
    return fit_planes(patches, px_nm=px_nm, max_shift_px=max_shift_px)


@dataclass(frozen=True)
class OffsetEstimate:
    """Attributes:
    offsets_nm: ``(P, 2)`` (x, y) offset of each plane to plane 0, nm (row 0 is 0).
    se_nm: ``(P, 2)`` standard errors, nm.
    locs: ``(P,)`` localizations whose fit in that plane entered the estimate.
    molecules: localizations in the window.
    """

    offsets_nm: np.ndarray
    se_nm: np.ndarray
    locs: np.ndarray
    molecules: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "planes": [
                {
                    "plane": k,
                    "x_nm": _num(self.offsets_nm[k, 0]),
                    "y_nm": _num(self.offsets_nm[k, 1]),
                    "se_x_nm": _num(self.se_nm[k, 0]),
                    "se_y_nm": _num(self.se_nm[k, 1]),
                    "locs": int(self.locs[k]),
                }
                for k in range(len(self.offsets_nm))
            ]
        }


def _num(v: float) -> float | None:
    return round(float(v), 2) if np.isfinite(v) else None


def _weighted_solve(c: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``d`` ``(P, 2)`` minimising ``sum w_ik |c_ik - m_i - d_k|^2`` with ``d_0 = 0``."""
    planes = w.shape[1]
    s = w.sum(1)
    a = np.diag(w.sum(0)) - (w / s[:, None]).T @ w
    wc = w[..., None] * c
    rhs = wc.sum(0) - (w / s[:, None]).T @ wc.sum(1)
    d = np.zeros((planes, 2))
    d[1:] = np.linalg.lstsq(a[1:, 1:], rhs[1:], rcond=None)[0]
    return d


def solve_offsets(
    meas: PlaneMeasurements, *, huber: float = 2.5, iterations: int = 4
) -> OffsetEstimate:
    """Plane offsets from the measurements of many localizations (robust weighted LS)."""
    n, planes = meas.var_nm2.shape
    valid = np.isfinite(meas.var_nm2) & (meas.var_nm2 > 0)
    use = valid.sum(1) >= 2  # a molecule ties planes only if seen twice
    c = np.where(valid[use, :, None], meas.rel_nm[use], 0.0)
    w0 = np.where(valid[use], 1.0 / np.where(valid[use], meas.var_nm2[use], 1.0), 0.0)
    nan = np.full((planes, 2), np.nan)
    if use.sum() < 3 or not (w0 > 0).any(0).all():
        return OffsetEstimate(nan, nan, (w0 > 0).sum(0), int(n))
    w = w0
    for _ in range(iterations):
        d = _weighted_solve(c, w)
        m = ((w[..., None] * (c - d)).sum(1)) / w.sum(1)[:, None]
        z = np.sqrt(w0 * ((c - m[:, None] - d) ** 2).sum(-1) / 2.0)  # per measurement
        scale = 1.4826 * np.median(z[w0 > 0])
        h = np.minimum(1.0, huber * scale / np.maximum(z, 1e-12))
        w = w0 * h
    d = _weighted_solve(c, w)
    m = ((w[..., None] * (c - d)).sum(1)) / w.sum(1)[:, None]
    se = _standard_errors(c - m[:, None] - d, w)
    return OffsetEstimate(d, se, (w0 > 0).sum(0), int(n))


def _standard_errors(resid: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Standard errors of ``d`` from the normal matrix scaled by the residual variance."""
    planes = w.shape[1]
    s = w.sum(1)
    a = np.diag(w.sum(0)) - (w / s[:, None]).T @ w
    dof = max(int((w > 0).sum()) - len(w) - (planes - 1), 1)
    chi2 = (w[..., None] * resid**2).sum((0, 1)) / dof  # (2,) per axis
    se = np.zeros((planes, 2))
    cov = np.linalg.pinv(a[1:, 1:])
    se[1:] = np.sqrt(np.outer(np.diag(cov), chi2))
    return se
