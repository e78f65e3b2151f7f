"""Each frame's lateral shift of every plane against plane 0, fitted from its molecules.

The network is trained to tolerate a residual per-plane lateral drift (the settings'
``drift_max_nm``, Eq. 7): the cameras' registration is never exact. The photometry's
window model (:class:`engines.photometry.PhotometryFit`) has to know that shift to refine
positions: without it, the fit puts a molecule at the planes' mean position, where
plane 0's is the convention, and the lateral error grows (docs/photometry.md). Every
molecule of a frame sees the same shifts, so they are fitted jointly over the frame: a
Gauss-Newton step of the shifts ``s_k`` (k = 1 .. P-1, x and y) with each molecule's own
parameters (x, y, z, A, b) eliminated by the Schur complement,

    (prior + sum_n [D_n - C_n^T H_n^-1 C_n]) ds = sum_n [K_n^T W r_n - C_n^T H_n^-1 J_n^T W r_n]

with, per molecule n, ``J_n`` its own parameters' derivatives, ``K_n`` the shifts' (in
plane k the molecule's x and y derivatives, restricted to that plane), ``H_n = J^T W J``,
``C_n = J^T W K``, ``D_n = K^T W K`` and ``r_n`` the window residual. ``prior`` is
``1 / drift_max_nm^2`` per shift, so a frame with few molecules keeps its shifts near 0.

A frame's step is taken only where it explains the frame's pixels significantly better:
the drop of chi^2 it predicts, ``rhs . ds``, is chi-square with Q degrees of freedom
(Q = 2 (P - 1)) where the planes do not move, and the step must beat its mean by
:data:`SHIFT_SIGNIFICANCE` standard deviations. Fitting the noise of registered frames
would otherwise cost them accuracy (docs/photometry.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # engines.photometry imports this module
    from engines.config import SimSettings
    from engines.photometry import Photometry

# molecules whose window fits worse than this many times the set's median chi^2 (blends,
# light from beyond the frame) are left out of the shifts' equations
SHIFT_CHI2_FACTOR = 2.0
# standard deviations of the chi-square(Q) a step's predicted chi^2 drop must beat
SHIFT_SIGNIFICANCE = 4.0


def shift_limits(settings: SimSettings) -> tuple[float, float] | None:
    """The prior width and the bound of every shift, nm, for ``settings`` (their
    ``drift_max_nm`` and twice it), or None where they have no per-plane drift."""
    drift = settings.drift_max_nm
    if drift <= 0 or settings.geometry.planes < 2:
        return None
    return drift, 2 * drift


def schur_terms(
    amp: torch.Tensor,
    du: torch.Tensor,
    wd: torch.Tensor,
    cov: torch.Tensor,
    grad: torch.Tensor,
    wr: torch.Tensor,
    w: torch.Tensor,
    scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each localization's share of the shifts' normal equations, ``(N, Q, Q)`` and
    ``(N, Q)`` float64, Q = 2 (P - 1), and ``(N, 3, Q)`` float64 how its x, y, z move
    with the shifts (nm per nm: ``-H^-1 C``, the fit's response to a shift held wrong).

    Args:
        amp: ``(N,)`` amplitudes (0 where the fit found no molecule: no share).
        du: ``(3, N, P, S, S)`` derivatives of the unit windows by x, y, z, per nm.
        wd: ``(N, 5, pixels)`` float64 own-parameter derivatives (columns scaled to unit
            information) times the pixel weights.
        cov: ``(N, 5, 5)`` float64 inverse information in the same scaled columns.
        grad: ``(N, 5)`` float64 ``J^T W r`` in the same scaled columns.
        wr: ``(N, 1, pixels)`` float64 weighted residual; ``w`` ``(N, 1, pixels)`` weights.
        scale: ``(N, 5)`` the columns' scale (their information's square root).
    """
    n, planes = du.shape[1], du.shape[2]
    q = 2 * (planes - 1)
    k_mat = torch.zeros(n, q, *du.shape[2:], dtype=torch.float64, device=du.device)
    scaled = amp.double()[None, :, None, None, None] * du[:2].double()  # (2, N, P, S, S)
    for k in range(1, planes):
        k_mat[:, 2 * (k - 1), k] = scaled[0, :, k]
        k_mat[:, 2 * (k - 1) + 1, k] = scaled[1, :, k]
    k_mat = k_mat.reshape(n, q, -1)
    c = torch.bmm(wd, k_mat.transpose(1, 2))  # (N, 5, Q)
    d = torch.bmm(k_mat * w.double(), k_mat.transpose(1, 2))  # (N, Q, Q)
    ct_cov = c.transpose(1, 2) @ cov  # (N, Q, 5)
    info = d - ct_cov @ c
    rhs = (k_mat * wr).sum(dim=2) - (ct_cov @ grad[:, :, None])[:, :, 0]
    sens = -ct_cov.transpose(1, 2)[:, :3] / scale[:, :3, None].double()
    return info, rhs, sens


