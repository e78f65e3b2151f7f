"""Voxel confusion matrix, Jaccard, RMSE, bias and efficiency on hand-computed numbers."""

import json
import math

import numpy as np
import pytest
import torch

from engines.evaluate.matching import match_localizations
from engines.evaluate.metrics import MoleculeStats, VoxelConfusion, efficiency, voxel_confusion
from engines.evaluate.report import write_json


def test_efficiency_known_values():
    # JI 0.9, RMSE 30 nm lateral: 100 - sqrt(10^2 + 30^2) = 68.377
    assert efficiency(0.9, 30.0, 1.0) == pytest.approx(100 - math.sqrt(1000), abs=1e-9)
    # axial alpha 0.5: 100 - sqrt(10^2 + (0.5 * 40)^2) = 77.639
    assert efficiency(0.9, 40.0, 0.5) == pytest.approx(77.639320, abs=1e-6)
    assert efficiency(1.0, 0.0, 1.0) == 100.0


def test_molecule_stats_from_hand_built_errors():
    true = np.array([[1000.0, 1000, 400], [3000.0, 3000, 800], [6000.0, 6000, 1200]])
    pred = np.array(
        [
            [1003.0, 1004, 400],  # error (3, 4, 0)
            [2997.0, 2996, 810],  # error (-3, -4, 10)
            [9000.0, 9000, 800],  # false positive
        ]
    )
    s = MoleculeStats.from_matching(match_localizations(pred, true))
    assert (s.tp, s.fp, s.fn) == (2, 1, 1)
    assert s.jaccard == pytest.approx(0.5)
    assert s.rmse_lateral_nm == pytest.approx(5.0)  # sqrt(mean(3^2 + 4^2))
    assert s.rmse_axial_nm == pytest.approx(math.sqrt(50.0))
    assert (s.rmse_x_nm, s.rmse_y_nm) == pytest.approx((3.0, 4.0))
    assert (s.bias_x_nm, s.bias_y_nm, s.bias_z_nm) == pytest.approx((0.0, 0.0, 5.0))
    assert s.efficiency_lateral == pytest.approx(100 - math.sqrt(50**2 + 5**2))
    assert s.efficiency_axial == pytest.approx(100 - math.sqrt(50**2 + 0.25 * 50))


def test_molecule_stats_without_matches_are_nan_and_json_null(tmp_path):
    s = MoleculeStats.from_matching(match_localizations(np.zeros((0, 3)), [[1.0, 2, 3]]))
    assert s.jaccard == 0.0 and math.isnan(s.rmse_lateral_nm)
    path = write_json({"molecule": s.to_dict()}, tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["molecule"]["rmse_lateral_nm"] is None
    assert data["molecule"]["fn"] == 1


def test_voxel_confusion_hand_built():
    conf = torch.zeros(2, 4, 3, 3)  # (B, P, H, W)
    labels = torch.zeros_like(conf)
    labels[0, 1, 2, 2] = 1  # found with confidence 0.95
    conf[0, 1, 2, 2] = 0.95
    labels[0, 3, 0, 0] = 1  # found only at tau 0.5
    conf[0, 3, 0, 0] = 0.6
    labels[1, 0, 1, 1] = 1  # missed
    conf[1, 0, 1, 1] = 0.2
    conf[1, 2, 0, 1] = 0.7  # false positive at tau 0.5
    conf[1, 2, 2, 1] = 0.5  # exactly tau: not positive (strict >, as in decode)
    c = voxel_confusion(conf, labels, 0.5)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 1, 72 - 4)
    assert c.jaccard == pytest.approx(0.5)
    c9 = voxel_confusion(conf, labels, 0.9)
    assert (c9.tp, c9.fp, c9.fn, c9.tn) == (1, 0, 2, 69)
    total = VoxelConfusion()
    total.add(c)
    total.add(c9)
    assert total.total == 144 and total.to_dict()["tp"] == 3


def test_voxel_confusion_shape_mismatch_is_named():
    with pytest.raises(ValueError, match=r"confidence shape \(1, 4, 2, 2\)"):
        voxel_confusion(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 3), 0.5)
