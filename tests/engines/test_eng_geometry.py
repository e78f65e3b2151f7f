"""nm <-> voxel conversions (CONVENTIONS.md geometry) for every plane and the frame edges."""

from __future__ import annotations

import itertools

import pytest
import torch

from engines.config import Geometry, SimSettings
from engines.decode import decode
from engines.geometry import nm_to_voxel, voxel_to_nm
from engines.simulator import Simulator

EPS_NM = 1e-3


def _edge_points(geom: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Points at the lower edge, centre and just below the upper edge of every plane,
    combined with the first/last pixel's corners and centres; expected (k, i, j)."""
    px, dz = geom.px_nm, geom.dz_nm

    def edges(n: int) -> list[tuple[float, int]]:  # (coordinate nm, pixel index)
        return [
            (0.0, 0),
            (0.5 * px, 0),
            (px - EPS_NM, 0),
            (px, 1),
            ((n - 0.5) * px, n - 1),
            (n * px - EPS_NM, n - 1),
        ]

    lateral, rows = edges(geom.width), edges(geom.height)
    points, expect = [], []
    for k in range(geom.planes):
        for z in (k * dz, (k + 0.5) * dz, (k + 1) * dz - EPS_NM):
            for (x, j), (y, i) in itertools.product(lateral, rows):
                points.append((x, y, z))
                expect.append((k, i, j))
    return torch.tensor(points, dtype=torch.float64), torch.tensor(expect)


@pytest.mark.parametrize(
    "geom", [Geometry(), Geometry(planes=8, px_nm=100.0, dz_nm=250.0, height=40, width=56)]
)
def test_round_trip_every_plane_and_frame_edge(geom):
    xyz, expect = _edge_points(geom)
    idx, zeta = nm_to_voxel(xyz, geom)
    assert torch.equal(idx, expect)
    assert bool(((zeta >= 0) & (zeta < 1)).all())
    back = voxel_to_nm(idx, zeta, geom)
    assert torch.allclose(back, xyz, atol=1e-6, rtol=0)


def test_pixel_centres_and_plane_foci_are_half_voxels():
    geom = Geometry()
    # centre of pixel (row 3, col 7) in plane 2: x = 7.5 px, y = 3.5 px, z = 2.5 dz
    xyz = torch.tensor([[7.5 * 192.0, 3.5 * 192.0, 2.5 * 400.0]], dtype=torch.float64)
    idx, zeta = nm_to_voxel(xyz, geom)
    assert idx.tolist() == [[2, 3, 7]]
    assert zeta.tolist() == [[0.5, 0.5, 0.5]]


def test_simulator_targets_decode_back_to_the_molecules():
    # targets put each molecule in its voxel; decoding them as if they were the network's
    # output must give back the positions (float32 grid: within 0.05 nm)
    sim = Simulator(SimSettings(), seed=4)
    batch = sim.sample(3, 20, height=32, width=32)
    frame, xyz, conf = decode(batch.targets, 0.5, px_nm=192.0, dz_nm=400.0)
    for b in range(3):
        got = xyz[frame == b].double()
        want = batch.molecules(b).double()
        assert got.shape[0] <= want.shape[0]
        dist = torch.cdist(got, want).min(dim=1).values
        assert float(dist.max()) < 0.05
        # molecules sharing a voxel keep one (paper assumption): nearly all are there
        assert got.shape[0] >= want.shape[0] - 2
    assert bool((conf == 1.0).all())