def normal_equations(
    ph: Photometry, frame_idx: torch.Tensor, frames: int, *, prior_nm: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each frame's shift information ``(frames, Q, Q)`` (the prior's included) and
    right-hand side ``(frames, Q)``, float64, summed over the frame's localizations that
    fit well (:data:`SHIFT_CHI2_FACTOR`), from ``measure(..., system=True)`` photometry."""
    assert ph.shift_info is not None and ph.shift_grad is not None
    q = ph.shift_info.shape[-1]
    chi2 = ph.chi2.double()
    finite = torch.isfinite(chi2)
    limit = SHIFT_CHI2_FACTOR * chi2[finite].median() if bool(finite.any()) else 0.0
    use = finite & (chi2 <= limit)
    dev = ph.shift_info.device
    eye = torch.eye(q, dtype=torch.float64, device=dev)
    info = eye.expand(frames, q, q) / prior_nm**2
    info = info.index_add(0, frame_idx[use], ph.shift_info[use].nan_to_num(0.0))
    rhs = torch.zeros(frames, q, dtype=torch.float64, device=dev)
    rhs = rhs.index_add(0, frame_idx[use], ph.shift_grad[use].nan_to_num(0.0))
    return info, rhs


def shift_step(
    ph: Photometry,
    frame_idx: torch.Tensor,
    frames: int,
    *,
    prior_nm: float,
) -> torch.Tensor:
    """``(frames, P - 1, 2)`` Gauss-Newton step of each frame's plane shifts, nm, from
    :meth:`engines.photometry.PhotometryFit.measure` ``(..., system=True)`` photometry
    of the frame's localizations (molecules that fit badly left out)."""
    info, rhs = normal_equations(ph, frame_idx, frames, prior_nm=prior_nm)
    q = info.shape[-1]
    step = torch.linalg.solve(info, rhs)
    drop = (rhs * step).sum(dim=1)  # the chi^2 the step removes (linearised)
    significant = drop > q + SHIFT_SIGNIFICANCE * (2 * q) ** 0.5
    step = torch.where(significant[:, None], step, torch.zeros_like(step))
    return step.reshape(frames, q // 2, 2).float()


def fit_shifts(
    measure: Callable[..., Photometry],
    xyz_nm: torch.Tensor,
    shift: torch.Tensor,
    frame_idx: torch.Tensor,
    *,
    prior_nm: float,
    limit_nm: float,
) -> torch.Tensor:
    """``shift`` ``(frames, P, 2)`` (plane 0's stays 0) moved by one step at the
    positions ``xyz_nm``, each shift kept within +-``limit_nm``; ``measure(positions,
    shift_nm=..., system=True)`` is the photometry of the frames."""
    ph = measure(xyz_nm, shift_nm=shift[frame_idx], system=True)
    step = shift_step(ph, frame_idx, shift.shape[0], prior_nm=prior_nm)
    out = shift.clone()
    out[:, 1:] = (shift[:, 1:] + step).clamp(-limit_nm, limit_nm)
    return out


def joint_bound(
    measure: Callable[..., Photometry],
    xyz_nm: torch.Tensor,
    shift: torch.Tensor,
    frame_idx: torch.Tensor,
    *,
    prior_nm: float,
) -> Photometry:
    """The photometry at ``xyz_nm`` with the frames' fitted ``shift`` ``(frames, P, 2)``,
    its bound that of the joint problem: the shifts are estimated from the same frame's
    molecules, so each position also carries their uncertainty,

        crlb^2 + diag(S_n cov_s S_n^T),   cov_s = (prior + sum_m info_m)^-1,

    ``S_n`` the position's response to the shifts (:func:`schur_terms`). This is the
    position's block of the inverse of the frame's whole information matrix (block
    inversion), so a frame with few molecules, whose shifts are poorly known, reports a
    larger bound. A frame whose shifts stayed 0 (no step passed the significance test:
    its pixels show no drift, as on registered cameras) keeps the plain bound: its
    positions are as good as with known shifts (docs/photometry.md)."""
    ph = measure(xyz_nm, shift_nm=shift[frame_idx], system=True)
    assert ph.shift_sens is not None
    info, _ = normal_equations(ph, frame_idx, shift.shape[0], prior_nm=prior_nm)
    cov_s = torch.linalg.inv(info)[frame_idx]  # (N, Q, Q)
    sens = ph.shift_sens.nan_to_num(0.0)
    fitted = (shift != 0).any(dim=2).any(dim=1)[frame_idx]
    extra = torch.einsum("naq,nqr,nar->na", sens, cov_s, sens).clamp_min(0.0)
    extra = torch.where(fitted[:, None], extra, torch.zeros_like(extra))
    crlb = torch.sqrt(ph.crlb_nm.double() ** 2 + extra).to(ph.crlb_nm.dtype)
    return replace(ph, crlb_nm=crlb, shift_info=None, shift_grad=None, shift_sens=None)
