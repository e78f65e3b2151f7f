"""Camera registration from bead images (paper Sec. 4.1): one 2x3 affine per camera.

Each affine maps that camera's pixel coordinates to reference-plane (camera of plane 0)
pixel coordinates, ``[x_ref, y_ref] = A @ [x_cam, y_cam, 1]`` (docs/protocol.md Sec. 4),
with ``x`` along columns and the centre of pixel ``(i, j)`` at ``(j + 0.5, i + 0.5)``.

Beads are matched without knowing correspondences: a translation vote over all point
pairs gives a coarse offset, RANSAC over affine hypotheses drawn from candidate pairs near
that offset rejects missing and spurious beads, and least squares on the mutual nearest
neighbours refines the winner.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from engines.calibration.beads import apply_affine
from engines.calibration.spots import Spots, detect_spots
from engines.errors import FormatError

log = logging.getLogger(__name__)

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


@dataclass(frozen=True)
class MatchSettings:
    """How far cameras may be misaligned, and how strict matching is."""

    max_shift_px: float = 20.0
    max_rotation_deg: float = 3.0
    max_scale: float = 0.03
    inlier_px: float = 1.0
    min_matches: int = 6
    iterations: int = 3000
    seed: int = 0


@dataclass(frozen=True)
class CameraFit:
    """Registration of one camera and its quality (``rms_nm``: matched bead residuals)."""

    name: str
    plane: int
    affine: np.ndarray
    detected: int
    matched: int
    rms_nm: float
    max_nm: float

    def summary(self) -> str:
        lin = self.affine[:, :2]
        rot = np.degrees(np.arctan2(lin[1, 0], lin[0, 0]))
        sx, sy = np.linalg.norm(lin, axis=0)
        tx, ty = self.affine[:, 2]
        return (
            f"{self.name} (plane {self.plane}): {self.detected} beads, {self.matched} "
            f"matched, residual rms {self.rms_nm:.1f} nm (max {self.max_nm:.1f}); "
            f"rotation {rot:+.3f} deg, "
            f"scale {sx:.4f}/{sy:.4f}, shift ({tx:+.2f}, {ty:+.2f}) px"
        )


@dataclass(frozen=True)
class Registration:
    """Affines of every camera, in plane order; ``cameras[0]`` is the reference."""

    cameras: list[CameraFit]
    px_nm: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, *, gain_adu: float = 1.0, baseline_adu: float = 0.0) -> dict[str, Any]:
        """The body ``PUT /registration`` accepts (docs/protocol.md Sec. 5)."""
        return {
            "cameras": {
                c.name: {
                    "affine": [[float(v) for v in row] for row in c.affine],
                    "gain_adu": gain_adu,
                    "baseline_adu": baseline_adu,
                }
                for c in self.cameras
            }
        }

    def report(self) -> dict[str, Any]:
        return {
            "px_nm": self.px_nm,
            "cameras": {
                c.name: {
                    "plane": c.plane,
                    "detected": c.detected,
                    "matched": c.matched,
                    "rms_nm": c.rms_nm,
                    "max_nm": c.max_nm,
                }
                for c in self.cameras
            },
        }


def affines_from_json(data: dict[str, Any]) -> dict[str, np.ndarray]:
    """``{camera: (2, 3) affine}`` from a registration JSON (file or ``GET /registration``)."""
    cams = data.get("cameras") if isinstance(data, dict) else None
    if not isinstance(cams, dict) or not cams:
        raise FormatError(f"registration JSON: expected a non-empty 'cameras' object, got {cams!r}")
    out = {}
    for name, cam in cams.items():
        arr = np.asarray(cam.get("affine", IDENTITY), dtype=np.float64)
        if arr.shape != (2, 3):
            raise FormatError(
                f"registration JSON: camera {name!r} affine has shape {arr.shape}, expected 2x3"
            )
        out[name] = arr
    return out


def fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares ``(2, 3)`` affine with ``dst ~ A @ [src, 1]``."""
    design = np.concatenate([src, np.ones((len(src), 1))], axis=1)
    sol, *_ = np.linalg.lstsq(design, dst, rcond=None)
    return sol.T


def _coarse_shift(src: np.ndarray, dst: np.ndarray, radius: float) -> np.ndarray:
    """Most voted translation ``dst - src`` among all pairs within ``radius`` px."""
    diff = (dst[None, :, :] - src[:, None, :]).reshape(-1, 2)
    diff = diff[np.all(np.abs(diff) <= radius, axis=1)]
    n = int(np.ceil(radius)) * 2 + 1
    hist, edges, _ = np.histogram2d(diff[:, 0], diff[:, 1], bins=n, range=[[-radius, radius]] * 2)
    hist = ndimage.gaussian_filter(hist, 1.5)
    ix, iy = np.unravel_index(np.argmax(hist), hist.shape)
    centres = (edges[:-1] + edges[1:]) / 2
    return np.array([centres[ix], centres[iy]])


def _hypotheses(
    src: np.ndarray, dst: np.ndarray, cand: list[list[int]], ms: MatchSettings
) -> np.ndarray:
    """``(K, 2, 3)`` affines from random triples of candidate pairs."""
    rng = np.random.default_rng(ms.seed)
    usable = np.array([i for i, c in enumerate(cand) if c])
    if len(usable) < 3:
        return np.zeros((0, 2, 3))
    tri = np.stack([rng.choice(usable, 3, replace=False) for _ in range(ms.iterations)])
    partner = np.array([[cand[i][rng.integers(len(cand[i]))] for i in row] for row in tri])
    s, d = src[tri], dst[partner]  # (K, 3, 2)
    design = np.concatenate([s, np.ones((len(s), 3, 1))], axis=2)
    det = np.linalg.det(design)
    good = np.abs(det) > 4.0  # twice the triangle area, px^2: drop near-collinear triples
    aff = np.linalg.solve(design[good], d[good]).transpose(0, 2, 1)
    sv = np.linalg.svd(aff[:, :, :2], compute_uv=False)
    slack = 2 * ms.max_scale + 0.02
    plausible = (sv.min(axis=1) > 1 - slack) & (sv.max(axis=1) < 1 + slack)
    return aff[plausible]


