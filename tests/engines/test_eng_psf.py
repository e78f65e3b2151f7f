"""PSF of paper Eqs. 4-6 against values computed by hand from Table 2.

r(x) = r0 sqrt(1 + u^2 + A u^3 + B u^4), u = x / D, with r0 = 133, D = 302,
A = 7.37e-4, B = 6.27e-3; a(x) = a' / (2 pi r^2), a' = 5.00e7.
"""

from __future__ import annotations

import math

import pytest
import torch

from engines.config import PSFParams
from engines.psf import peak, render_planes, width_nm

PSF = PSFParams()

# (defocus x nm, r(x) nm, a(x)) worked out by hand:
#   x = 0:    u = 0,   1                                  -> r = 133
#             a = 5e7 / (2 pi 133^2) = 5e7 / 111142.2     -> 449.870
#   x = 302:  u = 1,   1 + 1 + 7.37e-4 + 6.27e-3 = 2.007007      -> r = 133 * 1.416689 = 188.420
#   x = -302: u = -1,  1 + 1 - 7.37e-4 + 6.27e-3 = 2.005533      -> r = 133 * 1.416168 = 188.350
#   x = 604:  u = 2,   1 + 4 + 8 * 7.37e-4 + 16 * 6.27e-3 = 5.106216 -> r = 133 * 2.259694 = 300.539
#   x = 400:  u = 1.324503, 1 + 1.754309 + 7.37e-4 * 2.323589 + 6.27e-3 * 3.077601
#             = 2.775318 -> r = 133 * 1.665928 = 221.568
HAND = [
    (0.0, 133.0, 449.870),
    (302.0, 188.420, 224.150),
    (-302.0, 188.350, 224.314),
    (604.0, 300.539, 88.102),
    (400.0, 221.568, 162.097),
]


@pytest.mark.parametrize(("x_nm", "r_nm", "a"), HAND)
def test_defocus_curve_and_peak_match_hand_values(x_nm, r_nm, a):
    x = torch.tensor(x_nm, dtype=torch.float64)
    assert float(width_nm(x, PSF)) == pytest.approx(r_nm, abs=2e-3)
    assert float(peak(x, PSF)) == pytest.approx(a, abs=2e-3)


def test_defocus_curve_is_asymmetric_through_the_cubic_term():
    x = torch.tensor([302.0, -302.0], dtype=torch.float64)
    r = width_nm(x, PSF)
    # only A u^3 differs: r(+D)^2 - r(-D)^2 = r0^2 * 2A
    assert float(r[0] ** 2 - r[1] ** 2) == pytest.approx(133.0**2 * 2 * 7.37e-4, rel=1e-6)


def _one_molecule(x_nm, y_nm, z_nm, *, weight=1.0, drift=((0.0, 0.0),) * 4, size=9):
    focal = torch.tensor([200.0, 600.0, 1000.0, 1400.0], dtype=torch.float64)
    return render_planes(
        torch.tensor([[[x_nm, y_nm, z_nm]]], dtype=torch.float64),
        torch.tensor([[weight]], dtype=torch.float64),
        torch.tensor([drift], dtype=torch.float64),
        focal,
        px_nm=192.0,
        height=size,
        width=size,
        psf=PSF,
    )[0]


def test_render_in_focus_peak_and_neighbour():
    # molecule at the centre of pixel (4, 4) of the plane focused at z = 200 nm
    img = _one_molecule(4.5 * 192, 4.5 * 192, 200.0, weight=0.5)
    assert float(img[0, 4, 4]) == pytest.approx(0.5 * 449.870, abs=1e-2)
    # one pixel away: exp(-192^2 / (2 * 133^2)) = exp(-1.042004) = 0.352747
    assert float(img[0, 4, 5]) == pytest.approx(0.5 * 449.870 * 0.352747, abs=1e-2)
    assert float(img[0, 5, 4]) == pytest.approx(float(img[0, 4, 5]), rel=1e-12)
    # the plane focused 400 nm higher sees defocus x = 600 - 200 = +400 -> a = 162.097
    assert float(img[1, 4, 4]) == pytest.approx(0.5 * 162.097, abs=1e-2)
    assert int(torch.argmax(img[0]).item()) == 4 * 9 + 4


def test_render_total_intensity_is_a_prime_per_px_area():
    # a Gaussian sampled on a fine enough grid sums to a' w / px^2 (Eq. 6 normalisation)
    img = _one_molecule(15.5 * 192, 15.5 * 192, 1000.0, size=31)
    assert float(img[2].sum()) == pytest.approx(5.0e7 / 192.0**2, rel=1e-3)


def test_drift_shifts_the_molecule_in_its_plane_only():
    # Eq. 7: in plane k the molecule appears at xy + drift_k (drift of plane 0 is 0)
    drift = ((0.0, 0.0), (192.0, 0.0), (0.0, -192.0), (0.0, 0.0))
    img = _one_molecule(4.5 * 192, 4.5 * 192, 800.0, drift=drift)
    peaks = [divmod(int(torch.argmax(img[k]).item()), 9) for k in range(4)]
    assert peaks == [(4, 4), (4, 5), (3, 4), (4, 4)]
    assert math.isclose(float(img[1, 4, 5]), float(img[1].max()))
