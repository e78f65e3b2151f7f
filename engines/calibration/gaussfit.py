"""One batched Levenberg-Marquardt fit of a symmetric 2D Gaussian on a flat background.

``a exp(-r^2 / 2 s^2) + b`` fitted to many small windows at once, each with its own
damping. Parameters, in this order (the columns of ``theta``): ``x``, ``y`` (centre, in
the coordinates of the window's pixel centres ``gx``/``gy``, pixels), ``log s`` (width),
``a`` (peak above the background) and ``b`` (background), image units. Bead detection
(:mod:`engines.calibration.spots`) and the plane-offset measurement
(:mod:`engines.calibration.plane_offsets`) both fit with it.

A window may have been resampled bilinearly at a sub-pixel fraction ``(fx, fy)`` (the
service's registration does that): the model then is the Gaussian resampled the same way,
which skews the spot (its mean stays put, its peak moves by up to ~5 nm for in-focus
spots); ``frac = 0`` is a plain Gaussian.
"""

from __future__ import annotations

import numpy as np

X, Y, LOG_SIGMA, AMP, BG = range(5)
PARAMS = 5


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


class SeparableGaussian:
    """The model of ``theta`` ``(M, 5)`` on windows with pixel centres ``gx``, ``gy``
    ``(M, S)`` resampled at ``frac`` ``(M, 2)``. Gaussian and resampling are separable, so
    the normal matrix and gradient of the least-squares fit come from 1D Gram matrices and
    one iteration costs a few passes over the pixels."""

    def __init__(self, theta: np.ndarray, gx: np.ndarray, gy: np.ndarray, frac: np.ndarray) -> None:
        x, y, log_s, a, _ = theta.T
        inv = np.exp(-2.0 * log_s)  # 1 / s^2
        self.amp = a * inv
        self.ex = _profile(gx - x[:, None], inv, frac[:, 0])  # (M, 3, S)
        self.ey = _profile(gy - y[:, None], inv, frac[:, 1])
        self.image = (
            a[:, None, None] * self.ey[:, 0, :, None] * self.ex[:, 0, None, :]
            + theta[:, BG, None, None]
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


def initial_theta(patches: np.ndarray, sigma0_px: float = 1.0) -> np.ndarray:
    """``(M, 5)`` start: centre at coordinate 0, width ``sigma0_px``, background the
    median of the window's border, peak the centre 3x3 mean above it."""
    m, s, _ = patches.shape
    border = np.concatenate(
        [patches[:, 0], patches[:, -1], patches[:, 1:-1, 0], patches[:, 1:-1, -1]], axis=1
    )
    b0 = np.median(border, axis=1)
    c = s // 2
    a0 = np.maximum(patches[:, c - 1 : c + 2, c - 1 : c + 2].mean(axis=(1, 2)) - b0, 1e-3)
    return np.stack([np.zeros(m), np.zeros(m), np.full(m, np.log(sigma0_px)), a0, b0], 1)


def fit_gaussians(
    patches: np.ndarray,
    gx: np.ndarray,
    gy: np.ndarray,
    frac: np.ndarray | None = None,
    *,
    init: np.ndarray | None = None,
    sigma0_px: float = 1.0,
    sigma_range_px: tuple[float, float] = (0.3, 6.0),
    iterations: int = 12,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares symmetric Gaussian fits of ``(M, S, S)`` patches (vectorised LM).

    ``gx``/``gy`` ``(M, S)`` are the pixel-centre coordinates of each patch's columns and
    rows, pixels; ``frac`` ``(M, 2)`` the bilinear resampling fractions the patches went
    through (None: not resampled); ``init`` ``(M, 5)`` the start (None:
    :func:`initial_theta`); the width stays within ``sigma_range_px``. Returns the
    centres ``(M, 2)`` px (same coordinates), their variances ``(M, 2)`` px^2 (fit
    covariance scaled by the residual variance), and the ``(M, 5)`` parameters ``theta``."""
    m, s, _ = patches.shape
    theta = initial_theta(patches, sigma0_px) if init is None else init.astype(np.float64)
    theta = theta.copy()
    log_lo, log_hi = np.log(sigma_range_px[0]), np.log(sigma_range_px[1])
    lam = np.full(m, 1e-2)
    frac = np.zeros((m, 2)) if frac is None else frac
    model = SeparableGaussian(theta, gx, gy, frac)
    cost = ((patches - model.image) ** 2).sum((1, 2))
    eye = np.eye(PARAMS)
    for _ in range(iterations):
        jtj = model.normal_matrix()
        grad = model.gradient(patches - model.image)
        damp = jtj + lam[:, None, None] * jtj * eye + 1e-12 * eye
        trial = theta + np.linalg.solve(damp, grad[..., None])[..., 0]
        trial[:, LOG_SIGMA] = np.clip(trial[:, LOG_SIGMA], log_lo, log_hi)
        new = SeparableGaussian(trial, gx, gy, frac)
        cost_new = ((patches - new.image) ** 2).sum((1, 2))
        better = np.isfinite(cost_new) & (cost_new < cost)
        theta[better], cost[better] = trial[better], cost_new[better]
        model = SeparableGaussian(theta, gx, gy, frac) if not better.all() else new
        lam = np.where(better, lam / 3.0, np.minimum(lam * 4.0, 1e6))
    jtj = model.normal_matrix()
    ok = np.linalg.cond(jtj) < 1e12
    cov = np.full((m, PARAMS, PARAMS), np.inf)
    cov[ok] = np.linalg.inv(jtj[ok])
    resid_var = cost / max(s * s - PARAMS, 1)
    var = np.stack([cov[:, X, X], cov[:, Y, Y]], 1) * resid_var[:, None]
    return theta[:, :2].copy(), var, theta