def _mutual_pairs(mapped: np.ndarray, dst: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of mutual nearest neighbours closer than ``tol``."""
    d_fw, i_fw = cKDTree(dst).query(mapped, distance_upper_bound=tol)
    _, i_bw = cKDTree(mapped).query(dst)
    # (N, 2) queries give arrays; asarray because the stubs also allow a scalar result
    fw, bw = np.asarray(i_fw), np.asarray(i_bw)
    src_idx = np.flatnonzero(np.isfinite(d_fw))
    src_idx = src_idx[bw[fw[src_idx]] == src_idx]
    return src_idx, fw[src_idx]


def match_affine(
    src: np.ndarray, dst: np.ndarray, ms: MatchSettings, *, size_px: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust affine from unmatched point sets: ``(affine, src_idx, dst_idx)`` of the inliers."""
    smear = (np.radians(ms.max_rotation_deg) + ms.max_scale) * size_px * 0.75 + 2.0
    shift = _coarse_shift(src, dst, ms.max_shift_px + smear)
    tree = cKDTree(dst)
    cand = tree.query_ball_point(src + shift, r=smear)
    hyp = _hypotheses(src, dst, cand, ms)
    if len(hyp) == 0:
        return IDENTITY.copy(), np.zeros(0, int), np.zeros(0, int)
    mapped = np.einsum("kij,nj->kni", hyp[:, :, :2], src) + hyp[:, None, :, 2]
    dist, _ = tree.query(mapped.reshape(-1, 2), distance_upper_bound=ms.inlier_px)
    # MSAC: truncated squared distance ranks hypotheses by accuracy, not only by count
    loss = np.minimum(dist, ms.inlier_px).reshape(len(hyp), -1) ** 2
    affine = hyp[int(np.argmin(loss.sum(axis=1)))]
    tol = ms.inlier_px
    for _ in range(10):
        si, di = _mutual_pairs(apply_affine(affine, src), dst, tol)
        if len(si) < 3:
            break
        affine = fit_affine(src[si], dst[di])
        res = np.linalg.norm(apply_affine(affine, src[si]) - dst[di], axis=1)
        # 3x the median 2D residual is ~3.5 sigma per axis; merged bead pairs can shift a
        # centre by up to a pixel in one camera and must drop out
        tol = float(np.clip(3.0 * np.median(res), 0.1, ms.inlier_px))
    si, di = _mutual_pairs(apply_affine(affine, src), dst, tol)
    return affine, si, di


def mean_image(stack: np.ndarray, name: str) -> np.ndarray:
    """Average of a ``(frames, H, W)`` or ``(H, W)`` bead recording."""
    arr = np.asarray(stack, dtype=np.float64)
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3:
        return arr.mean(axis=0)
    raise FormatError(
        f"camera {name!r}: expected a (frames, H, W) or (H, W) bead image, got shape {arr.shape}"
    )


def fit_registration(
    images: list[np.ndarray],
    *,
    px_nm: float,
    planes: int,
    names: list[str] | None = None,
    match: MatchSettings | None = None,
    threshold_sigma: float = 8.0,
    roi_half_px: int = 5,
) -> Registration:
    """Affines mapping every camera into camera 0's pixels, from one bead recording each."""
    ms = match or MatchSettings()
    names = names or [f"cam{k}" for k in range(len(images))]
    if len(images) != planes:
        raise FormatError(
            f"expected {planes} bead images (one per camera/plane), got {len(images)}"
        )
    if len(names) != planes:
        raise FormatError(f"expected {planes} camera names, got {len(names)}: {names}")
    spots: list[Spots] = []
    for name, img in zip(names, images, strict=True):
        sp = detect_spots(
            mean_image(img, name), threshold_sigma=threshold_sigma, roi_half_px=roi_half_px
        )
        if len(sp) < ms.min_matches:
            raise FormatError(
                f"camera {name!r}: found {len(sp)} bead(s) above {threshold_sigma} "
                f"sigma, need at least {ms.min_matches} to fit an affine"
            )
        spots.append(sp)
    ref = spots[0].xy_px
    fits = [CameraFit(names[0], 0, IDENTITY.copy(), len(ref), len(ref), 0.0, 0.0)]
    for k in range(1, planes):
        size = float(max(np.ptp(spots[k].xy_px, axis=0).max(), 1.0))
        affine, si, di = match_affine(spots[k].xy_px, ref, ms, size_px=size)
        if len(si) < ms.min_matches:
            raise FormatError(
                f"camera {names[k]!r}: only {len(si)} of {len(spots[k])} beads match the "
                f"reference camera {names[0]!r}, need at least {ms.min_matches} (is the shift "
                f"larger than --max-shift-px {ms.max_shift_px}?)"
            )
        res_nm = np.linalg.norm(apply_affine(affine, spots[k].xy_px[si]) - ref[di], axis=1) * px_nm
        fit = CameraFit(
            names[k],
            k,
            affine,
            len(spots[k]),
            len(si),
            float(np.sqrt(np.mean(res_nm**2))),
            float(res_nm.max()),
        )
        log.info("%s", fit.summary())
        fits.append(fit)
    return Registration(fits, px_nm)
