"""The PSF width a localization table reports (ThunderSTORM ``sigma1/2 [nm]``, Picasso
``sx``/``sy``): the model's PSF at the localization's z, not a fit to the data.

A multi-plane PSF has one width per plane; the table gets the **Gaussian-equivalent
width in the sharpest plane**: for each plane the image of a weight-1 molecule centred on
a pixel is rendered with the model's own PSF (:func:`engines.psf_model.psf_model_for`:
the paper's Gaussian or a measured spline), and its width is
``sigma = px * sqrt(sum / (2 pi peak))`` -- the standard deviation of the Gaussian with
the same total and peak (exactly the Gaussian's sigma for the Gaussian PSF, and defined
for any spline, whose second moments the finite ROI would bias). The smallest over the
planes is kept. The model has one width per plane, not per axis, so ``sigma1 = sigma2``.
The width is tabulated over the model's depth once (:meth:`PsfWidth.from_settings`) and
interpolated per localization.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engines.config import SimSettings

Z_STEP_NM = 10.0


@dataclass(frozen=True)
class PsfWidth:
    """Sharpest-plane Gaussian-equivalent PSF width (nm) tabulated against z (nm)."""

    z_nm: tuple[float, ...]
    sigma_nm: tuple[float, ...]

    def __call__(self, z_nm: np.ndarray) -> np.ndarray:
        """``(N,)`` float64 width, nm, at ``(N,)`` z, nm (the table's ends beyond it)."""
        return np.interp(np.asarray(z_nm, np.float64), self.z_nm, self.sigma_nm)

    def scaled(self, *, lateral: float, axial: float) -> PsfWidth:
        """The table for a sample whose pixel is ``lateral`` and plane spacing ``axial``
        times the model's (``voxloc localize --px-nm / --dz-nm``)."""
        z = tuple(z * axial for z in self.z_nm)
        return PsfWidth(z, tuple(s * lateral for s in self.sigma_nm))

    @classmethod
    def from_settings(cls, settings: SimSettings, *, step_nm: float = Z_STEP_NM) -> PsfWidth:
        import torch

        from engines.psf_model import psf_model_for

        g = settings.geometry
        model = psf_model_for(settings)
        side = model.window_px() | 1
        z = np.arange(0.0, g.depth_nm + step_nm / 2, step_nm)
        centre = (side // 2 + 0.5) * g.px_nm
        xyz = torch.tensor([[centre, centre, zi] for zi in z], dtype=torch.float32)[:, None]
        weights = torch.ones((len(z), 1))
        drift = torch.zeros((len(z), g.planes, 2))
        with torch.no_grad():
            img = model.render(xyz, weights, drift, height=side, width=side).double()
        total = img.sum(dim=(-2, -1))
        peak = img.amax(dim=(-2, -1)).clamp_min(1e-30)
        sigma = g.px_nm * torch.sqrt(total.clamp_min(0) / (2 * math.pi * peak))
        best = sigma.amin(dim=1).numpy()
        return cls(tuple(float(v) for v in z), tuple(float(v) for v in best))
